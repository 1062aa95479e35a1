"""A small COCO-format detection data set of drawn shapes, to try detection offline and to test it.

``make_shapes(root, train=64, val=16, size=128, seed=0)`` writes COCO's own layout::

    ROOT/annotations/instances_train2017.json   ROOT/train2017/000000001000.png ...
    ROOT/annotations/instances_val2017.json     ROOT/val2017/000000100000.png ...

Each image is a noisy background with 1-4 filled rectangles, ellipses and triangles of random colours; their
boxes are exact (the drawn pixels span exactly the box). Category ids are COCO-like, i.e. not contiguous
(:data:`CATEGORIES`: 3, 7, 11), and so are image ids, so a wrong label mapping cannot go unnoticed. Some
images also hold a crowd: a cluster of tiny shapes of one category, annotated as one ``iscrowd=1`` box as COCO
does, and a few hold nothing but a crowd (training skips them). The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 3, "name": "rectangle", "supercategory": "shape"},
    {"id": 7, "name": "ellipse", "supercategory": "shape"},
    {"id": 11, "name": "triangle", "supercategory": "shape"},
)
SPLITS = {"train": 1000, "val": 100000}  # the first image id of each split
FORMATS = ("png", "jpg")


def make_shapes(
    root: str | Path,
    *,
    train: int = 64,
    val: int = 16,
    size: int = 128,
    seed: int = 0,
    image_format: str = "png",
    crowd_every: int = 5,
    overwrite: bool = False,
) -> Path:
    """Write the shapes data set into ``root`` (see the module doc); returns ``root``.

    Args:
        train, val: images per split (>= 1).
        size: the images' side in pixels (32..4096); each image is square.
        seed: the same seed gives the same files.
        image_format: ``png`` (exact pixels) or ``jpg``.
        crowd_every: every n-th image holds a crowd region (0: none); every 4n-th holds only a crowd.
        overwrite: replace the annotation files of a data set already in ``root`` (refused otherwise, before
            anything is written: ``root`` may hold a real COCO copy).
    """
    checks = {
        "train": (train, isinstance(train, int) and train >= 1, "an integer >= 1"),
        "val": (val, isinstance(val, int) and val >= 1, "an integer >= 1"),
        "size": (size, isinstance(size, int) and 32 <= size <= 4096, "an integer in 32..4096"),
        "seed": (seed, isinstance(seed, int) and seed >= 0, "an integer >= 0"),
        "image_format": (image_format, image_format in FORMATS, f"one of {', '.join(FORMATS)}"),
        "crowd_every": (crowd_every, isinstance(crowd_every, int) and crowd_every >= 0, "an integer >= 0"),
    }
    for name, (value, ok, valid) in checks.items():
        if not ok:
            raise ValueError(f"shapes data set: {name}={value!r} is not valid; use {valid}")
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"shapes data set: {root} is a file; give a folder")
    existing = sorted((root / "annotations").glob("instances_*2017.json")) if root.is_dir() else []
    if existing and not overwrite:
        raise ValueError(
            f"shapes data set: {existing[0]} exists; choose another folder, or pass --overwrite to replace it"
        )
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("val", val)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, list(SPLITS).index(split)]))
        folder = root / f"{split}2017"
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for k in range(count):
            image_id = SPLITS[split] + k
            crowd = crowd_every > 0 and k % crowd_every == crowd_every - 1
            only_crowd = crowd and k % (4 * crowd_every) == 4 * crowd_every - 1
            picture, objects = _draw_image(rng, size, crowd=crowd, objects=not only_crowd)
            name = f"{image_id:012d}.{image_format}"
            picture.save(folder / name, **({"quality": 95} if image_format == "jpg" else {}))
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            for obj in objects:
                x, y, w, h = obj["bbox"]
                annotations.append(
                    {
                        "id": len(annotations) + 1 + SPLITS[split] * 10,
                        "image_id": image_id,
                        "category_id": obj["category_id"],
                        "bbox": [float(x), float(y), float(w), float(h)],
                        "area": float(obj["area"]),
                        "iscrowd": int(obj["iscrowd"]),
                        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    }
                )
        document = {
            "info": {"description": f"senet shapes ({split}, seed {seed})", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in CATEGORIES],
        }
        path = root / "annotations" / f"instances_{split}2017.json"
        path.write_text(json.dumps(document, indent=1) + "\n")
    return root


def _draw_image(
    rng: np.random.Generator, size: int, *, crowd: bool, objects: bool
) -> tuple[Image.Image, list[dict[str, Any]]]:
    base = rng.integers(40, 216, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(picture)
    placed: list[dict[str, Any]] = []
    boxes: list[tuple[int, int, int, int]] = []
    if crowd:  # a cluster of tiny shapes of one category, annotated once as a crowd (as COCO does)
        side = int(rng.integers(size // 5, size // 3))
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        tiny = max(3, size // 32)
        for _ in range(int(rng.integers(4, 9))):
            tx, ty = (int(v) for v in rng.integers(0, side - tiny, 2))
            _draw_shape(draw, category["name"], (x0 + tx, y0 + ty, tiny, tiny), _colour(rng, base))
        placed.append(
            {"category_id": category["id"], "bbox": (x0, y0, side, side), "area": side * side, "iscrowd": 1}
        )
        boxes.append((x0, y0, side, side))
    for _ in range(int(rng.integers(1, 5)) if objects else 0):
        for _attempt in range(20):  # a place that overlaps nothing drawn so far: every box stays exact
            w, h = (int(v) for v in rng.integers(size // 7, size // 2, 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if not any(_overlap((x, y, w, h), other) for other in boxes):
                break
        else:
            continue
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        area = _draw_shape(draw, category["name"], (x, y, w, h), _colour(rng, base))
        placed.append({"category_id": category["id"], "bbox": (x, y, w, h), "area": area, "iscrowd": 0})
        boxes.append((x, y, w, h))
    return picture, placed


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: tuple) -> float:
    """Fill ``kind`` so that its pixels span exactly ``box`` (x, y, w, h: columns x..x+w-1); its area."""
    x, y, w, h = box
    x1, y1 = x + w - 1, y + h - 1  # PIL's coordinates are inclusive
    if kind == "rectangle":
        draw.rectangle((x, y, x1, y1), fill=colour)
        return float(w * h)
    if kind == "ellipse":
        draw.ellipse((x, y, x1, y1), fill=colour)
        return math.pi * w * h / 4
    draw.polygon(((x, y1), (x1, y1), (x + (w - 1) // 2, y), (x + w // 2, y)), fill=colour)
    return w * h / 2


def _colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A colour far enough from the background to be seen."""
    while True:
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background).sum() > 150:
            return tuple(int(c) for c in colour)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether boxes (x, y, w, h) share a pixel, or touch (a gap of one pixel keeps shapes apart)."""
    return a[0] <= b[0] + b[2] and b[0] <= a[0] + a[2] and a[1] <= b[1] + b[3] and b[1] <= a[1] + a[3]
