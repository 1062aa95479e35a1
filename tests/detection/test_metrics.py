"""COCO metrics through pycocotools: perfect detections, a wrong label mapping, a case worked out by hand."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from senet.detection.data import CategoryMap, CocoDetection
from senet.detection.metrics import METRICS, coco_evaluate

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def val(shapes_root: Path) -> CocoDetection:
    return CocoDetection(
        shapes_root / "annotations/instances_train2017.json", shapes_root / "train2017", train=False
    )


def _ground_truth_as_predictions(root: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Every non-crowd box of the annotation file (read from the file, not through the dataset), score 1,
    labels from the categories' increasing ids."""
    document = json.loads((root / "annotations/instances_train2017.json").read_text())
    labels = {cid: i + 1 for i, cid in enumerate(sorted(c["id"] for c in document["categories"]))}
    found: dict[int, dict[str, list]] = {
        i["id"]: {"boxes": [], "labels": [], "scores": []} for i in document["images"]
    }
    for ann in document["annotations"]:
        if not ann["iscrowd"]:
            x, y, w, h = ann["bbox"]
            found[ann["image_id"]]["boxes"].append([x, y, x + w, y + h])
            found[ann["image_id"]]["labels"].append(labels[ann["category_id"]])
            found[ann["image_id"]]["scores"].append(1.0)
    return {
        image_id: {
            "boxes": torch.tensor(p["boxes"]).reshape(-1, 4),
            **{k: torch.tensor(p[k]) for k in ("labels", "scores")},
        }
        for image_id, p in found.items()
    }


def test_ground_truth_as_predictions_scores_one(
    shapes_root: Path, val: CocoDetection, capsys: pytest.CaptureFixture
) -> None:
    metrics = coco_evaluate(_ground_truth_as_predictions(shapes_root), val)
    assert list(metrics) == list(METRICS) and all(isinstance(v, float) for v in metrics.values())
    assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == metrics["AR100"] == 1.0
    assert metrics["APs"] == 1.0 and metrics["APl"] == -1.0  # 64 px images: no large object
    assert capsys.readouterr() == ("", "")  # pycocotools' prints silenced
    coco_evaluate(_ground_truth_as_predictions(shapes_root), val, verbose=True)
    assert "Average Precision" in capsys.readouterr().err


def test_a_wrong_label_mapping_gives_a_near_zero_ap(shapes_root: Path, val: CocoDetection) -> None:
    predictions = _ground_truth_as_predictions(shapes_root)
    shifted = {i: {**p, "labels": p["labels"] % 3 + 1} for i, p in predictions.items()}  # 1->2, 2->3, 3->1
    assert coco_evaluate(shifted, val)["AP"] < 0.05
    # COCO's ids given as labels (the mapping forgotten) are refused rather than scored.
    raw = {
        i: {**p, "labels": torch.tensor([val.categories.coco_id(int(v)) for v in p["labels"]])}
        for i, p in predictions.items()
    }
    with pytest.raises(ValueError, match="outside 1..3"):
        coco_evaluate(raw, val)


def _coco(annotations: list[dict]) -> object:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {
        "images": [{"id": 5, "file_name": "a.png", "width": 100, "height": 100}],
        "categories": [{"id": 9, "name": "thing"}, {"id": 2, "name": "other"}],
        "annotations": [
            {"id": k + 1, "image_id": 5, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, **a}
            for k, a in enumerate(annotations)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_a_case_worked_out_by_hand() -> None:
    # Category 9 is label 2 (ids in increasing order: 2 -> 1, 9 -> 2). Two objects; the first found exactly,
    # the second by a box of IoU 100/160 = 0.625 ([0, 0, 10, 10] in [0, 0, 16, 10]); a detection inside a
    # crowd region, scored highest, neither counts nor costs.
    gt = _coco(
        [
            {"bbox": [50, 50, 20, 20], "category_id": 9},
            {"bbox": [0, 0, 16, 10], "category_id": 9},
            {"bbox": [70, 0, 30, 30], "category_id": 9, "iscrowd": 1},
        ]
    )
    predictions = {
        5: {
            "boxes": torch.tensor([[75.0, 5, 85, 15], [50, 50, 70, 70], [0, 0, 10, 10]]),
            "scores": torch.tensor([0.99, 0.9, 0.8]),
            "labels": torch.tensor([2, 2, 2]),
        }
    }
    metrics = coco_evaluate(predictions, gt)
    # IoU thresholds .50, .55, .60: both found, precision 1 at every recall: AP 1. From .65 on: only the
    # first; the second detection is a false positive after it, so precision is 1 up to recall 0.5 and there
    # is no higher recall: 51 of COCO's 101 recall points.
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(51 / 101)
    assert metrics["AP"] == pytest.approx((3 * 1.0 + 7 * 51 / 101) / 10)
    assert metrics["APs"] == pytest.approx(metrics["AP"]) and metrics["APm"] == metrics["APl"] == -1.0
    # The same detections labelled 1 (category 2, which has no object) find nothing.
    wrong = {5: {**predictions[5], "labels": torch.tensor([1, 1, 1])}}
    assert coco_evaluate(wrong, gt)["AP"] == 0.0
    # A mapping given explicitly is the one used: with only category 9, label 1 is category 9.
    only_nine = {5: {**predictions[5], "labels": torch.tensor([1, 1, 1])}}
    mapping = CategoryMap((9,), ("thing",))
    assert coco_evaluate(only_nine, gt, categories=mapping)["AP"] == pytest.approx(metrics["AP"])


def test_no_detections_and_bad_predictions(val: CocoDetection) -> None:
    assert coco_evaluate({}, val)["AP"] == 0.0
    one = val.image_ids[0]
    with pytest.raises(ValueError, match="ground truth does not hold"):
        coco_evaluate(
            {123456789: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}}, val
        )
    with pytest.raises(ValueError, match="need one each"):
        coco_evaluate(
            {one: {"boxes": torch.zeros(2, 4), "scores": torch.zeros(1), "labels": torch.ones(2)}}, val
        )
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate({}, val, image_ids=[123456789])


def test_image_ids_restrict_the_evaluation(shapes_root: Path, val: CocoDetection) -> None:
    predictions = _ground_truth_as_predictions(shapes_root)
    some = val.image_ids[:3]
    only = {i: predictions[i] for i in some}
    assert coco_evaluate(only, val, image_ids=some)["AP"] == 1.0
    assert coco_evaluate(only, val)["AR100"] < 1.0  # the other images' objects count as missed
