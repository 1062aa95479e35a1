"""Cutout, the evaluation transform and the preprocessing record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from senet.data import make_eval_transform
from senet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Cutout, Preprocessing


def _zero_box(image: torch.Tensor) -> tuple[int, int, int]:
    """(zeroed pixels, box height, box width) of the zeroed region of every channel."""
    zero = (image == 0).all(0)
    rows, cols = zero.any(1).nonzero(), zero.any(0).nonzero()
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    return int(zero.sum()), height, width


def test_cutout_zeroes_one_square_clipped_at_the_borders():
    cutout = Cutout(6)
    sizes = set()
    for _ in range(200):
        out = cutout(torch.ones(3, 20, 20))
        zeroed, height, width = _zero_box(out)
        assert zeroed == height * width  # one filled rectangle ...
        assert torch.equal((out == 0).all(0), (out == 0).any(0))  # ... the same in every channel
        assert 3 <= height <= 6 and 3 <= width <= 6  # clipped at most to half a side (centre in the image)
        sizes.add((height, width))
    assert (6, 6) in sizes and len(sizes) > 1  # the full square inside, clipped ones at the borders


def test_cutout_rejects_a_zero_size():
    with pytest.raises(ValueError, match="cutout size"):
        Cutout(0)


def _photo(width: int = 60, height: int = 50) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_eval_transform_resizes_by_crop_fraction():
    transform = make_eval_transform(320)
    resize = next(t for t in transform.transforms if isinstance(t, v2.Resize))
    assert resize.size == [366]  # the paper's 320 crop of a 366 image (224 of 256)
    assert make_eval_transform(32)(_photo()).shape == (3, 32, 32)


def test_ten_crop_stacks_corners_centre_and_mirrors():
    crops = make_eval_transform(24, resize=40, ten_crop=True)(_photo())
    assert crops.shape == (10, 3, 24, 24) and type(crops) is torch.Tensor
    # torchvision's order: top-left, top-right, bottom-left, bottom-right, centre, then the same five crops of
    # the mirrored image -- whose top-left is the mirrored top-right.
    assert torch.equal(crops[5], crops[1].flip(-1)) and torch.equal(crops[9], crops[4].flip(-1))


def test_resize_smaller_than_crop_is_refused():
    with pytest.raises(ValueError, match="smaller than the crop"):
        make_eval_transform(224, resize=200)


def test_the_resize_is_an_integer_of_its_own():
    """timm floors 224 / 0.95 to 235 and torchvision states 232 outright: neither comes back from a fraction,
    so the record holds the integer, and a record of an earlier version (fraction only) still reads."""
    timm_a1 = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 224, 0.95, "bicubic", resize=235)
    assert Preprocessing.from_dict(timm_a1.as_dict()) == timm_a1 and timm_a1.as_dict()["resize"] == 235
    resize = next(t for t in timm_a1.eval_transform().transforms if isinstance(t, v2.Resize))
    assert resize.size == [235]
    torchvision_v2 = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 224, resize=232)
    assert torchvision_v2.crop_fraction == 224 / 232
    earlier = {k: v for k, v in timm_a1.as_dict().items() if k != "resize"}
    assert Preprocessing.from_dict(earlier).resize == 236  # as earlier versions resized: round(224 / 0.95)
    with pytest.raises(ValueError, match="resize 250 does not belong to crop 224 / crop_fraction 0.95"):
        Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 224, 0.95, resize=250)
    with pytest.raises(ValueError, match="resize 200 must be an integer >= input_size 224"):
        Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 224, resize=200)


def test_the_eval_transform_crops_before_it_converts_to_float():
    """A 1 x 100 strip resized to 32 is 32 x 3200: no float copy of it is made, only of the 28 x 28 crop
    (the same numbers: resizing happens on uint8 either way, and normalising is per pixel)."""
    pre = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 28)  # the paper's 0.875: resized to 32
    strip = torch.randint(0, 256, (3, 1, 100), dtype=torch.uint8)
    for ten_crop in (False, True):
        out = strip
        for step in pre.eval_transform(ten_crop).transforms:
            out = step(out)
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                assert not tensor.is_floating_point() or tensor.shape[-2:] == (28, 28), type(step).__name__
        centre = out[4] if ten_crop else out
        resized = v2.functional.resize(strip, [32], antialias=True)
        expected = v2.functional.normalize(
            v2.functional.center_crop(resized, [28]).float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD)
        )
        torch.testing.assert_close(centre, expected)
