"""COCO-format detection data: paths, the category mapping, a checked dataset, and its collate.

* :func:`resolve_coco_paths`: ``--data ROOT`` in COCO's own layout
  (``ROOT/annotations/instances_train2017.json``, ``ROOT/train2017/``, the same for val) or explicit
  annotation files and image folders; one line per missing file.
* :class:`CategoryMap`: COCO's category ids are not contiguous (1..90 with gaps); the detector's labels are
  1..K in the order of increasing id, 0 being the background, as torchvision's detectors expect.
  ``coco_id(label)`` maps back for evaluation: a wrong mapping gives a near-zero AP without any error.
* :class:`CocoDetection`: item i is ``(image, target)``, the image a float tensor (3, H, W) in [0, 1] and the
  target ``{"boxes": (N, 4) float XYXY in pixels, "labels": (N,) int64 in 1..K, "image_id": int,
  "iscrowd": (N,) int64, "area": (N,) float}``. Annotations are checked once, when the dataset is built:
  malformed ones (an unknown image or category id, a bbox that is not 4 finite numbers, an image entry without
  its file...) are skipped, counted in ``skipped`` and reported in one warning per kind, naming their ids;
  under ``strict`` the first one is a one-line ``ValueError``. A box outside the image or of zero or negative
  size is counted and reported the same way but left out of the targets only (:data:`TARGET_ONLY_PROBLEMS`):
  the ground truth of evaluation is the file's, as pycocotools reads it, where such a box is an object no
  detector finds. As COCO's detectors do, the training split leaves out images without a non-crowd box and
  gives the loss no crowd box; the validation split keeps every image and its crowd boxes (flagged in
  ``iscrowd``), and :attr:`CocoDetection.coco` -- the ground truth of evaluation
  (:func:`senet.detection.metrics.coco_evaluate`) -- holds every annotation of its images that pycocotools can
  read, in the file's order, crowds included. Training images are flipped horizontally (boxes with them)
  through torchvision's transforms v2; resizing is the detector's own transform's work, not the dataset's.
* :func:`collate`: ``(list of images, list of targets, number skipped)`` -- images differ in size; an item
  that could not be read (None) is dropped and counted, as ``senet.data.loaders`` does for classification.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from senet.data.folders import DECODE_ERRORS

_LOG = logging.getLogger("senet.detection")

SPLITS = ("train", "val")
COCO_LAYOUT = "ROOT/annotations/instances_{split}2017.json and ROOT/{split}2017/"
BOX_TOLERANCE = 1.0  # pixels a box may reach past the image's border (rounding in COCO's files); then clipped
# Boxes a detector cannot learn from: left out of the targets, but scored in evaluation as pycocotools does.
TARGET_ONLY_PROBLEMS = ("boxes of zero or negative size", "boxes outside the image")
_EXAMPLES = 3  # ids named per kind of problem in a warning

Target = dict[str, Any]


# ------------------------------------------------------------------------------------------------------ paths


@dataclass(frozen=True)
class CocoSplit:
    """One split's annotation file and image folder."""

    annotations: Path
    images: Path


