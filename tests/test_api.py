import senet
from senet.analysis.optimize import optimize_for_inference


def test_the_public_api_is_the_package_top_level():
    assert set(senet.__all__) == {
        "SqueezeExcite",
        "create_model",
        "list_models",
        "model_info",
        "optimize_for_inference",
        "__version__",
    }
    assert senet.optimize_for_inference is optimize_for_inference  # as the README uses it
