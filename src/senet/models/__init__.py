"""Whole networks, one module per family; importing this package registers every builder."""

# Importing a family's module registers its builders.
from senet.models import inception, mobile, resnet, shake, vgg  # noqa: F401
from senet.models.registry import ModelInfo, PaperFigures, create_model, list_models, model_info, register_model

__all__ = ["ModelInfo", "PaperFigures", "create_model", "list_models", "model_info", "register_model"]
