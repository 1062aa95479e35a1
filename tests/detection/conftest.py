"""A tiny COCO-format shapes data set, made once per test session, and a helper to write variants of its
annotation file (the bad-annotation cases)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from senet.detection.shapes import make_shapes

SIZE = 64


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/annotations/instances_{train,val}2017.json, ROOT/{train,val}2017/*.png: 20 + 5 images of 64 px,
    category ids 3, 7, 11, crowds in every 5th image, only a crowd in the 20th."""
    return make_shapes(tmp_path_factory.mktemp("shapes"), train=20, val=5, size=SIZE, seed=0)


@pytest.fixture(scope="session")
def train_document(shapes_root: Path) -> dict[str, Any]:
    return json.loads((shapes_root / "annotations" / "instances_train2017.json").read_text())


WriteAnnotations = Callable[[Callable[[dict[str, Any]], None]], Path]


@pytest.fixture
def write_annotations(tmp_path: Path, train_document: dict[str, Any]) -> WriteAnnotations:
    """``write(edit)``: the training annotations changed by ``edit(document)``, in a new file; returns it."""

    def write(edit: Callable[[dict[str, Any]], None]) -> Path:
        document = copy.deepcopy(train_document)
        edit(document)
        path = tmp_path / "instances_edited.json"
        path.write_text(json.dumps(document))
        return path

    return write
