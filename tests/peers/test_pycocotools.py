"""Our detection metrics against pycocotools itself: ``COCOeval`` run directly on the annotation file as given
(``COCO(path)``, ``loadRes``), and ``senet.detection.coco_evaluate`` on a ``CocoDetection`` of the same file.

The file holds what real COCO files hold and a dataset might be tempted to clean: crowd regions (one image
with nothing but a crowd), images without any annotation, boxes of zero or negative size, boxes outside the
image, a box a rounding past the border, small, medium and large objects, and non-contiguous category ids.
Box coordinates are multiples of 1/4, so XYXY <-> XYWH conversions are exact on both sides.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from senet.detection.data import CocoDetection
from senet.detection.metrics import METRICS, coco_evaluate

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

WIDTH, HEIGHT = 160, 120
CATEGORIES = {2: "ring", 5: "square", 9: "star"}
LABELS = {2: 1, 5: 2, 9: 3}  # the detector's labels: category ids in increasing order -> 1..K

# image id -> its annotations (category id, [x, y, w, h], iscrowd); image 4 has none, image 5 only a crowd.
ANNOTATIONS: dict[int, list[tuple[int, list[float], int]]] = {
    1: [
        (2, [10, 10, 20, 15], 0),  # small (area < 32^2)
        (5, [40.5, 20.25, 40, 35], 0),  # medium
        (9, [30, 50, 0, 12], 0),  # zero width
        (9, [100, 10, 110, 40], 0),  # reaches 50 px past the right border
    ],
    2: [
        (9, [20, 10, 110, 100], 0),  # large (area > 96^2)
        (2, [60, 60, 30, -8], 0),  # negative height
        (2, [0, 0, 60, 50], 1),  # a crowd region
        (5, [WIDTH - 7.5, 30, 8, 10], 0),  # half a pixel past the border: a rounding, kept and clipped
    ],
    3: [
        (5, [200, 150, 10, 10], 0),  # entirely outside the image
        (5, [5, 70, 30, 30], 0),
        (2, [120, 80, 16, 16], 0),
        (2, [90, 20, 14, 12], 0),
    ],
    4: [],
    5: [(9, [10, 10, 100, 80], 1)],
    6: [
        (2, [50, 40, 24, 24], 0),
        (9, [70, 30, 64, 48], 0),
        (9, [-4, 60, 20, 20], 0),
    ],  # the last starts outside
}


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The annotation file and its image folder (real PNGs of the stated size)."""
    root = tmp_path_factory.mktemp("coco")
    images = root / "images"
    images.mkdir()
    document: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    document["categories"] = [{"id": i, "name": n} for i, n in CATEGORIES.items()]
    ann_id = 100
    for image_id, objects in ANNOTATIONS.items():
        name = f"{image_id:06d}.png"
        Image.new("RGB", (WIDTH, HEIGHT), (image_id * 30, 90, 160)).save(images / name)
        document["images"].append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT})
        for category, bbox, crowd in objects:
            ann_id += 7  # ids neither contiguous nor in step with the images
            area = float(bbox[2] * bbox[3])
            document["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": crowd,
                }  # fmt: skip
            )
    path = root / "instances.json"
    path.write_text(json.dumps(document))
    return path, images


Detections = dict[int, list[tuple[int, list[float], float]]]  # image id -> (category id, XYWH, score)


def _valid_boxes() -> Detections:
    """Each non-crowd box of the file that lies in its image and has a size, found exactly with score 1: what
    a dataset that dropped the others would call a perfect detector."""
    found: Detections = {}
    for image_id, objects in ANNOTATIONS.items():
        for category, (x, y, w, h), crowd in objects:
            if (
                not crowd
                and w > 0
                and h > 0
                and x >= -1
                and y >= -1
                and x + w <= WIDTH + 1
                and y + h <= HEIGHT + 1
            ):
                found.setdefault(image_id, []).append((category, [x, y, w, h], 1.0))
    return found


def _every_box() -> Detections:
    """Every box of the file, crowds and degenerate ones included, each found with its own score."""
    found: Detections = {}
    for image_id, objects in ANNOTATIONS.items():
        for k, (category, bbox, _) in enumerate(objects):
            found.setdefault(image_id, []).append((category, list(bbox), 1.0 - 0.1 * k))
    return found


