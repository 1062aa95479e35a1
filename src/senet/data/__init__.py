"""Data for training and evaluation: datasets, the paper's transforms, and deterministic loaders.

``build_data(source, ...)`` gives a ``DataSpec`` (both splits and their facts); ``build_loader`` turns a split
into batches ``(images, targets, num_skipped)``; ``pack_folder`` / ``verify_shards`` write and check an image
folder as tar shards, which ``build_data`` reads by their index (a path or an fsspec URL). The submodules are
internal; this is the public API.
"""

from senet.data.datasets import build_data
from senet.data.loaders import build_loader
from senet.data.shards import pack_folder, verify_shards
from senet.data.spec import DataSpec
from senet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, make_eval_transform

__all__ = [
    "DataSpec",
    "build_data",
    "build_loader",
    "pack_folder",
    "verify_shards",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "make_eval_transform",
]
