"""ImageNet-layout image folders: transforms and crops, and every kind of bad data."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from senet.cli import main
from senet.data import build_data, build_loader


def test_folder_spec_and_shapes(make_folder):
    spec = build_data(str(make_folder()), image_size=32)
    assert (spec.name, spec.num_classes, spec.in_chans, spec.image_size) == ("folder", 3, 3, 32)
    assert spec.classes == ["cat", "dog", "fox"]
    assert spec.train_targets == [0] * 4 + [1] * 4 + [2] * 4
    image, label = spec.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and type(image) is torch.Tensor
    assert label == 0
    assert spec.val[11][0].shape == (3, 32, 32) and spec.val[11][1] == 2


def test_default_training_crop_is_224(make_folder):
    spec = build_data(str(make_folder(per_class=1)))
    assert spec.image_size == 224
    assert spec.train[0][0].shape == (3, 224, 224)
    assert spec.val[0][0].shape == (3, 224, 224)


def test_eval_crop_and_ten_crop(make_folder):
    root = str(make_folder(per_class=1))
    assert build_data(root, image_size=32, eval_crop=40).val[0][0].shape == (3, 40, 40)
    spec = build_data(root, image_size=32, ten_crop=True)
    assert spec.val[0][0].shape == (10, 3, 32, 32)
    images, targets, skipped = next(iter(build_loader(spec.val, batch_size=2, train=False)))
    assert images.shape == (2, 10, 3, 32, 32) and targets.tolist() == [0, 1] and skipped == 0


@pytest.fixture(params=["garbage", "truncated"])
def corrupt_root(make_folder, request) -> tuple[Path, str]:
    """The image folder with train/dog/1.jpg (item 5) replaced by garbage bytes or cut in half."""
    root = make_folder()
    bad = root / "train" / "dog" / "1.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"\x00garbage, not a JPEG" * 10 if request.param == "garbage" else data[: len(data) // 2])
    return root, str(bad)


def test_corrupt_image_is_skipped_counted_and_warned_once(corrupt_root, caplog):
    root, bad = corrupt_root
    spec = build_data(str(root), image_size=32)
    loader = build_loader(spec.train, batch_size=12, train=False)
    with caplog.at_level(logging.WARNING, logger="senet.data"):
        for _ in range(2):
            images, targets, skipped = next(iter(loader))
            assert skipped == 1 and images.shape == (11, 3, 32, 32) and targets.shape == (11,)
    warnings = [record.getMessage() for record in caplog.records if record.name == "senet.data"]
    assert len(warnings) == 1 and bad in warnings[0]


def test_batch_of_only_corrupt_images_is_empty(corrupt_root):
    root, _ = corrupt_root
    spec = build_data(str(root), image_size=32)
    loader = build_loader(torch.utils.data.Subset(spec.train, [5]), batch_size=1, train=False)
    images, targets, skipped = next(iter(loader))
    assert images.numel() == 0 and targets.numel() == 0 and skipped == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_strict_data_makes_a_corrupt_image_fatal(corrupt_root, workers):
    root, bad = corrupt_root
    spec = build_data(str(root), image_size=32, strict_data=True)
    loader = build_loader(spec.train, batch_size=12, train=False, workers=workers)
    with pytest.raises(ValueError, match=rf"{re.escape(bad)}.*--strict-data made this fatal"):
        next(iter(loader))
    if workers:
        # torch leaves a worker that raised to the garbage collector, whose shutdown then waits 5 s for it.
        loader._iterator._shutdown_workers()


def test_empty_class_folder(make_folder):
    root = make_folder()
    for image in (root / "val" / "fox").iterdir():
        image.unlink()
    (root / "val" / "fox" / "notes.txt").write_text("no image here")
    with pytest.raises(
        FileNotFoundError, match=re.escape(str(root / "val" / "fox")) + ".*at least one image"
    ):
        build_data(str(root))


@pytest.mark.parametrize("split, other", [("train", "val"), ("val", "train")])
def test_class_in_one_split_only(make_folder, split, other):
    root = make_folder()
    shutil.copytree(root / split / "cat", root / split / "owl")
    with pytest.raises(ValueError, match=f"only in {split}: owl"):
        build_data(str(root))


@pytest.mark.parametrize("missing", ["train", "val"])
def test_missing_split(make_folder, missing):
    root = make_folder(splits=[s for s in ("train", "val") if s != missing])
    with pytest.raises(FileNotFoundError, match=rf"no {missing} folder.*ROOT/train/CLASS"):
        build_data(str(root))


def test_split_without_class_folders(make_folder):
    root = make_folder(splits=["train"])
    (root / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        build_data(str(root))


def test_missing_root(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(missing))}.*nor an existing directory"):
        build_data(str(missing))


def test_one_class_is_refused_and_the_cli_exits_with_one_line(make_folder, tmp_path, capsys):
    root = make_folder(classes=["cat"], per_class=2)
    with pytest.raises(ValueError, match=r"has 1 class \(cat\); classification needs at least two classes"):
        build_data(str(root))
    assert main(["train", "--data", str(root), "--epochs", "1", "--output", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "classification needs at least two classes" in error


def test_a_small_split_with_no_decodable_image_is_refused(make_folder):
    root = make_folder(per_class=1)
    for image in (root / "val").glob("*/*.jpg"):
        image.write_bytes(b"\x00garbage, not a JPEG")
    with pytest.raises(
        ValueError, match=rf"none of the 3 images in {re.escape(str(root / 'val'))} can be decoded"
    ):
        build_data(str(root))
    (root / "val" / "dog" / "0.jpg").write_bytes((root / "train" / "dog" / "0.jpg").read_bytes())
    assert (
        len(build_data(str(root)).val) == 3
    )  # one readable image is enough: the others are skipped when loaded
