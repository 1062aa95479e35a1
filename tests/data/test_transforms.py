"""Cutout and the evaluation transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from senet.data import make_eval_transform
from senet.data.transforms import Cutout


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