def resolve_coco_paths(
    data: str | Path | None = None,
    *,
    train_ann: str | Path | None = None,
    train_images: str | Path | None = None,
    val_ann: str | Path | None = None,
    val_images: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
) -> dict[str, CocoSplit]:
    """The annotation file and image folder of each of ``splits``: explicit paths where given, else ``data``'s
    COCO layout (:data:`COCO_LAYOUT`). Each must exist; the first that does not is a one-line ``ValueError``
    naming it and the flags that give it."""
    explicit = {"train": (train_ann, train_images), "val": (val_ann, val_images)}
    root = Path(data).expanduser() if data is not None else None
    if root is not None and not root.is_dir():
        raise ValueError(
            f"--data {data}: no such directory; expected COCO's layout {COCO_LAYOUT.format(split='train')}"
        )
    resolved = {}
    for split in splits:
        if split not in explicit:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        flags = f"--{split}-ann FILE --{split}-images DIR"
        paths = []
        for given, kind, default in zip(
            explicit[split],
            ("ann", "images"),
            (f"annotations/instances_{split}2017.json", f"{split}2017"),
            strict=True,
        ):
            if given is not None:
                path, origin = Path(given).expanduser(), f"--{split}-{kind} {given}"
            elif root is not None:
                path, origin = root / default, f"--data {data}: {default}"
            else:
                raise ValueError(
                    f"no {split} {'annotations' if kind == 'ann' else 'images'}: give --data ROOT "
                    f"(COCO's layout: {COCO_LAYOUT.format(split=split)}) or {flags}"
                )
            exists = path.is_file() if kind == "ann" else path.is_dir()
            if not exists:
                what = "file" if kind == "ann" else "directory"
                hint = (
                    f" (COCO's layout: {COCO_LAYOUT.format(split=split)}; or give {flags})"
                    if given is None
                    else ""
                )
                raise ValueError(f"{origin}: no such {what}{hint}")
            paths.append(path)
        resolved[split] = CocoSplit(*paths)
    return resolved


# --------------------------------------------------------------------------------------------- categories


