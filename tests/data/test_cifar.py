"""CIFAR-10/100 from files in the real format: loading, auto-detection, missing and damaged files."""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar

from senet.data import build_data
from senet.data import transforms as T
from senet.data.datasets import _read_cifar_pickle


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


# ----------------------------------------------------------------------------- no code from data, no nonsense


def _pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # protocol 2, as the original files and conftest's


class _Payload:
    """Unpickles by calling ``function(*args)``: what a crafted CIFAR file would do."""

    def __init__(self, function, *args):
        self.call = (function, args)

    def __reduce__(self):
        return self.call


def _payloads(marker: Path) -> dict[str, object]:
    """Objects whose plain unpickling creates ``marker``."""
    return {
        "os.system": _Payload(os.system, f"touch {shlex.quote(str(marker))}"),
        "open": _Payload(builtins.open, str(marker), "w"),
        "exec in data": {"data": _Payload(exec, f"open({str(marker)!r}, 'w')"), "labels": [0]},
    }


@pytest.mark.parametrize("kind", ["os.system", "open", "exec in data"])
@pytest.mark.parametrize("target", ["batches.meta", "data_batch_2", "test_batch"])
def test_a_pickle_that_would_run_code_is_refused_before_it_runs(
    cifar10_root: Path, tmp_path: Path, kind, target
):
    live = tmp_path / "live"
    pickle.loads(
        pickle.dumps(_payloads(live)[kind], protocol=2)
    )  # the payload works when unpickled naively ...
    assert live.exists()
    marker = tmp_path / "marker"
    _pickle(cifar10_root / "cifar-10-batches-py" / target, _payloads(marker)[kind])
    with pytest.raises(ValueError) as error:  # ... and is refused here
        build_data(str(cifar10_root))
    message = str(error.value)
    assert "\n" not in message and str(cifar10_root / "cifar-10-batches-py" / target) in message
    assert "refused" in message and "could run code" in message
    assert not marker.exists()


def test_small_files_load_with_their_pixels_and_labels(cifar10_root: Path):
    # Read back with plain pickle (the test wrote these files): row = R plane, G plane, B plane, each 32 x 32.
    folder = cifar10_root / "cifar-10-batches-py"
    batches = [pickle.loads((folder / f"data_batch_{k}").read_bytes()) for k in range(1, 6)]
    test = pickle.loads((folder / "test_batch").read_bytes())
    spec = build_data("cifar10", root=str(cifar10_root))
    assert spec.train_targets == [label for batch in batches for label in batch["labels"]]
    mean, std = torch.tensor(T.CIFAR10_MEAN).view(3, 1, 1), torch.tensor(T.CIFAR10_STD).view(3, 1, 1)
    for i, row in enumerate(test["data"]):
        expected = torch.from_numpy(row.reshape(3, 32, 32)).float() / 255
        image, label = spec.val[i]
        assert label == test["labels"][i]
        torch.testing.assert_close(image * std + mean, expected, atol=1e-5, rtol=0)


def test_bytes_keys_load_too(cifar10_root: Path):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    _pickle(path, {key.encode(): value for key, value in batch.items()})
    assert build_data("cifar10", root=str(cifar10_root)).val.targets == batch["labels"]


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_unpickler_reads_numpy_arrays_of_any_dtype(tmp_path: Path, protocol: int):
    arrays = {
        dtype: np.arange(24).reshape(2, 3, 4).astype(dtype)
        for dtype in ("uint8", "int16", "int64", "float16", "float32", "float64", "complex128", "bool", ">i4")
    }
    arrays["fortran"] = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    arrays["strided"] = np.arange(20)[::3]
    arrays["empty"] = np.zeros((0, 3072), np.uint8)
    arrays["0-d"] = np.array(7.5)
    arrays["structured"] = np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")])
    others = {"text": "é", "raw": b"\x00\xff", "empty": b"", "numbers": [1, -2.5, 3j, True, None]}
    others["np"] = np.int64(7)
    path = tmp_path / "arrays"
    path.write_bytes(pickle.dumps({"arrays": arrays, "others": others}, protocol=protocol))
    loaded = _read_cifar_pickle(path)
    plain = pickle.loads(path.read_bytes(), encoding="latin1")  # what pickle.load gave before
    assert loaded["others"] == others and type(loaded["others"]["np"]) is np.int64
    assert loaded["arrays"].keys() == arrays.keys()
    for name, array in arrays.items():
        # numpy itself unpickles ">i4" as native int32: compare dtypes with plain
        # pickle, values with the original
        assert loaded["arrays"][name].dtype == plain["arrays"][name].dtype, name
        assert np.array_equal(loaded["arrays"][name], array), name


