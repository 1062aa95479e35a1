"""Tiny CIFAR files written on the fly in the real pickle format.

Image folders: ``make_folder`` in tests/conftest.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest


def _pickle(path: Path, obj: object) -> None:
    # Protocol 2 with str keys: what the original (Python 2) files unpickle to under encoding="latin1".
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _batch(rng: np.random.Generator, n: int, num_classes: int, label_key: str) -> dict[str, object]:
    return {
        "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),  # rows: R plane, G plane, B plane
        label_key: [int(x) for x in rng.integers(0, num_classes, n)],
    }


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    """ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}:
    2 images a batch, 3 test images."""
    root, per_batch, test = tmp_path / "c10", 2, 3
    rng = np.random.default_rng(10)
    folder = root / "cifar-10-batches-py"
    for k in range(1, 6):
        _pickle(folder / f"data_batch_{k}", _batch(rng, per_batch, 10, "labels"))
    _pickle(folder / "test_batch", _batch(rng, test, 10, "labels"))
    _pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)], "num_vis": 3072})
    return root


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    """ROOT/cifar-100-python/{train, test, meta}: 6 train and 4 test images."""
    root, train, test = tmp_path / "c100", 6, 4
    rng = np.random.default_rng(100)
    folder = root / "cifar-100-python"
    for name, n in (("train", train), ("test", test)):
        batch = _batch(rng, n, 100, "fine_labels")
        batch["coarse_labels"] = [label // 5 for label in batch["fine_labels"]]  # type: ignore[attr-defined]
        _pickle(folder / name, batch)
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"f{k}" for k in range(100)],
            "coarse_label_names": [f"g{k}" for k in range(20)],
        },
    )
    return root
