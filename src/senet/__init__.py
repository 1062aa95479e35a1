"""senet: Squeeze-and-Excitation Networks (Hu, Shen, Sun, CVPR 2018), every architecture of the paper."""

from senet.deploy.optimize import optimize_for_inference
from senet.layers.squeeze_excite import SqueezeExcite
from senet.models.add_se import add_se
from senet.models.registry import list_models, model_info
from senet.weights.pretrained import create_model, load_pretrained

__version__ = "0.1.0"
__all__ = [
    "SqueezeExcite",
    "add_se",
    "create_model",
    "list_models",
    "load_pretrained",
    "model_info",
    "optimize_for_inference",
    "__version__",
]

import senet.models  # noqa: E402,F401  (registers every network)