def test_python2_files_as_the_originals_are_written_load(tmp_path: Path):
    # Assembled opcode by opcode as Python 2 + numpy 1 wrote CIFAR's files: str keys and raw bytes as Python 2
    # str (BINSTRING), the array as numpy.core.multiarray._reconstruct + BUILD with its dtype's state.
    def short(text: bytes) -> bytes:
        return b"U" + bytes([len(text)]) + text

    pixels = bytes(range(256)) * 24
    path = tmp_path / "data_batch_1"
    path.write_bytes(
        b"\x80\x02}("
        + short(b"data")
        + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + short(b"b")
        + b"\x87R(K\x01K\x02M\x00\x0c\x86cnumpy\ndtype\n"
        + short(b"u1")
        + b"K\x00K\x01\x87R(K\x03"
        + short(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbI00\nT"
        + len(pixels).to_bytes(4, "little")
        + pixels
        + b"tb"
        + short(b"labels")
        + b"](K\x03K\x07eu."
    )
    loaded = _read_cifar_pickle(path)
    assert loaded.keys() == {"data", "labels"} and loaded["labels"] == [3, 7]
    assert loaded["data"].dtype == np.uint8 and loaded["data"].shape == (2, 3072)
    assert loaded["data"].tobytes() == pixels


def _relabel(root: Path, names: list[str], label) -> None:
    """Rewrite the CIFAR-10 files under ``root`` with class ``names`` and every label ``label(old)``."""
    folder = root / "cifar-10-batches-py"
    for path in folder.iterdir():
        entry = pickle.loads(path.read_bytes())
        if path.name == "batches.meta":
            entry["label_names"] = names
        else:
            entry["labels"] = [label(old) for old in entry["labels"]]
        _pickle(path, entry)


def test_one_class_is_refused(cifar10_root: Path):
    _relabel(cifar10_root, ["plane"], lambda old: 0)
    with pytest.raises(ValueError, match=r"has 1 class \(plane\); classification needs at least two classes"):
        build_data("cifar10", root=str(cifar10_root))


def test_training_labels_of_one_class_are_refused(cifar10_root: Path):
    _relabel(cifar10_root, [f"c{k}" for k in range(10)], lambda old: 3)
    with pytest.raises(
        ValueError, match=r"only 1 of its 10 classes \(c3\); classification needs at least two"
    ):
        build_data("cifar10", root=str(cifar10_root))


def test_labels_outside_the_classes_are_refused(cifar10_root: Path):
    _relabel(cifar10_root, [f"c{k}" for k in range(10)], lambda old: old + 5)  # labels 0..9 become 5..14
    with pytest.raises(
        ValueError, match=r"damaged.*labels 1\d.* are not in 0\.\.9 \(10 classes in batches.meta\)"
    ):
        build_data("cifar10", root=str(cifar10_root))


def test_pixels_that_are_not_uint8_rows_are_refused(cifar10_root: Path):
    path = cifar10_root / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    _pickle(path, {**batch, "data": batch["data"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"damaged.*test_batch: data is float32 \(3, 3072\) for 3 labels"):
        build_data("cifar10", root=str(cifar10_root))