def _noisy() -> Detections:
    """Jittered boxes with random scores, wrong categories, detections inside crowds and false positives."""
    rng = np.random.default_rng(0)
    found: Detections = {}
    for image_id, objects in ANNOTATIONS.items():
        for category, (x, y, w, h), _ in objects:
            for _ in range(rng.integers(0, 3)):
                jitter = rng.integers(-12, 13, 4) / 4  # multiples of 1/4: exact in float32 and float64
                wrong = rng.random() < 0.2
                label = list(CATEGORIES)[(list(CATEGORIES).index(category) + 1) % 3] if wrong else category
                box = [
                    x + jitter[0],
                    y + jitter[1],
                    max(1.0, abs(w) + jitter[2]),
                    max(1.0, abs(h) + jitter[3]),
                ]
                found.setdefault(image_id, []).append((label, box, float(np.float32(rng.random()))))
        for _ in range(rng.integers(0, 3)):  # false positives anywhere
            x, y = rng.integers(0, WIDTH - 20), rng.integers(0, HEIGHT - 20)
            box = [float(x), float(y), float(rng.integers(4, 60)), float(rng.integers(4, 50))]
            found.setdefault(image_id, []).append(
                (int(rng.choice(list(CATEGORIES))), box, float(np.float32(rng.random())))
            )
    found.setdefault(5, []).append((9, [20.0, 20.0, 30.0, 30.0], 0.99))  # inside image 5's crowd
    return found


def _as_outputs(detections: Detections) -> dict[int, dict[str, torch.Tensor]]:
    """What a detector returns: per image, XYXY float32 boxes, scores and contiguous labels."""
    outputs = {}
    for image_id, found in detections.items():
        xyxy = [[x, y, x + w, y + h] for _, (x, y, w, h), _ in found]
        outputs[image_id] = {
            "boxes": torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([score for *_, score in found], dtype=torch.float32),
            "labels": torch.tensor([LABELS[category] for category, *_ in found], dtype=torch.int64),
        }
    return outputs


def _pycocotools(annotation_file: Path, detections: Detections, image_ids: list[int] | None) -> list[float]:
    """COCOeval's 12 figures, pycocotools on its own: the file read by ``COCO``, results by ``loadRes``."""
    results = [
        {"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}
        for image_id, found in detections.items()
        for category, bbox, score in found
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(value) for value in evaluator.stats]


CASES = {"valid boxes": _valid_boxes, "every box": _every_box, "noisy": _noisy}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("image_ids", [None, [1, 2, 4, 5]], ids=["all images", "some images"])
def test_metrics_equal_cocoeval_on_the_file_as_given(coco_file, case, image_ids):
    annotation_file, images = coco_file
    detections = CASES[case]()
    expected = _pycocotools(annotation_file, detections, image_ids)
    dataset = CocoDetection(annotation_file, images, train=False)
    outputs = _as_outputs(detections)
    if image_ids is not None:
        outputs = {i: outputs[i] for i in image_ids if i in outputs}
    got = coco_evaluate(outputs, dataset, image_ids=image_ids)
    figures = [got[name] for name in METRICS]
    assert figures == pytest.approx(expected, abs=1e-12), dict(zip(METRICS, expected, strict=True))


def test_boxes_nobody_can_find_cost_recall_as_in_pycocotools(coco_file):
    """The issue's case, stated on its own: the valid boxes found exactly are not a perfect score, because the
    file also holds objects of no size or outside the image, which pycocotools counts as missed."""
    annotation_file, images = coco_file
    got = coco_evaluate(_as_outputs(_valid_boxes()), CocoDetection(annotation_file, images, train=False))
    assert got["AP"] == pytest.approx(_pycocotools(annotation_file, _valid_boxes(), None)[0], abs=1e-12)
    assert 0 < got["AP"] < 1 and got["AR100"] < 1


def test_training_still_learns_only_from_boxes_it_can_use(coco_file):
    annotation_file, images = coco_file
    train = CocoDetection(annotation_file, images, train=True, flip_prob=0)
    boxes = torch.cat([train[i][1]["boxes"] for i in range(len(train))])
    assert (boxes[:, 2:] > boxes[:, :2]).all()  # every target box has a size
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= WIDTH).all() and (boxes[:, 1::2] <= HEIGHT).all()
    assert len(boxes) == sum(len(found) for found in _valid_boxes().values())
    assert train.image_ids == [1, 2, 3, 6]  # no box to learn from in 4 (empty) and 5 (a crowd only)


def test_a_file_without_annotations_gives_cocoevals_figures(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (WIDTH, HEIGHT)).save(images / "a.png")
    document = {
        "images": [{"id": 1, "file_name": "a.png", "width": WIDTH, "height": HEIGHT}],
        "annotations": [],
        "categories": [{"id": i, "name": n} for i, n in CATEGORIES.items()],
    }
    (tmp_path / "empty.json").write_text(json.dumps(document))
    detections = {1: [(2, [10.0, 10.0, 20.0, 20.0], 0.5)]}
    expected = _pycocotools(tmp_path / "empty.json", detections, None)
    got = coco_evaluate(_as_outputs(detections), CocoDetection(tmp_path / "empty.json", images, train=False))
    assert [got[name] for name in METRICS] == pytest.approx(expected, abs=1e-12) and expected[0] == -1.0
