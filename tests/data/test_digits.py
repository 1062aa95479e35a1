"""The bundled digits: shapes, the fixed stratified split, normalisation, determinism."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torchvision.transforms import v2

from senet.data import build_data


@pytest.fixture(scope="module")
def digits():
    return build_data("digits")


def test_digits_spec(digits):
    assert (digits.name, digits.num_classes, digits.in_chans, digits.image_size) == ("digits", 10, 1, 32)
    assert digits.classes == [str(k) for k in range(10)]
    assert (len(digits.train), len(digits.val)) == (1437, 360)  # 80/20 of 1,797
    image, label = digits.train[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32 and type(image) is torch.Tensor
    assert isinstance(label, int)
    assert digits.train_targets == [digits.train[i][1] for i in range(len(digits.train))]


def test_split_is_stratified(digits):
    train, val = Counter(digits.train_targets), Counter(digits.val[i][1] for i in range(len(digits.val)))
    for k in range(10):
        assert abs(val[k] - 0.2 * (train[k] + val[k])) <= 1


def test_val_is_normalised_with_train_statistics(digits):
    images = torch.stack([digits.val[i][0] for i in range(len(digits.val))])
    assert abs(images.mean().item()) < 0.1
    assert abs(images.std().item() - 1) < 0.1


def test_split_and_images_do_not_depend_on_the_seed(digits):
    torch.manual_seed(123)
    again = build_data("digits")
    assert again.train_targets == digits.train_targets
    for i in (0, 100, 359):
        assert torch.equal(again.val[i][0], digits.val[i][0]) and again.val[i][1] == digits.val[i][1]


def test_training_augmentation_shifts_but_never_mirrors(digits):
    shifted = [digits.train[5][0] for _ in range(8)]
    assert all(image.shape == (1, 32, 32) for image in shifted)
    assert any(not torch.equal(shifted[0], other) for other in shifted[1:])  # random translation
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in digits.train.transform.transforms)


def test_eval_crop_resizes_and_ten_crop_is_refused():
    assert build_data("digits", eval_crop=40).val[0][0].shape == (1, 40, 40)
    with pytest.raises(ValueError, match="ten_crop"):
        build_data("digits", ten_crop=True)


@pytest.mark.parametrize(
    "options, message",
    [({"image_size": 0}, "image_size"), ({"eval_crop": -1}, "eval_crop"), ({"cutout": -2}, "cutout")],
)
def test_bad_sizes_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        build_data("digits", **options)


def test_digits_at_another_size():
    spec = build_data("digits", image_size=48)
    assert spec.image_size == 48
    assert spec.train[0][0].shape == spec.val[0][0].shape == (1, 48, 48)
