"""COCO's box metrics through pycocotools' own ``COCOeval`` (never a hand-written mAP).

``coco_evaluate(predictions, ground_truth)`` takes a detector's outputs (torchvision's: per image ``boxes``
XYXY in pixels, ``scores``, contiguous ``labels``), maps each label back to its COCO category id, converts
boxes to COCO's XYWH, and returns ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs`` / ``APm`` / ``APl`` and
the average recalls ``AR1`` / ``AR10`` / ``AR100`` / ``ARs`` / ``ARm`` / ``ARl`` as floats (COCOeval's -1
where the ground truth has nothing of that size). Crowd ground truth boxes are COCO's: a detection that
matches one neither counts nor costs. The ground truth of a :class:`~senet.detection.data.CocoDetection` is
its annotation file as pycocotools reads it: a box the training targets leave out (of no size, or outside the
image) is still an object to find, so the figures equal ``COCOeval`` run on the file itself
(tests/peers/test_pycocotools.py).
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any, Iterable, Mapping

import torch

from senet.detection.data import CategoryMap, CocoDetection

METRICS: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)

Prediction = Mapping[str, torch.Tensor]


def coco_evaluate(
    predictions: Mapping[int, Prediction] | Iterable[tuple[int, Prediction]],
    ground_truth: CocoDetection | Any,
    *,
    categories: CategoryMap | None = None,
    image_ids: Iterable[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO box metrics of ``predictions`` against ``ground_truth``.

    Args:
        predictions: image id -> a detector's output for that image (``boxes`` (N, 4) XYXY, ``scores`` (N,),
            ``labels`` (N,) in 1..K), as a mapping or (id, output) pairs. An image without an entry has no
            detections.
        ground_truth: a :class:`~senet.detection.data.CocoDetection` (its ``coco`` and ``categories``), or a
            ``pycocotools.coco.COCO`` (then its categories in increasing id order give the labels, unless
            ``categories`` is given).
        categories: the label mapping, when ``ground_truth`` is a bare COCO object.
        image_ids: evaluate on these images only (default: every image of the ground truth; images the
            detector was not run on would count as missed).
        verbose: print pycocotools' own summary (to stderr); quiet otherwise.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("COCO evaluation needs pycocotools: pip install 'senet[detection]'") from error
    if isinstance(ground_truth, CocoDetection):
        categories = categories or ground_truth.categories
        coco = ground_truth.coco
    else:
        coco = ground_truth
        if categories is None:
            categories = CategoryMap.from_coco(coco.loadCats(coco.getCatIds()), "ground truth")
    known = set(coco.getImgIds())
    items = predictions.items() if isinstance(predictions, Mapping) else predictions
    results = []
    for image_id, output in items:
        image_id = int(image_id)
        if image_id not in known:
            raise ValueError(f"prediction for image {image_id}, which the ground truth does not hold")
        results.extend(_detections(image_id, output, categories))
    for number, result in enumerate(results, 1):
        result["id"] = number  # COCOeval matches detections by id
    chosen = sorted(known) if image_ids is None else sorted(int(i) for i in image_ids)
    if unknown := set(chosen) - known:
        raise ValueError(f"image_ids {sorted(unknown)[:5]} are not in the ground truth")
    out = sys.stderr if verbose else io.StringIO()
    with contextlib.redirect_stdout(out):
        detections = COCO()
        detections.dataset = {
            "images": [dict(i) for i in coco.dataset["images"]],
            "categories": [dict(c) for c in coco.dataset["categories"]],
            "annotations": results,
        }
        detections.createIndex()  # what COCO.loadRes does, which refuses an empty list
        evaluator = COCOeval(coco, detections, iouType="bbox")
        evaluator.params.imgIds = chosen
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRICS, evaluator.stats, strict=True)}


def _detections(image_id: int, output: Prediction, categories: CategoryMap) -> list[dict[str, Any]]:
    boxes = torch.as_tensor(output["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
    scores = torch.as_tensor(output["scores"]).detach().to("cpu", torch.float64).reshape(-1)
    labels = torch.as_tensor(output["labels"]).detach().to("cpu").reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; "
            "need one each"
        )
    if len(labels) and not (1 <= int(labels.min()) and int(labels.max()) <= categories.num_classes):
        raise ValueError(
            f"image {image_id}: labels {sorted(set(labels.tolist()))[:5]} "
            f"outside 1..{categories.num_classes} "
            "(0 is the background; the detector has another class count than the data)"
        )
    coco_ids = torch.tensor(categories.coco_ids)[labels - 1] if len(labels) else labels
    wh = boxes[:, 2:] - boxes[:, :2]
    return [
        {
            "id": 0,  # numbered below
            "image_id": image_id,
            "category_id": int(cid),
            "bbox": [float(x), float(y), float(w), float(h)],
            "score": float(score),
            "area": float(w * h),
            "iscrowd": 0,
        }
        for (x, y), (w, h), score, cid in zip(
            boxes[:, :2].tolist(), wh.tolist(), scores.tolist(), coco_ids.tolist(), strict=True
        )
    ]
