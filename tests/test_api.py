import senet
from senet.deploy.optimize import optimize_for_inference
from senet.models import registry
from senet.weights.pretrained import create_model, load_pretrained


def test_the_public_api_is_the_package_top_level():
    assert set(senet.__all__) == {
        "SqueezeExcite",
        "add_se",
        "create_model",
        "list_models",
        "load_pretrained",
        "model_info",
        "optimize_for_inference",
        "__version__",
    }
    assert senet.optimize_for_inference is optimize_for_inference  # as the README uses it
    assert senet.load_pretrained is load_pretrained
    # create_model loads weights beside load_pretrained; senet.models keeps the registry's, which builds only
    assert senet.create_model is create_model and senet.models.create_model is registry.create_model
    assert senet.list_models is senet.models.list_models and senet.model_info is senet.models.model_info
