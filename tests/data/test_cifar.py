"""CIFAR-10/100 from files in the real format: loading, auto-detection, missing and damaged files."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.datasets.cifar

from senet.data import build_data


def test_cifar10_from_root(cifar10_root: Path):
    spec = build_data("cifar10", root=str(cifar10_root))
    assert (spec.name, spec.num_classes, spec.in_chans, spec.image_size) == ("cifar10", 10, 3, 32)
    assert spec.classes == [f"c{k}" for k in range(10)]
    assert (len(spec.train), len(spec.val)) == (10, 3)
    image, label = spec.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    assert spec.train_targets == [spec.train[i][1] for i in range(10)]


def test_cifar100_from_root(cifar100_root: Path):
    spec = build_data("cifar100", root=str(cifar100_root))
    assert (spec.name, spec.num_classes, len(spec.train), len(spec.val)) == ("cifar100", 100, 6, 4)
    assert spec.classes[:2] == ["f0", "f1"]
    assert spec.val[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("inner", [False, True])
def test_directory_source_is_detected_as_cifar(cifar10_root: Path, inner: bool):
    source = cifar10_root / "cifar-10-batches-py" if inner else cifar10_root
    assert build_data(str(source)).name == "cifar10"


def test_val_is_deterministic_and_eval_crop_resizes(cifar10_root: Path):
    spec = build_data("cifar10", root=str(cifar10_root))
    assert torch.equal(spec.val[1][0], spec.val[1][0])
    assert build_data("cifar10", root=str(cifar10_root), eval_crop=40).val[0][0].shape == (3, 40, 40)


def test_cutout_joins_the_training_transform(cifar10_root: Path):
    spec = build_data("cifar10", root=str(cifar10_root), cutout=8)
    for i in range(len(spec.train)):
        image = spec.train[i][0]
        assert (image == 0).all(0).sum() >= 4 * 4  # even a square centred in a corner keeps a quarter


def test_missing_files_name_the_files_and_download(cifar10_root: Path):
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3.*--download"):
        build_data("cifar10", root=str(cifar10_root))
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*train, test, meta"):
        build_data("cifar100", root=str(cifar10_root))


def test_root_is_required(cifar10_root: Path):
    with pytest.raises(ValueError, match="root=DIR"):
        build_data("cifar10")


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match=r"download .* failed .*no network"):
        build_data("cifar10", root=str(tmp_path), download=True)


def test_damaged_file_is_a_clear_error(cifar10_root: Path):
    (cifar10_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="damaged"):
        build_data("cifar10", root=str(cifar10_root))


def test_ten_crop_is_refused(cifar10_root: Path):
    with pytest.raises(ValueError, match="ten_crop"):
        build_data("cifar10", root=str(cifar10_root), ten_crop=True)
