"""Image transforms: the paper's ImageNet augmentation and evaluation crops, CIFAR's standard augmentation, Cutout.

Everything is built from ``torchvision.transforms.v2``; every pipeline ends in a plain float tensor
(C, H, W), or (10, C, H, W) for ten-crop evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# torchvision's ImageNet statistics; the paper subtracts the mean RGB (Sec. 5.1), these also divide by the std.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Per-channel statistics of the CIFAR training sets (the population std, not the often-copied 0.2023 ...).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

# The paper evaluates a 224 centre crop of the image resized to 256 (reference §8): crop = 0.875 x resize.
EVAL_CROP_FRACTION = 0.875


class Cutout(v2.Transform):
    """Zero one ``size`` x ``size`` square of the image (DeVries & Taylor 2017, "Improved regularization ... Cutout").

    The square's centre is uniform over the whole image and the square is clipped at the borders, so near an
    edge less than ``size`` x ``size`` pixels are erased, as in the original. Place it after ``Normalize``:
    zero then means "the dataset mean", which is what the original code fills with.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"cutout size must be >= 1 pixel, got {size}")
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(flat_inputs[0])
        # torch's RNG, so DataLoader worker seeding makes the squares reproducible.
        cy = int(torch.randint(height, ()).item())
        cx = int(torch.randint(width, ()).item())
        top, left = max(0, cy - self.size // 2), max(0, cx - self.size // 2)
        bottom = min(height, cy - self.size // 2 + self.size)
        right = min(width, cx - self.size // 2 + self.size)
        return {"i": top, "j": left, "h": bottom - top, "w": right - left}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.erase, inpt, **params, v=torch.zeros(()))


class _StackCrops(nn.Module):
    """Stack the tuple of crops TenCrop returns into one (10, C, H, W) tensor (a module, so workers can pickle it)."""

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(crops)).as_subclass(torch.Tensor)


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[nn.Module]:
    """Image tensor -> float in [0, 1] -> normalised with ``mean``/``std``."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _cutout(size: int) -> list[nn.Module]:
    return [Cutout(size)] if size > 0 else []


def folder_train_transform(image_size: int, cutout: int = 0) -> v2.Compose:
    """The paper's ImageNet training augmentation (Sec. 5.1; reference §8).

    Inception-style random-size crop (8 %-100 % of the area, aspect ratio 3/4-4/3) resized to ``image_size``,
    random horizontal flip, ImageNet mean/std normalisation; optional Cutout.
    """
    return v2.Compose(
        [
            v2.ToImage(),  # PIL -> uint8 tensor first: v2 crops and resizes uint8 tensors fastest
            v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(),
            *_to_float(IMAGENET_MEAN, IMAGENET_STD),
            *_cutout(cutout),
            v2.ToPureTensor(),
        ]
    )


def make_eval_transform(crop: int, resize: int | None = None, ten_crop: bool = False) -> v2.Compose:
    """Evaluation transform: resize the shorter side to ``resize``, then a centre crop (or ten crops) of ``crop``.

    ``resize`` defaults to ``round(crop / 0.875)``: 256 for the paper's 224 crop, 366 for its 320 crop (Table 8).
    ``ten_crop=True`` gives the four corners, the centre and their mirror images as one (10, C, crop, crop) tensor.
    Normalises with the ImageNet mean/std.
    """
    if crop < 1:
        raise ValueError(f"eval crop must be >= 1 pixel, got {crop}")
    resize = round(crop / EVAL_CROP_FRACTION) if resize is None else resize
    if resize < crop:
        raise ValueError(
            f"eval resize {resize} is smaller than the crop {crop}; use resize >= crop (or leave it out)"
        )
    crops: list[nn.Module] = [v2.TenCrop(crop), _StackCrops()] if ten_crop else [v2.CenterCrop(crop)]
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, antialias=True),
            *_to_float(IMAGENET_MEAN, IMAGENET_STD),
            *crops,
            v2.ToPureTensor(),
        ]
    )


def small_train_transform(
    mean: Sequence[float], std: Sequence[float], *, padding: int, flip: bool, size: int = 32, cutout: int = 0
) -> v2.Compose:
    """Training augmentation of the 32 x 32 sources (CIFAR, digits): zero-pad + random 32 x 32 crop, optional flip.

    CIFAR uses padding 4 and the flip (reference §8); digits a 2-pixel shift and no flip (a mirrored digit is
    another symbol). Crops are taken at the native 32 x 32 and only then resized to ``size`` when it differs.
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomCrop(32, padding=padding, fill=0),
            *([v2.RandomHorizontalFlip()] if flip else []),
            *_resize_to(size),
            *_to_float(mean, std),
            *_cutout(cutout),
            v2.ToPureTensor(),
        ]
    )


def small_eval_transform(mean: Sequence[float], std: Sequence[float], *, size: int = 32) -> v2.Compose:
    """Evaluation transform of the 32 x 32 sources: normalise, resized to ``size`` x ``size`` when it is not 32."""
    return v2.Compose([v2.ToImage(), *_resize_to(size), *_to_float(mean, std), v2.ToPureTensor()])


def _resize_to(size: int) -> list[nn.Module]:
    return [v2.Resize((size, size), antialias=True)] if size != 32 else []
