"""``predict``: the objects a trained detector finds in image files (``senet detect predict``).

Images are decoded by classification's :func:`senet.deploy.predict.load_image` (EXIF orientation applied,
transparency, palettes, CMYK and 16-bit images converted; a file that does not decode is reported by path and
the others go on). The detector resizes and normalises each image itself and returns boxes in the image's own
pixels; those above ``score_threshold`` after per-category NMS at ``nms_threshold`` IoU, at most
``max_detections`` per image, are returned with their category's name and COCO id, and -- with ``output`` --
drawn with their labels and scores onto a PNG copy of the image (``torchvision.utils.draw_bounding_boxes``).
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from senet.deploy.predict import UnreadableImageError, expand_inputs, load_image
from senet.detection.data import CategoryMap
from senet.detection.engine import load_detector
from senet.fileio import atomic_write
from senet.runtime import resolve_device


@dataclass(frozen=True)
class Detection:
    """One object: its category (name and COCO id), score and box (x1, y1, x2, y2 in the image's pixels)."""

    category: str
    category_id: int
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageDetections:
    """An input file's detections, most confident first, and the PNG they were drawn on; or why it failed."""

    path: str
    detections: list[Detection] = field(default_factory=list)
    drawn: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def records(self) -> list[dict[str, Any]]:
        """One JSON record per detection (``senet detect predict``'s lines)."""
        return [
            {
                "image": self.path,
                "category": d.category,
                "category_id": d.category_id,
                "score": round(d.score, 5),
                "box": [round(v, 2) for v in d.box],
            }
            for d in self.detections
        ]


def predict(
    source: str | Path,
    inputs: str | Path | Iterable[str | Path],
    *,
    output: str | Path | None = None,
    score_threshold: float = 0.5,
    nms_threshold: float = 0.5,
    max_detections: int = 100,
    device: str = "auto",
    weights: str = "last",
) -> Iterator[ImageDetections]:
    """The detections of each image in ``inputs``, streamed in input order.

    Args:
        source: a run directory of ``senet detect train`` (or one of its ``checkpoint-*.json``).
        inputs: image files and directories (searched recursively, sorted).
        output: a folder for the drawn PNGs (``<image stem>.png``; made if missing); None: none drawn.
        score_threshold: keep detections scoring at least this, in [0, 1].
        nms_threshold: per-category non-maximum suppression at this IoU, in (0, 1].
        max_detections: at most this many per image, the most confident.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        weights: the run's newest checkpoint (``last``) or its best epoch (``best``).

    Problems of the run or the arguments raise at the call, before any image is read; an image that cannot
    be read gives an :class:`ImageDetections` with its ``error``, and the others go on.
    """

    for name, value, low, high in (
        ("score_threshold", score_threshold, 0.0, 1.0),
        ("nms_threshold", nms_threshold, 0.0, 1.0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    if nms_threshold == 0:
        raise ValueError("nms_threshold must be > 0 (an IoU above which the weaker box is dropped)")
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
        raise ValueError(f"max_detections must be an integer >= 1, got {max_detections!r}")
    out = Path(output) if output is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; give a folder for the drawn images")
    detector, categories, _ = load_detector(source, weights)
    detector.roi_heads.score_thresh = float(score_threshold)
    detector.roi_heads.nms_thresh = float(nms_threshold)
    detector.roi_heads.detections_per_img = max_detections
    target = resolve_device(device)
    files, _ = expand_inputs([inputs] if isinstance(inputs, (str, Path)) else inputs)
    return _run(detector.to(target).eval(), categories, files, out, target)


def _run(
    detector: torch.nn.Module,
    categories: CategoryMap,
    files: list[tuple[str, str | None]],
    output: Path | None,
    device: torch.device,
) -> Iterator[ImageDetections]:
    colors = _palette(categories.num_classes)
    used: set[str] = set()
    for path, problem in files:
        if problem is not None:
            yield ImageDetections(path, error=problem)
            continue
        try:
            image = load_image(path, 3)
        except UnreadableImageError as error:
            yield ImageDetections(path, error=error.cause)
            continue
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # uint8 (3, H, W)
        with torch.no_grad():
            found = detector([pixels.to(device).float().div(255)])[0]
        boxes, scores = found["boxes"].float().cpu(), found["scores"].float().cpu()
        labels = found["labels"].cpu().tolist()
        detections = [
            Detection(
                categories.name(label),
                categories.coco_id(label),
                float(score),
                tuple(box),  # type: ignore[arg-type]
            )
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels, strict=True)
        ]
        drawn = None
        if output is not None:
            picture = pixels
            if detections:
                picture = draw_bounding_boxes(
                    pixels,
                    boxes,
                    labels=[f"{d.category} {d.score:.2f}" for d in detections],
                    colors=[colors[label - 1] for label in labels],
                    width=max(1, round(min(pixels.shape[1:]) / 300)),
                    fill_labels=True,
                )
            drawn = str(_save_png(picture, output, Path(path).stem, used))
        yield ImageDetections(path, detections, drawn)


def _save_png(picture: torch.Tensor, folder: Path, stem: str, used: set[str]) -> Path:
    """``folder/<stem>.png``, ``<stem>-2.png``, ... (two inputs of one name in different folders keep
    both)."""
    name, number = f"{stem}.png", 1
    while name in used:
        number += 1
        name = f"{stem}-{number}.png"
    used.add(name)
    path = folder / name
    array = picture.permute(1, 2, 0).numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), suffix=".png")
    return path


def _palette(count: int) -> list[tuple[int, int, int]]:
    """One distinct, saturated colour per category (hues evenly spaced)."""
    hues = [colorsys.hsv_to_rgb(k / max(count, 1), 0.85, 0.95) for k in range(count)]
    return [(round(255 * r), round(255 * g), round(255 * b)) for r, g, b in hues]
