"""ImageNet-layout image folders (ROOT/train/CLASS/*.jpg, ROOT/val/CLASS/*.jpg): their layout checks, the
skipping of unreadable images, and their transforms; also what ``senet data pack`` reads into shards.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from senet.data import transforms as T
from senet.data.spec import DataSpec

_LOG = logging.getLogger("senet.data")

FOLDER_LAYOUT = "ROOT/train/CLASS/*.jpg and ROOT/val/CLASS/*.jpg (the same CLASS folders in both)"
DEFAULT_FOLDER_SIZE = 224  # the paper's training crop (Sec. 5.1)

# What PIL raises on a file it cannot decode: garbage (UnidentifiedImageError is an OSError), truncation
# (OSError), broken plugin data (SyntaxError, ValueError), or a decompression bomb.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# A split of at most this many images with none decodable is refused by build_data; larger splits are not
# decoded up front (an ImageNet would take hours): the engine refuses an epoch without a usable image.
PROBE_LIMIT = 64


def preview_names(items: list[str], limit: int = 5) -> str:
    """'a, b, c' -- or the first ``limit`` and a count, so that one bad ImageNet split keeps the error one
    line."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def report_unreadable(
    what: str,
    error: BaseException,
    *,
    strict: bool,
    warned: set[str],
    fix: str = "fix or delete the file",
) -> None:
    """An image that does not decode: fatal under ``strict`` (naming it; raised in a loader worker, the
    DataLoader re-raises it with this message inside), else a warning once per image (``warned``, per
    process)."""
    reason = f"{type(error).__name__}: {error}"
    if strict:
        raise ValueError(
            f"unreadable image {what} ({reason}); --strict-data made this fatal: "
            f"{fix}, or drop --strict-data to skip unreadable images with a warning"
        ) from error
    if what not in warned:
        warned.add(what)
        _LOG.warning(
            "skipping unreadable image %s (%s); pass --strict-data to make this an error", what, reason
        )


class SkippingImageFolder(ImageFolder):
    """ImageFolder whose unreadable images are skipped (None, warned once per path) or fatal (``strict``)."""

    def __init__(self, root: Path, transform: Callable[[Any], torch.Tensor], *, strict: bool) -> None:
        # allow_empty: build_data reports every empty class folder by path rather than torchvision's first
        # error.
        super().__init__(str(root), transform=transform, allow_empty=True)
        self.strict = strict
        self._warned: set[str] = set()  # per process: each loader worker warns on its own

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except DECODE_ERRORS as error:
            self._unreadable(path, error)
            return None
        assert self.transform is not None  # always given, see __init__
        return self.transform(image), target

    def _unreadable(self, path: str, error: BaseException) -> None:
        report_unreadable(path, error, strict=self.strict, warned=self._warned)

    def check_decodable(self) -> None:
        """Refuse a small split (``PROBE_LIMIT``) in which no image decodes; stops at the first good one."""
        if len(self.samples) > PROBE_LIMIT:
            return
        first = ""
        for path, _ in self.samples:
            try:
                self.loader(path)
                return
            except DECODE_ERRORS as error:
                first = first or f"{path}: {type(error).__name__}: {error}"
        raise ValueError(
            f"none of the {len(self.samples)} images in {self.root} can be decoded (first: {first}); "
            "replace them with readable images"
        )

    def empty_class_folders(self) -> list[str]:
        """Class folders without a single image file."""
        present = set(self.targets)
        return [
            os.path.join(self.root, name) for name, index in self.class_to_idx.items() if index not in present
        ]


def _class_folders(split: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(split) if entry.is_dir())


def _check_folder_layout(root: Path) -> None:
    """Missing splits, missing class folders and train/val class mismatches, as one clear error each."""
    missing = [split for split in ("train", "val") if not (root / split).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"image folder {root} has no {' or '.join(missing)} folder; expected {FOLDER_LAYOUT}"
        )
    train, val = set(_class_folders(root / "train")), set(_class_folders(root / "val"))
    for split, classes in (("train", train), ("val", val)):
        if not classes:
            raise FileNotFoundError(f"{root / split} has no class folders; expected {FOLDER_LAYOUT}")
    if train != val:
        only = [
            f"only in {split}: {preview_names(sorted(extra))}"
            for split, extra in (("train", train - val), ("val", val - train))
            if extra
        ]
        raise ValueError(
            f"train and val of {root} have different class folders ({'; '.join(only)}); "
            "every class needs a folder in both splits"
        )


def scan_folder(
    root: Path,
    train_transform: Callable[[Any], torch.Tensor],
    val_transform: Callable[[Any], torch.Tensor],
    strict: bool,
) -> tuple[SkippingImageFolder, SkippingImageFolder]:
    """Both splits of an image folder, its layout checked (also what ``senet data pack`` reads)."""
    _check_folder_layout(root)
    train = SkippingImageFolder(root / "train", train_transform, strict=strict)
    val = SkippingImageFolder(root / "val", val_transform, strict=strict)
    empty = train.empty_class_folders() + val.empty_class_folders()
    if empty:
        raise FileNotFoundError(
            f"class folders with no images: {preview_names(empty)}; every class needs at least one image "
            f"({' '.join(IMG_EXTENSIONS)}) in both train and val"
        )
    return train, val


def folder_transforms(
    image_size: int, eval_crop: int | None, ten_crop: bool, cutout: int, preprocessing: T.Preprocessing | None
) -> tuple[Any, Any, T.Preprocessing]:
    """The train and eval transforms of ImageNet-style images (folders and their shards) and the preprocessing
    recorded with the weights: the paper's, or ``preprocessing`` (e.g. converted weights'), at the eval
    crop."""
    default = T.Preprocessing(T.IMAGENET_MEAN, T.IMAGENET_STD, image_size)
    preprocessing = (preprocessing or default).at_size(eval_crop or image_size)
    return T.folder_train_transform(image_size, cutout), preprocessing.eval_transform(ten_crop), preprocessing


def build_folder(
    root: Path,
    image_size: int,
    eval_crop: int | None,
    ten_crop: bool,
    strict: bool,
    cutout: int,
    preprocessing: T.Preprocessing | None,
) -> DataSpec:
    """ImageNet-layout folders with the paper's augmentation (Sec. 5.1) and resize-then-crop evaluation."""
    train_transform, eval_transform, preprocessing = folder_transforms(
        image_size, eval_crop, ten_crop, cutout, preprocessing
    )
    train, val = scan_folder(root, train_transform, eval_transform, strict)
    return image_spec(train, val, list(train.classes), image_size, "folder", preprocessing)


def image_spec(
    train: Any, val: Any, classes: list[str], image_size: int, name: str, preprocessing: T.Preprocessing
) -> DataSpec:
    """The DataSpec of RGB image splits (an image folder's or its shards'), once both pass the up-front
    decoding probe."""
    train.check_decodable()
    val.check_decodable()
    return DataSpec(
        train, val, len(classes), classes, 3, image_size, name, list(train.targets), preprocessing
    )