@dataclass(frozen=True)
class CategoryMap:
    """COCO category ids <-> the detector's contiguous labels: label ``i`` (1..K) is ``coco_ids[i - 1]``, ids
    in increasing order; label 0 is the background."""

    coco_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.coco_ids) != len(self.names) or not self.coco_ids:
            raise ValueError(
                f"categories: {len(self.coco_ids)} ids for {len(self.names)} names; need >= 1 each"
            )
        if list(self.coco_ids) != sorted(set(self.coco_ids)):
            raise ValueError(f"categories: ids {list(self.coco_ids)} must be distinct and increasing")

    @classmethod
    def from_coco(cls, categories: object, origin: str = "annotations") -> "CategoryMap":
        """From a COCO file's ``categories`` list; a malformed or repeated entry is a one-line ``ValueError``
        (every label would shift: nothing can be skipped here)."""
        if not isinstance(categories, list) or not categories:
            raise ValueError(f"{origin}: 'categories' must be a non-empty list of {{'id', 'name'}}")
        seen: dict[int, str] = {}
        for entry in categories:
            cid = entry.get("id") if isinstance(entry, dict) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            if not _is_int(cid) or not isinstance(name, str):
                raise ValueError(f"{origin}: category {entry!r} needs an integer 'id' and a string 'name'")
            if cid in seen:
                raise ValueError(f"{origin}: category id {cid} appears twice ({seen[cid]!r}, {name!r})")
            seen[cid] = name
        ids = tuple(sorted(seen))
        return cls(ids, tuple(seen[i] for i in ids))

    @property
    def num_classes(self) -> int:
        """K, the object categories (the background not counted)."""
        return len(self.coco_ids)

    def __len__(self) -> int:
        return len(self.coco_ids)

    def label(self, coco_id: int) -> int:
        """The contiguous label (1..K) of a COCO category id; an unknown id is a ``ValueError``."""
        if coco_id not in self.coco_ids:
            raise ValueError(f"category id {coco_id!r} is not one of {', '.join(map(str, self.coco_ids))}")
        return self.coco_ids.index(coco_id) + 1

    def coco_id(self, label: int) -> int:
        """The COCO category id of a label (1..K); anything else is a ``ValueError``."""
        if not _is_int(label) or not 1 <= label <= len(self.coco_ids):
            raise ValueError(f"label {label!r} is not a category label; labels are 1..{len(self.coco_ids)}")
        return self.coco_ids[label - 1]

    def name(self, label: int) -> str:
        return self.names[self.coco_ids.index(self.coco_id(label))]

    def _labels(self) -> dict[int, int]:
        return {cid: i + 1 for i, cid in enumerate(self.coco_ids)}

    def as_dict(self) -> dict[str, list]:
        return {"coco_ids": list(self.coco_ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> "CategoryMap":
        return cls(tuple(data["coco_ids"]), tuple(data["names"]))


# ------------------------------------------------------------------------------------------------ dataset


@dataclass
class _Entry:
    """One image and the annotations of its targets, boxes as in the file (x, y, width, height; float64 holds
    JSON's numbers exactly), clipped when a target is made (the ground truth of evaluation keeps the
    file's)."""

    image_id: int
    file_name: str
    width: int
    height: int
    ann_ids: np.ndarray
    xywh: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray

    def boxes(self) -> torch.Tensor:
        """XYXY, clipped to the image (a box may reach past it by ``BOX_TOLERANCE``)."""
        xyxy = np.concatenate([self.xywh[:, :2], self.xywh[:, :2] + self.xywh[:, 2:]], axis=1)
        limits = np.array([self.width, self.height] * 2, dtype=np.float64)
        return torch.from_numpy(np.clip(xyxy, 0, limits).astype(np.float32))


class CocoDetection(Dataset):
    """A COCO-format split with its annotations checked (see the module doc).

    Args:
        annotations: the COCO json file (``instances_*.json``).
        images: the folder of its images (``file_name`` is relative to it).
        train: the training split: images without a non-crowd box left out, crowd boxes not in the targets,
            horizontal flips. Otherwise every image, crowd boxes kept (``iscrowd`` 1), no augmentation.
        strict: the first malformed annotation, image entry or unreadable image is a ``ValueError`` rather
            than skipped (``--strict-data``).
        categories: the training split's :class:`CategoryMap`: this file's categories must be the same
            (else the labels of the two splits would mean different things).
        flip_prob: probability of the horizontal flip (training; default 0.5, 0 for none).
        transforms: a torchvision transforms v2 callable ``(image, target) -> (image, target)`` used instead
            of the flip; it sees a ``tv_tensors.Image`` (uint8) and ``tv_tensors.BoundingBoxes``.
    """

    def __init__(
        self,
        annotations: str | Path,
        images: str | Path,
        *,
        train: bool,
        strict: bool = False,
        categories: CategoryMap | None = None,
        flip_prob: float = 0.5,
        transforms: Callable[..., Any] | None = None,
    ) -> None:
        self.annotation_file = Path(annotations)
        self.image_folder = Path(images)
        self.train = train
        self.strict = strict
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"flip_prob {flip_prob} must be in [0, 1]")
        if transforms is None and train and flip_prob > 0:
            transforms = v2.RandomHorizontalFlip(flip_prob)
        self.transforms = transforms
        origin = self.annotation_file.name
        document = _read_json(self.annotation_file)
        self.categories = CategoryMap.from_coco(document.get("categories"), origin)
        if categories is not None and categories != self.categories:
            raise ValueError(
                f"{self.annotation_file}: categories {_describe(self.categories)} differ from the training "
                f"split's {_describe(categories)}; both splits need the same categories"
            )
        self.skipped: Counter[str] = Counter()
        self._examples: dict[str, list[str]] = {}
        entries = self._check(document)
        self.num_without_boxes = 0
        if train:
            kept = [e for e in entries if len(e.labels)]
            self.num_without_boxes = len(entries) - len(kept)
            if self.num_without_boxes:
                _LOG.info(
                    "%s: %d images without a non-crowd box left out of training (as COCO's detectors do)",
                    origin,
                    self.num_without_boxes,
                )
            entries = kept
        self._entries = entries
        self._report(origin)
        self._warned: set[str] = set()
        self._coco: Any = None

    # ---------------------------------------------------------------------------------- checking, once

    def _check(self, document: dict[str, Any]) -> list[_Entry]:
        images, annotations = document.get("images"), document.get("annotations")
        for key, value in (("images", images), ("annotations", annotations)):
            if not isinstance(value, list):
                raise ValueError(
                    f"{self.annotation_file}: {key!r} must be a list (is this a COCO instances file?)"
                )
        assert isinstance(images, list) and isinstance(annotations, list)
        valid: dict[int, dict[str, Any]] = {}
        dropped_ids: set[int] = set()  # images skipped: their annotations go with them, uncounted
        for image in images:
            problem = _image_problem(image, valid)
            if problem is None and not (self.image_folder / image["file_name"]).is_file():
                problem = "missing file", f"its file {self.image_folder / image['file_name']} does not exist"
            if problem is not None:
                kind, detail = problem
                image_id = image.get("id") if isinstance(image, dict) else None
                self._problem(f"images: {kind}", f"image {image_id}", detail)
                if _is_int(image_id) and image_id not in valid:
                    dropped_ids.add(image_id)
                continue
            valid[image["id"]] = image
        labels = self.categories._labels()
        kept: dict[int, list[tuple[int, list[float], int, int, float]]] = {i: [] for i in valid}
        # The ground truth of evaluation: each image's annotations as pycocotools reads the file, in its order
        # (a box of no size or outside the image is one more object a detector cannot find: it costs recall).
        self._evaluated: dict[int, list[tuple[int, list[float], int, int, float]]] = {i: [] for i in valid}
        seen_ann: set[int] = set()
        for ann in annotations:
            if isinstance(ann, dict) and ann.get("image_id") in dropped_ids:
                continue  # an image skipped above: its annotations go with it
            problem = _annotation_problem(ann, valid, labels, seen_ann)
            if problem is not None:
                where = f"annotation {ann.get('id') if isinstance(ann, dict) else None}"
                if isinstance(ann, dict) and "image_id" in ann:
                    where += f" (image {ann['image_id']})"
                self._problem(f"annotations: {problem[0]}", where, problem[1])
                if problem[0] not in TARGET_ONLY_PROBLEMS:
                    continue
            seen_ann.add(ann["id"])
            box = [float(v) for v in ann["bbox"]]
            area = float(ann.get("area", box[2] * box[3]))
            kept_ann = (ann["id"], box, labels[ann["category_id"]], int(ann.get("iscrowd", 0)), area)
            self._evaluated[ann["image_id"]].append(kept_ann)
            if problem is None:
                kept[ann["image_id"]].append(kept_ann)
        entries = []
        for image_id, image in valid.items():
            anns = [a for a in kept[image_id] if a[3] == 0] if self.train else kept[image_id]
            entries.append(
                _Entry(
                    image_id,
                    image["file_name"],
                    image["width"],
                    image["height"],
                    np.array([a[0] for a in anns], dtype=np.int64),
                    np.array([a[1] for a in anns], dtype=np.float64).reshape(-1, 4),
                    np.array([a[2] for a in anns], dtype=np.int64),
                    np.array([a[3] for a in anns], dtype=np.int64),
                    np.array([a[4] for a in anns], dtype=np.float64),
                )
            )
        return entries

    def _problem(self, kind: str, where: str, detail: str) -> None:
        if self.strict:
            raise ValueError(
                f"{self.annotation_file}: {where}: {detail}; --strict-data made this fatal: fix the file, "
                f"or drop --strict-data to skip malformed annotations with a warning"
            )
        self.skipped[kind] += 1
        examples = self._examples.setdefault(kind, [])
        if len(examples) < _EXAMPLES:
            examples.append(f"{where}: {detail}")

    def _report(self, origin: str) -> None:
        for kind, count in self.skipped.items():
            what, reason = kind.split(": ", 1)
            more = f"; and {count - _EXAMPLES} more" if count > _EXAMPLES else ""
            scored = " (left out of the targets; evaluation scores them, as pycocotools does)"
            _LOG.warning(
                "%s: skipped %d %s (%s)%s: %s%s; pass --strict-data to make this an error",
                origin,
                count,
                what if count > 1 else what[:-1],
                reason,
                scored if reason in TARGET_ONLY_PROBLEMS else "",
                "; ".join(self._examples[kind]),
                more,
            )

    def report(self) -> str:
        """What was skipped, one line per kind (empty if nothing)."""
        return "\n".join(f"{kind}: {count}" for kind, count in self.skipped.items())

    # ----------------------------------------------------------------------------------------- items

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def image_ids(self) -> list[int]:
        return [e.image_id for e in self._entries]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target] | None:
        entry = self._entries[index]
        path = self.image_folder / entry.file_name
        try:  # PIL, as COCO's tools: pixels as stored, EXIF orientation not applied (the boxes are on those)
            with Image.open(path) as file:
                image = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1)
        except DECODE_ERRORS as error:
            return self._unreadable(str(path), f"{type(error).__name__}: {error}")
        if tuple(image.shape[1:]) != (entry.height, entry.width):
            return self._unreadable(
                str(path),
                f"it is {image.shape[2]}x{image.shape[1]}, the annotations say {entry.width}x{entry.height}",
            )
        boxes = tv_tensors.BoundingBoxes(
            entry.boxes(), format="XYXY", canvas_size=(entry.height, entry.width)
        )
        target: Target = {
            "boxes": boxes,
            "labels": torch.from_numpy(entry.labels.copy()),
            "image_id": entry.image_id,
            "iscrowd": torch.from_numpy(entry.iscrowd.copy()),
            "area": torch.from_numpy(entry.area.astype(np.float32)),
        }
        picture: torch.Tensor = tv_tensors.Image(image)
        if self.transforms is not None:
            picture, target = self.transforms(picture, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        return v2.functional.to_dtype(picture.as_subclass(torch.Tensor), torch.float32, scale=True), target

    def _unreadable(self, path: str, reason: str) -> None:
        if self.strict:
            raise ValueError(
                f"unreadable image {path} ({reason}); --strict-data made this fatal: "
                "fix or replace the file, or drop --strict-data to skip unreadable images with a warning"
            )
        if path not in self._warned:
            self._warned.add(path)
            _LOG.warning(
                "skipping unreadable image %s (%s); pass --strict-data to make this an error", path, reason
            )
        return None

    # ------------------------------------------------------------------------------------ evaluation

    @property
    def coco(self) -> Any:
        """The ground truth of evaluation, a ``pycocotools.coco.COCO`` of this dataset's images and their
        annotations as pycocotools reads the file (crowds, boxes of no size or outside the image included;
        boxes, areas and ids as in the file), under their COCO ids."""
        if self._coco is None:
            self._coco = ground_truth(self)
        return self._coco

    def ground_truth_document(self) -> dict[str, Any]:
        """This dataset's images and their annotations (those of :attr:`coco`) as a COCO json document."""
        images, annotations = [], []
        for e in self._entries:
            images.append({"id": e.image_id, "file_name": e.file_name, "width": e.width, "height": e.height})
            for ann_id, bbox, label, crowd, area in self._evaluated[e.image_id]:
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": e.image_id,
                        "category_id": self.categories.coco_id(label),
                        "bbox": bbox,
                        "area": area,
                        "iscrowd": crowd,
                    }
                )
        categories = [
            {"id": i, "name": n} for i, n in zip(self.categories.coco_ids, self.categories.names, strict=True)
        ]
        return {"images": images, "annotations": annotations, "categories": categories}


