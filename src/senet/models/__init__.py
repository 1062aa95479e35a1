"""Whole networks, one module per family; importing this package registers every builder."""

# Importing a family's module registers its builders; this order is the order of `senet models`.
from senet.models import resnet  # noqa: F401, I001  (ResNet, ResNeXt, SENet-154, CIFAR ResNets, WRN)
from senet.models import inception  # noqa: F401  (BN-Inception, Inception-ResNet-v2)
from senet.models import vgg  # noqa: F401
from senet.models import mobile  # noqa: F401  (MobileNet, ShuffleNet)
from senet.models import shake  # noqa: F401  (Shake-Shake, Shake-Even)
from senet.models import torchvision_models  # noqa: F401  (torchvision:NAME, resolved by its prefix)
from senet.models.registry import (
    ModelInfo,
    PaperFigures,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = ["ModelInfo", "PaperFigures", "create_model", "list_models", "model_info", "register_model"]
