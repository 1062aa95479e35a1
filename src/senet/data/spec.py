"""What every data source gives the training engine: both splits and what a model needs to know of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from senet.data import transforms as T


@dataclass
class DataSpec:
    """A dataset ready for training: both splits and what a model and the engine need to know of them.

    ``train``/``val`` items are ``(image, label)``: a normalised float tensor (C, H, W) -- (10, C, H, W) for
    ten-crop evaluation -- and an int; image-folder items are None for an unreadable file (see
    ``build_loader``).
    """

    train: Dataset[Any]
    val: Dataset[Any]
    num_classes: int
    classes: list[str]
    in_chans: int
    image_size: int
    name: str
    train_targets: list[int]
    preprocessing: T.Preprocessing  # the evaluation transform, recorded with the weights for `senet predict`
