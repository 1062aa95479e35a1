"""COCO-format data: paths, the category mapping, boxes against the file, flips, crowds, bad annotations."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from senet.cli import main
from senet.detection.data import (
    TARGET_ONLY_PROBLEMS,
    CategoryMap,
    CocoDetection,
    coco_datasets,
    collate,
    resolve_coco_paths,
)
from senet.detection.shapes import _draw_shape, make_shapes

SIZE = 64  # the session data set's images (conftest.py)
WriteAnnotations = Callable[[Callable[[dict[str, Any]], None]], Path]
LABELS = {3: 1, 7: 2, 11: 3}  # the shapes' category ids, in increasing order -> 1..K


def _train_paths(root: Path) -> tuple[Path, Path]:
    return root / "annotations" / "instances_train2017.json", root / "train2017"


# ------------------------------------------------------------------------------------------------ paths


def test_resolve_coco_layout_and_explicit_paths(shapes_root: Path, tmp_path: Path) -> None:
    paths = resolve_coco_paths(shapes_root)
    assert paths["train"].annotations == shapes_root / "annotations" / "instances_train2017.json"
    assert paths["val"].images == shapes_root / "val2017"
    other = tmp_path / "other.json"
    other.write_text("{}")
    paths = resolve_coco_paths(shapes_root, val_ann=other, splits=("val",))
    assert list(paths) == ["val"] and paths["val"].annotations == other
    assert paths["val"].images == shapes_root / "val2017"
    assert (
        resolve_coco_paths(train_ann=other, train_images=tmp_path, splits=("train",))["train"].images
        == tmp_path
    )


@pytest.mark.parametrize(
    "arguments, expect",
    [
        (dict(), ("no train annotations", "--data ROOT", "--train-ann")),
        (dict(data="{root}/nowhere"), ("nowhere", "no such directory")),
        (dict(data="{empty}"), ("annotations/instances_train2017.json", "no such file", "--train-ann")),
        (dict(data="{root}", val_images="{root}/missing"), ("--val-images", "missing", "no such directory")),
        (dict(train_ann="{root}/x.json", train_images="{root}/train2017"), ("--train-ann", "x.json")),
    ],
)
def test_resolve_refuses_missing_paths_in_one_line(
    shapes_root: Path, tmp_path: Path, arguments: dict[str, str], expect: tuple[str, ...]
) -> None:
    arguments = {k: v.format(root=shapes_root, empty=tmp_path) for k, v in arguments.items()}
    with pytest.raises(ValueError) as error:
        resolve_coco_paths(**arguments)
    message = str(error.value)
    assert "\n" not in message and all(fragment in message for fragment in expect), message


# ------------------------------------------------------------------------------------------- categories


def test_category_map_is_contiguous_in_increasing_id_order() -> None:
    categories = CategoryMap.from_coco(
        [{"id": 11, "name": "c"}, {"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    )
    assert categories.coco_ids == (3, 7, 11) and categories.names == ("a", "b", "c")
    assert [categories.label(i) for i in (3, 7, 11)] == [1, 2, 3]
    assert [categories.coco_id(label) for label in (1, 2, 3)] == [3, 7, 11]
    assert categories.name(3) == "c" and categories.num_classes == 3
    assert CategoryMap.from_dict(categories.as_dict()) == categories
    for label in (0, 4, -1):
        with pytest.raises(ValueError, match="labels are 1..3"):
            categories.coco_id(label)
    with pytest.raises(ValueError, match="appears twice"):
        CategoryMap.from_coco([{"id": 3, "name": "a"}, {"id": 3, "name": "b"}])
    with pytest.raises(ValueError, match="non-empty list"):
        CategoryMap.from_coco([])


def test_splits_with_other_categories_are_refused(
    shapes_root: Path, write_annotations: WriteAnnotations
) -> None:
    def rename(document: dict[str, Any]) -> None:
        document["categories"][0]["id"] = 4
        for ann in document["annotations"]:
            ann["category_id"] = 4 if ann["category_id"] == 3 else ann["category_id"]

    train = CocoDetection(*_train_paths(shapes_root), train=True)
    with pytest.raises(ValueError, match="differ from the training split's"):
        CocoDetection(
            write_annotations(rename), shapes_root / "train2017", train=False, categories=train.categories
        )


# ------------------------------------------------------------------------------------------ boxes, crowds


def test_targets_hold_the_files_boxes_and_contiguous_labels(
    shapes_root: Path, train_document: dict[str, Any]
) -> None:
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in train_document["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for train in (False, True):
        dataset = CocoDetection(*_train_paths(shapes_root), train=train, flip_prob=0)
        assert dataset.categories.coco_ids == (3, 7, 11)
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
            assert 0 <= image.min() and image.max() <= 1
            anns = [a for a in by_image.get(target["image_id"], []) if not (train and a["iscrowd"])]
            expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
            assert torch.equal(target["boxes"], expected.reshape(-1, 4).float())
            assert target["labels"].tolist() == [LABELS[a["category_id"]] for a in anns]
            assert target["iscrowd"].tolist() == [a["iscrowd"] for a in anns]
            assert target["area"].tolist() == pytest.approx([a["area"] for a in anns])
            assert target["labels"].dtype == torch.int64 and type(target["boxes"]) is torch.Tensor


def test_training_leaves_out_crowds_and_images_without_a_box(
    shapes_root: Path, train_document: dict[str, Any]
) -> None:
    images = {i["id"] for i in train_document["images"]}
    crowds = [a for a in train_document["annotations"] if a["iscrowd"]]
    boxed = {a["image_id"] for a in train_document["annotations"] if not a["iscrowd"]}
    assert crowds and images - boxed  # the data set has both cases
    train = CocoDetection(*_train_paths(shapes_root), train=True)
    val = CocoDetection(*_train_paths(shapes_root), train=False)
    assert set(train.image_ids) == boxed and train.num_without_boxes == len(images - boxed)
    assert set(val.image_ids) == images and val.num_without_boxes == 0
    assert all(not t["iscrowd"].any() for _, t in (train[i] for i in range(len(train))))
    assert sum(int(t["iscrowd"].sum()) for _, t in (val[i] for i in range(len(val)))) == len(crowds)
    # The ground truth of evaluation keeps the crowds, of the training split too.
    for dataset in (train, val):
        gt_crowds = [a["id"] for a in dataset.ground_truth_document()["annotations"] if a["iscrowd"]]
        in_images = [a["id"] for a in crowds if a["image_id"] in set(dataset.image_ids)]
        assert sorted(gt_crowds) == sorted(in_images)
        assert len(dataset.coco.getAnnIds(iscrowd=True)) == len(in_images)


def test_flip_moves_boxes_with_the_pixels(shapes_root: Path) -> None:
    plain = CocoDetection(*_train_paths(shapes_root), train=True, flip_prob=0)
    flipped = CocoDetection(*_train_paths(shapes_root), train=True, flip_prob=1)
    for index in range(3):
        image, target = plain[index]
        image_f, target_f = flipped[index]
        assert torch.equal(image_f, image.flip(-1))
        x0, y0, x1, y1 = target["boxes"].unbind(1)
        assert torch.equal(target_f["boxes"], torch.stack([SIZE - x1, y0, SIZE - x0, y1], 1))
        assert torch.equal(target_f["labels"], target["labels"])
        for box, box_f in zip(target["boxes"].int().tolist(), target_f["boxes"].int().tolist(), strict=True):
            crop = image[:, box[1] : box[3], box[0] : box[2]]
            crop_f = image_f[:, box_f[1] : box_f[3], box_f[0] : box_f[2]]
            assert torch.equal(crop_f, crop.flip(-1))


def test_shapes_boxes_span_exactly_the_drawn_pixels() -> None:
    for kind in ("rectangle", "ellipse", "triangle"):
        for box in ((3, 4, 10, 7), (5, 5, 11, 12), (2, 3, 3, 5), (0, 0, 30, 30)):
            canvas = Image.new("L", (30, 30))
            _draw_shape(ImageDraw.Draw(canvas), kind, box, 255)
            ys, xs = np.nonzero(np.asarray(canvas))
            assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == box, kind


def test_shapes_are_deterministic_and_cli_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    a = make_shapes(tmp_path / "a", train=3, val=2, size=32, seed=5)
    assert (
        main(
            [
                "data",
                "shapes",
                str(tmp_path / "b"),
                "--train",
                "3",
                "--val",
                "2",
                "--size",
                "32",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 7
    assert all((a / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    document = json.loads((a / "annotations" / "instances_val2017.json").read_text())
    assert [c["id"] for c in document["categories"]] == [3, 7, 11]
    make_shapes(tmp_path / "c", train=3, val=2, size=32, seed=6)
    assert (tmp_path / "c/train2017/000000001000.png").read_bytes() != (
        a / "train2017/000000001000.png"
    ).read_bytes()
    before = (a / "annotations" / "instances_train2017.json").read_bytes()
    capsys.readouterr()
    assert main(["data", "shapes", str(a), "--seed", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (a / "annotations" / "instances_train2017.json").read_bytes() == before
    assert main(["data", "shapes", str(a), "--train", "2", "--val", "1", "--size", "32", "--overwrite"]) == 0


# ------------------------------------------------------------------------------------------ bad annotations


def _ann(index: int, **changes: Any):
    def edit(document: dict[str, Any]) -> None:
        document["annotations"][index].update(changes)

    return edit


def _image(index: int, **changes: Any):
    def edit(document: dict[str, Any]) -> None:
        document["images"][index].update(changes)
        for key, value in changes.items():
            if value is None:
                del document["images"][index][key]

    return edit


def _repeat_first_annotation_id(document: dict[str, Any]) -> None:
    document["annotations"][0]["id"] = document["annotations"][1]["id"]  # the second one is the repeat


# id, edit, the kind counted in ``skipped``, what the warning names ("ann 1": the edited annotation's id)
BAD = [
    (
        "box right of the image",
        _ann(1, bbox=[60.0, 10.0, 10.0, 10.0]),
        "annotations: boxes outside the image",
    ),
    ("box above the image", _ann(1, bbox=[10.0, -4.0, 10.0, 10.0]), "annotations: boxes outside the image"),
    ("zero width", _ann(1, bbox=[10.0, 10.0, 0.0, 5.0]), "annotations: boxes of zero or negative size"),
    ("negative height", _ann(1, bbox=[10.0, 10.0, 5.0, -3.0]), "annotations: boxes of zero or negative size"),
    ("three numbers", _ann(1, bbox=[10.0, 10.0, 5.0]), "annotations: malformed boxes"),
    ("not numbers", _ann(1, bbox=["10", 10, 5, 5]), "annotations: malformed boxes"),
    ("nan", _ann(1, bbox=[float("nan"), 10, 5, 5]), "annotations: malformed boxes"),
    ("unknown image id", _ann(1, image_id=424242), "annotations: unknown image ids"),
    ("unknown category id", _ann(1, category_id=1), "annotations: unknown category ids"),
    ("iscrowd 2", _ann(1, iscrowd=2), "annotations: malformed entries"),
    ("repeated annotation id", _repeat_first_annotation_id, "annotations: repeated ids"),
    ("missing image file", _image(2, file_name="nowhere.png"), "images: missing file"),
    ("image without width", _image(2, width=None), "images: malformed entries"),
]


@pytest.mark.parametrize("edit, kind", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_annotations_are_reported_skipped_counted_or_refused(
    shapes_root: Path,
    train_document: dict[str, Any],
    write_annotations: WriteAnnotations,
    caplog: pytest.LogCaptureFixture,
    edit,
    kind: str,
) -> None:
    path = write_annotations(edit)
    images = shapes_root / "train2017"
    if kind.startswith("images"):
        culprit = f"image {train_document['images'][2]['id']}"
        gone = {
            a["id"]
            for a in train_document["annotations"]
            if a["image_id"] == train_document["images"][2]["id"]
        }
    else:
        culprit = f"annotation {train_document['annotations'][1]['id']}"
        gone = {train_document["annotations"][1]["id"]}
    with caplog.at_level(logging.WARNING, logger="senet.detection"):
        dataset = CocoDetection(path, images, train=False)
    assert dict(dataset.skipped) == {kind: 1}
    # A box of no size or outside the image is left out of the targets only: evaluation scores the file's
    # annotations as pycocotools does (tests/peers/test_pycocotools.py), where it is an object nobody finds.
    target_only = kind.split(": ")[1] in TARGET_ONLY_PROBLEMS
    in_targets = {int(i) for e in dataset._entries for i in e.ann_ids}
    evaluated = dataset.ground_truth_document()["annotations"]
    kept = {a["id"] for a in evaluated}
    all_ids = {a["id"] for a in train_document["annotations"]}
    assert len(evaluated) == len(all_ids) - (0 if target_only else len(gone))
    if kind != "annotations: repeated ids":
        assert kept == (all_ids if target_only else all_ids - gone)
        assert in_targets == all_ids - gone
    assert len(dataset) == len(train_document["images"]) - kind.startswith("images")
    [warning] = [r.getMessage() for r in caplog.records]
    assert culprit in warning and kind.split(": ")[1] in warning and "--strict-data" in warning, warning
    assert ("evaluation scores them" in warning) == target_only, warning
    with pytest.raises(ValueError) as error:
        CocoDetection(path, images, train=False, strict=True)
    assert culprit in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_box_a_rounding_past_the_border_is_clipped_not_skipped(
    shapes_root: Path, write_annotations: WriteAnnotations
) -> None:
    path = write_annotations(_ann(0, bbox=[SIZE - 7.5, 10.0, 8.0, 5.0], image_id=1000, iscrowd=0))
    dataset = CocoDetection(path, shapes_root / "train2017", train=False, strict=True)
    target = dataset[dataset.image_ids.index(1000)][1]
    assert [SIZE - 7.5, 10.0, SIZE, 15.0] in target["boxes"].tolist()
    # The ground truth of evaluation keeps the file's box, as pycocotools reading the file would.
    assert [SIZE - 7.5, 10.0, 8.0, 5.0] in [a["bbox"] for a in dataset.ground_truth_document()["annotations"]]


def test_not_a_coco_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(tmp_path / "bad.json", tmp_path, train=True)
    (tmp_path / "list.json").write_text(
        json.dumps({"images": {}, "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    )
    with pytest.raises(ValueError, match="'images' must be a list"):
        CocoDetection(tmp_path / "list.json", tmp_path, train=True)


def test_unreadable_images_are_skipped_counted_or_refused(
    shapes_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    annotations, images = _train_paths(shapes_root)
    copy = tmp_path / "images"
    shutil.copytree(images, copy)
    dataset = CocoDetection(annotations, copy, train=True, flip_prob=0)
    (copy / dataset._entries[1].file_name).write_bytes(b"not a png")
    Image.new("RGB", (SIZE + 1, SIZE)).save(copy / dataset._entries[2].file_name)  # the file says 64x64
    with caplog.at_level(logging.WARNING, logger="senet.detection"):
        images_, targets, skipped = collate([dataset[i] for i in range(4)])
    assert skipped == 2 and [t["image_id"] for t in targets] == [dataset.image_ids[i] for i in (0, 3)]
    assert len(images_) == 2 and "the annotations say 64x64" in caplog.text
    strict = CocoDetection(annotations, copy, train=True, strict=True)
    for index in (1, 2):
        with pytest.raises(ValueError, match="--strict-data made this fatal"):
            strict[index]


def test_coco_datasets_share_the_category_mapping(shapes_root: Path) -> None:
    datasets = coco_datasets(shapes_root)
    assert datasets["train"].train and not datasets["val"].train
    assert datasets["train"].categories == datasets["val"].categories
    assert len(datasets["val"]) == 5 and len(datasets["train"]) == 19
