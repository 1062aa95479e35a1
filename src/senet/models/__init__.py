"""Whole networks, one module per family; importing this package registers every builder."""

from senet.models import resnet  # noqa: F401  (registers the ResNet family)
from senet.models.registry import ModelInfo, PaperFigures, create_model, list_models, model_info, register_model

__all__ = ["ModelInfo", "PaperFigures", "create_model", "list_models", "model_info", "register_model"]