def ground_truth(dataset: CocoDetection) -> Any:
    """A ``pycocotools.coco.COCO`` of ``dataset``'s ground truth (quietly: pycocotools prints as it
    indexes)."""
    import contextlib
    import io

    try:
        from pycocotools.coco import COCO
    except ImportError as error:
        raise ImportError(
            "COCO evaluation needs pycocotools: pip install 'senet[detection]' (or pycocotools)"
        ) from error
    coco = COCO()
    coco.dataset = dataset.ground_truth_document()
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_datasets(
    data: str | Path | None = None,
    *,
    train_ann: str | Path | None = None,
    train_images: str | Path | None = None,
    val_ann: str | Path | None = None,
    val_images: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
    strict: bool = False,
    flip_prob: float = 0.5,
) -> dict[str, CocoDetection]:
    """The datasets of ``splits`` (:func:`resolve_coco_paths`'s arguments), every split with the first one's
    categories (refused where a split's file has other categories)."""
    paths = resolve_coco_paths(
        data,
        train_ann=train_ann,
        train_images=train_images,
        val_ann=val_ann,
        val_images=val_images,
        splits=splits,
    )
    datasets: dict[str, CocoDetection] = {}
    categories = None
    for split, where in paths.items():
        datasets[split] = CocoDetection(
            where.annotations,
            where.images,
            train=split == "train",
            strict=strict,
            categories=categories,
            flip_prob=flip_prob,
        )
        categories = datasets[split].categories
    return datasets


