"""Data for training and evaluation: datasets, the paper's transforms, and deterministic loaders.

``build_data(source, ...)`` gives a ``DataSpec`` (both splits and their facts); ``build_loader`` turns a split into
batches ``(images, targets, num_skipped)``. The submodules are internal; this is the public API.
"""

from senet.data.datasets import DataSpec, build_data
from senet.data.loaders import build_loader
from senet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, make_eval_transform

__all__ = ["DataSpec", "build_data", "build_loader", "IMAGENET_MEAN", "IMAGENET_STD", "make_eval_transform"]
