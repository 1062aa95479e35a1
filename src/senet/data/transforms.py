"""Image transforms: the paper's ImageNet augmentation and evaluation crops, CIFAR's standard augmentation,
Cutout.

Everything is built from ``torchvision.transforms.v2``; every pipeline ends in a plain float tensor
(C, H, W), or (10, C, H, W) for ten-crop evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# torchvision's ImageNet statistics; the paper subtracts the mean RGB (Sec. 5.1), these also divide by the
# std.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Per-channel statistics of the CIFAR training sets (the population std, not the often-copied 0.2023 ...).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: tuple[float, float, float] = (0.2673, 0.2564, 0.2762)

# The paper evaluates a 224 centre crop of the image resized to 256 (reference §8): crop = 0.875 x resize.
EVAL_CROP_FRACTION = 0.875


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """How a network's test inputs are made: what weight files record, so that prediction, evaluation and
    export feed a network as it was trained (converted timm weights as timm feeds them).

    The shorter side is resized to ``resize`` pixels with ``interpolation``, a centre ``input_size`` crop is
    taken, and only that crop is converted to float and normalised with ``mean``/``std`` (one entry per input
    channel). ``resize`` is recorded as the integer it is, because the projects derive it differently from a
    crop fraction (timm floors ``input_size / crop_pct``; torchvision states it); left out, it is
    ``round(input_size / crop_fraction)``, the paper's convention (256 for 224, 366 for 320).
    ``crop_fraction`` left out is ``input_size / resize`` (0.875 when neither is given); given with
    ``resize``, it is the source's own figure (timm's ``crop_pct``) and must round to ``resize``. A fraction
    of 1 crops away nothing of a square image (the 32 x 32 data sets).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    crop_fraction: float = None  # type: ignore[assignment]  # filled in by __post_init__
    interpolation: str = "bilinear"
    resize: int = None  # type: ignore[assignment]  # filled in by __post_init__

    def __post_init__(self) -> None:
        if self.crop_fraction is None and self.resize is None:
            object.__setattr__(self, "crop_fraction", EVAL_CROP_FRACTION)
        problems = []
        if not self.mean or len(self.mean) != len(self.std):
            problems.append(f"mean {self.mean} and std {self.std} need one entry per channel")
        if any(s <= 0 for s in self.std):
            problems.append(f"std {self.std} must be > 0")
        if not (_is_int(self.input_size) and self.input_size >= 1):
            problems.append(f"input_size {self.input_size!r} must be an integer >= 1")
        elif self.resize is not None and not (_is_int(self.resize) and self.resize >= self.input_size):
            problems.append(f"resize {self.resize!r} must be an integer >= input_size {self.input_size}")
        elif self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            problems.append(f"crop_fraction {self.crop_fraction} must be in (0, 1]")
        elif self.crop_fraction is not None and self.resize is not None:
            exact = self.input_size / self.crop_fraction
            if not math.floor(exact) <= self.resize <= math.ceil(exact):
                problems.append(
                    f"resize {self.resize} does not belong to crop {self.input_size} / crop_fraction "
                    f"{self.crop_fraction} = {exact:.2f}; give one of them"
                )
        if self.interpolation not in INTERPOLATIONS:
            problems.append(
                f"interpolation {self.interpolation!r} must be one of {', '.join(INTERPOLATIONS)}"
            )
        if problems:
            raise ValueError(f"preprocessing: {'; '.join(problems)}")
        if self.resize is None:
            object.__setattr__(self, "resize", round(self.input_size / self.crop_fraction))
        if self.crop_fraction is None:
            object.__setattr__(self, "crop_fraction", self.input_size / self.resize)

    @property
    def in_chans(self) -> int:
        return len(self.mean)

    def eval_transform(self, ten_crop: bool = False) -> v2.Compose:
        """PIL image or uint8 tensor -> normalised float tensor (C, input_size, input_size); with
        ``ten_crop``, the four corners, the centre and their mirror images as one
        (10, C, input_size, input_size) tensor.

        Cropped before it is converted: a float copy of the resized image would cost 4 bytes a pixel of the
        whole image (a 1 x 500 strip resized to 256 x 128000) for the same result."""
        size = self.input_size
        mode = v2.InterpolationMode(self.interpolation)
        crops: list[nn.Module] = [v2.TenCrop(size)] if ten_crop else [v2.CenterCrop(size)]
        return v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(self.resize, interpolation=mode, antialias=True),
                *crops,
                *_to_float(self.mean, self.std),
                *([_StackCrops()] if ten_crop else []),
                v2.ToPureTensor(),
            ]
        )

    def at_size(self, input_size: int | None) -> "Preprocessing":
        """The same preprocessing for another crop size (the same crop fraction, resize rounded), e.g. a 320
        evaluation."""
        if input_size in (None, self.input_size):
            return self
        return replace(self, input_size=input_size, resize=None)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        """From ``as_dict``'s output (JSON); a missing or unknown field is one line of error. Records of
        earlier versions, without ``resize``, resize to ``round(input_size / crop_fraction)``, as they did
        then."""
        fields = {"mean", "std", "input_size", "crop_fraction", "interpolation"}
        if not isinstance(data, dict) or set(data) - {"resize"} != fields:
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"preprocessing record has fields {found}, expected {sorted(fields | {'resize'})}"
            )
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            input_size=data["input_size"],
            crop_fraction=float(data["crop_fraction"]),
            interpolation=data["interpolation"],
            resize=data.get("resize"),
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Cutout(v2.Transform):
    """Zero one ``size`` x ``size`` square of the image (DeVries & Taylor 2017, "Improved regularization ...
    Cutout").

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
    """Stack the tuple of crops TenCrop returns into one (10, C, H, W) tensor (a module, so workers can pickle
    it)."""

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
    """Evaluation transform: resize the shorter side to ``resize``, then a centre crop (or ten crops) of
    ``crop``.

    ``resize`` defaults to ``round(crop / 0.875)``: 256 for the paper's 224 crop, 366 for its 320 crop
    (Table 8). ``ten_crop=True`` gives the four corners, the centre and their mirror images as one
    (10, C, crop, crop) tensor. Normalises with the ImageNet mean/std.
    """
    if crop < 1:
        raise ValueError(f"eval crop must be >= 1 pixel, got {crop}")
    if resize is not None and resize < crop:
        raise ValueError(
            f"eval resize {resize} is smaller than the crop {crop}; use resize >= crop (or leave it out)"
        )
    return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop, resize=resize).eval_transform(ten_crop)


def small_train_transform(
    mean: Sequence[float], std: Sequence[float], *, padding: int, flip: bool, size: int = 32, cutout: int = 0
) -> v2.Compose:
    """Training augmentation of the 32 x 32 sources (CIFAR, digits): zero-pad + random 32 x 32 crop, optional
    flip.

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
    """Evaluation transform of the 32 x 32 sources: normalise, resized to ``size`` x ``size`` when it is not
    32."""
    return v2.Compose([v2.ToImage(), *_resize_to(size), *_to_float(mean, std), v2.ToPureTensor()])


def _resize_to(size: int) -> list[nn.Module]:
    return [v2.Resize((size, size), antialias=True)] if size != 32 else []