def collate(
    batch: Sequence[tuple[torch.Tensor, Target] | None],
) -> tuple[list[torch.Tensor], list[Target], int]:
    """``(images, targets, skipped)``: lists (images differ in size), unreadable items (None) dropped,
    counted."""
    kept = [item for item in batch if item is not None]
    return [item[0] for item in kept], [item[1] for item in kept], len(batch) - len(kept)


# ---------------------------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file ({error.reason})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a COCO file is a JSON object with images, annotations and categories")
    return document


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _image_problem(image: object, valid: dict[int, Any]) -> tuple[str, str] | None:
    if not isinstance(image, dict):
        return "malformed entries", f"{image!r} is not an object"
    if not _is_int(image.get("id")):
        return "malformed entries", f"id {image.get('id')!r} is not an integer"
    if image["id"] in valid:
        return "repeated ids", "a second image with this id"
    name = image.get("file_name")
    if not isinstance(name, str) or not name:
        return "malformed entries", f"file_name {name!r} is not a file name"
    size = image.get("width"), image.get("height")
    if not all(_is_int(v) and v > 0 for v in size):
        return "malformed entries", f"width x height {size[0]!r} x {size[1]!r} are not positive integers"
    return None


def _annotation_problem(
    ann: object, images: dict[int, Any], labels: dict[int, int], seen: set[int]
) -> tuple[str, str] | None:
    if not isinstance(ann, dict):
        return "malformed entries", f"{ann!r} is not an object"
    if not _is_int(ann.get("id")):
        return "malformed entries", f"id {ann.get('id')!r} is not an integer"
    if ann["id"] in seen:
        return "repeated ids", "a second annotation with this id"
    image = images.get(ann.get("image_id")) if _is_int(ann.get("image_id")) else None
    if image is None:
        return "unknown image ids", f"no image has id {ann.get('image_id')!r}"
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in labels:
        known = ", ".join(str(i) for i in labels)
        return "unknown category ids", f"category_id {ann.get('category_id')!r} is not one of {known}"
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1) or isinstance(crowd, float):
        return "malformed entries", f"iscrowd {crowd!r} is not 0 or 1"
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        return "malformed entries", f"area {ann['area']!r} is not a number >= 0"
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        return "malformed boxes", f"bbox {box!r} is not 4 finite numbers [x, y, width, height]"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return "boxes of zero or negative size", f"bbox {box} has width {w} and height {h}"
    width, height = image["width"], image["height"]
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return "boxes outside the image", f"bbox {box} reaches outside the {width}x{height} image"
    if min(x + w, width) - max(x, 0) <= 0 or min(y + h, height) - max(y, 0) <= 0:
        return "boxes of zero or negative size", f"bbox {box} covers no pixel of the {width}x{height} image"
    return None


def _describe(categories: CategoryMap) -> str:
    return (
        "{" + ", ".join(f"{i}: {n}" for i, n in zip(categories.coco_ids, categories.names, strict=True)) + "}"
    )
