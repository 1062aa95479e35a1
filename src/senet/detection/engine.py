"""Training and evaluating detectors: ``train(DetectionConfig)``, ``evaluate``, ``evaluate_run``, ``load_detector``.

``train(config)`` builds the COCO-format data (:func:`senet.detection.data.coco_datasets`) and a Faster R-CNN +
FPN on ``config.backbone`` (:func:`senet.detection.model.build_detector`), trains it with Detectron's recipe --
SGD, momentum 0.9, weight decay 1e-4, lr 0.02 at batch 16 scaled linearly with the global batch, a linear
warm-up, and the rate divided by 10 after 2/3 and 11/12 of the run (1x: 12 epochs, drops after epochs 8 and
11; 2x: 24 epochs, after 16 and 22) -- and evaluates after every epoch with pycocotools' COCOeval.

It is the classification engine's machinery, not a copy of it (``senet.train``): the run directory and its
refusals (``rundir``), atomic safetensors + JSON checkpoints with schema checks and retention (``checkpoint``),
stop signals, periodic saves and the agreement of DDP ranks (``control.RunControl``), ``torchrun`` set-up and
device choice, one writer per run directory (``engine.writing_run_dir``), AMP, progress lines, exact resume
(position, optimizer, RNG of every rank, the epoch's sums) and the finite check of losses and weights
(``engine.TrainingRun``). Each epoch appends one line to ``metrics.jsonl``
(``train_loss`` and its four parts, ``val_AP``, ``val_AP50``, ...), so ``senet plot RUN`` draws it.

Every checkpoint records the :class:`DetectionConfig`, the detector's ``build_options`` and the ``categories``,
so that :func:`load_detector` (``senet detect eval`` / ``predict``) and a resumed run rebuild exactly the same
network (:func:`senet.detection.model.detector_from_options`), without the pretrained weights file.

Under ``torchrun`` every process trains on its shard; for evaluation every process runs the detector on its
slice of the validation images and the detections are gathered on rank 0 (``torch.distributed.gather_object``),
which runs COCOeval once; the metrics are then broadcast so every rank records the same epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from senet.data.loaders import build_loader, shutdown_workers
from senet.detection.data import CategoryMap, CocoDetection, coco_datasets, collate
from senet.detection.metrics import METRICS, coco_evaluate
from senet.detection.model import DETECTOR_OPTIONS, build_detector, detector_from_options
from senet.runtime import Dist, autocast, progress_bar, seed_everything, setup_device
from senet.train.checkpoint import (
    BEST_NAME,
    Checkpoint,
    atomic_write,
    load_checkpoint,
    load_weights_file,
    load_weights_into,
    rng_state,
)
from senet.train.config import _check_number
from senet.train.control import RunControl, StopRequested
from senet.train.engine import (
    Meter,
    RunResult,
    TrainingRun,
    check_batches,
    finished_run,
    lr_text,
    val_shard,
    writing_run_dir,
)
from senet.train.feed import FiniteCheck
from senet.train.rundir import Changes, ResumeRules, prepare_run_dir, reconcile

log = logging.getLogger("senet.train")

SCHEDULES = {
    "1x": 12,
    "2x": 24,
}  # epochs of Detectron's schedules on COCO (90k / 180k iterations at batch 16)
REFERENCE_BATCH = 16  # the batch at which lr 0.02 is given (Detectron: 8 GPUs x 2 images)
WARMUP_ITERS = 500  # Detectron's linear warm-up, from a third of the rate
TASK = "detection"  # the ``task`` of a detection checkpoint: classification tools refuse it, and vice versa
_BACKBONE_RESERVED = ("features_only", "pretrained", "num_classes", "out_indices", "frozen_stages", "norm")


# -------------------------------------------------------------------------------------------------- config


@dataclass
class DetectionConfig:
    """Everything a detection run needs; saved as ``config.json`` and in every checkpoint.

    The schedule is ``schedule`` (``1x``: 12 epochs, ``2x``: 24) or ``epochs`` (any count; not both, unless
    they agree): the rate drops by ``gamma`` after 2/3 and 11/12 of the epochs (1x: after 8 and 11). ``lr`` is
    the rate at ``lr_reference_batch`` images, scaled linearly to ``batch_size`` (the global batch, split
    over the processes). The warm-up rises linearly from ``warmup_factor`` x the rate over ``warmup_iters``
    steps (default: Detectron's 500, at most a fifth of the run, so that a short run is not all warm-up).
    """

    backbone: str = "se_resnet50"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # ImageNet weights for the backbone (senet.load_pretrained)
    norm: str | None = None  # None: frozen_bn with pretrained weights, bn from scratch
    frozen_stages: int | None = None  # None: 1 (stem + stage 1) with pretrained weights, -1 from scratch
    data: str | None = (
        None  # COCO's layout: ROOT/annotations/instances_{train,val}2017.json, ROOT/{split}2017/
    )
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    strict_data: bool = False
    flip_prob: float = 0.5
    workers: int = 0

    min_size: tuple[int, ...] = (800,)  # shorter side; several: one chosen at random per training batch
    max_size: int = 1333
    out_indices: tuple[int, ...] | None = None
    fpn_channels: int = 256
    box_head_size: int = 1024
    detector_options: dict[str, Any] = field(default_factory=dict)

    schedule: str | None = None
    epochs: int | None = None
    batch_size: int = 16
    lr: float = 0.02
    lr_reference_batch: int = REFERENCE_BATCH
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gamma: float = 0.1
    warmup_iters: int | None = None
    warmup_factor: float = 1 / 3

    seed: int = 0
    device: str = "auto"
    amp: bool = False
    output: str | None = None
    log_interval: int = 20
    save_every_steps: int = 0
    save_every_minutes: float = 0.0
    keep: int = 2

    def __post_init__(self) -> None:
        """Refuse every value that cannot be meant, one line naming the field and what it takes."""
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(
                f"backbone must be a registered model name (senet models), got {self.backbone!r}"
            )
        from senet.models.registry import model_info

        model_info(self.backbone)  # an unknown name fails here, with the closest known names
        for name in ("backbone_options", "detector_options"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError(f"{name} must map option names to values, got {value!r}")
        if reserved := sorted(set(_BACKBONE_RESERVED) & set(self.backbone_options)):
            raise ValueError(
                f"backbone option {', '.join(reserved)} is set by the detector or its own flag "
                "(--out-indices, --frozen-stages, --norm); leave it out of backbone_options"
            )
        if unknown := sorted(set(self.detector_options) - set(DETECTOR_OPTIONS)):
            raise ValueError(
                f"detector_options: unknown FasterRCNN options {', '.join(unknown)}; "
                f"valid: {', '.join(DETECTOR_OPTIONS)}"
            )
        if self.norm not in (None, "bn", "frozen_bn"):
            raise ValueError(f"unknown norm {self.norm!r}; choose bn (trainable) or frozen_bn")
        for name in ("pretrained", "data", "train_ann", "train_images", "val_ann", "val_images", "output"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a path, got {value!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("strict_data", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self._resolve_schedule()
        for name in ("min_size", "out_indices"):
            self._check_ints(name)
        if not self.min_size:
            raise ValueError("min_size must give at least one shorter side, e.g. 800")
        for name, kind, ok, text in _RANGES:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            _check_number(name, value, kind)
            if not ok(self, value):
                raise ValueError(f"{name} must be {text}, got {value!r}")

    def _resolve_schedule(self) -> None:
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose 1x (12 epochs) or 2x (24 epochs)")
        if self.epochs is not None:
            _check_number("epochs", self.epochs, int)
            if self.epochs < 1:
                raise ValueError(f"epochs must be >= 1, got {self.epochs!r}")
        if self.schedule is not None and self.epochs is not None and self.epochs != SCHEDULES[self.schedule]:
            raise ValueError(
                f"schedule {self.schedule} is {SCHEDULES[self.schedule]} epochs, epochs is {self.epochs}; give "
                "one of --schedule and --epochs"
            )
        if self.schedule is None and self.epochs is None:
            self.schedule = "1x"
        if self.epochs is None:
            self.epochs = SCHEDULES[self.schedule]  # type: ignore[index]

    def _check_ints(self, name: str) -> None:
        value = getattr(self, name)
        if value is None and name == "out_indices":
            return
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= (1 if name == "min_size" else 0)
            for v in value
        ):
            raise ValueError(f"{name} must be integers{' >= 1' if name == 'min_size' else ''}, got {value!r}")
        setattr(self, name, tuple(value))

    @property
    def model(self) -> str:
        """The run's name (``runs/<time>-<model>``): ``faster_rcnn_<backbone>``."""
        return f"faster_rcnn_{self.backbone}"

    @property
    def milestones(self) -> tuple[float, float]:
        """The epochs (fractions allowed) after which the rate drops: 2/3 and 11/12 of the run."""
        epochs = self.epochs or 0
        return epochs * 2 / 3, epochs * 11 / 12

    def scaled_lr(self) -> float:
        """The learning rate at this run's global batch size (0.02 x batch / 16 by default)."""
        return self.lr * self.batch_size / self.lr_reference_batch

    def warmup_steps(self, total_steps: int) -> int:
        if self.warmup_iters is not None:
            return self.warmup_iters
        return min(WARMUP_ITERS, total_steps // 5)

    def detector_kwargs(self) -> dict[str, Any]:
        """``build_detector``'s keywords besides the backbone and the class count."""
        return dict(
            pretrained=self.pretrained,
            frozen_stages=self.frozen_stages,
            norm=self.norm,
            min_size=self.min_size[0] if len(self.min_size) == 1 else self.min_size,
            max_size=self.max_size,
            out_indices=self.out_indices,
            fpn_channels=self.fpn_channels,
            box_head_size=self.box_head_size,
            detector_options=dict(self.detector_options),
            **self.backbone_options,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ValueError(
                f"unknown detection config fields {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)


# (field, type, valid(config, value), the valid range in words); _OPTIONAL ones may also be None.
_RANGES: tuple[tuple[str, type, Callable[[Any, Any], bool], str], ...] = (
    ("frozen_stages", int, lambda c, v: v >= -1, ">= -1 (-1: nothing frozen; or None: 1 with --pretrained)"),
    ("flip_prob", float, lambda c, v: 0 <= v <= 1, "in [0, 1]"),
    ("workers", int, lambda c, v: v >= 0, ">= 0"),
    ("max_size", int, lambda c, v: v >= max(c.min_size), "an integer >= every --min-size"),
    ("fpn_channels", int, lambda c, v: v >= 1, ">= 1"),
    ("box_head_size", int, lambda c, v: v >= 1, ">= 1"),
    ("batch_size", int, lambda c, v: v >= 1, ">= 1"),
    ("lr", float, lambda c, v: v > 0, "> 0"),
    ("lr_reference_batch", int, lambda c, v: v >= 1, ">= 1"),
    ("momentum", float, lambda c, v: 0 <= v < 1, "in [0, 1)"),
    ("weight_decay", float, lambda c, v: v >= 0, ">= 0"),
    ("gamma", float, lambda c, v: v > 0, "> 0"),
    (
        "warmup_iters",
        int,
        lambda c, v: v >= 0,
        ">= 0 (0: no warm-up; or None: 500, at most a fifth of the run)",
    ),
    ("warmup_factor", float, lambda c, v: 0 < v <= 1, "in (0, 1]"),
    ("seed", int, lambda c, v: v >= 0, ">= 0"),
    ("log_interval", int, lambda c, v: v >= 0, ">= 0 (0: no progress lines)"),
    ("save_every_steps", int, lambda c, v: v >= 0, ">= 0 (0: at epoch ends only)"),
    ("save_every_minutes", float, lambda c, v: v >= 0, ">= 0 (0: off)"),
    ("keep", int, lambda c, v: v >= 1, ">= 1"),
)
_OPTIONAL = {"frozen_stages", "warmup_iters"}

# What a resume may change: never the network or the data; the schedule with extend_schedule; the rest freely.
RESUME_RULES = ResumeRules(
    identity=(
        "backbone",
        "backbone_options",
        "pretrained",
        "norm",
        "frozen_stages",
        "data",
        "train_ann",
        "train_images",
        "val_ann",
        "val_images",
        "min_size",
        "max_size",
        "out_indices",
        "fpn_channels",
        "box_head_size",
        "detector_options",
    ),
    schedule=(
        "schedule",
        "epochs",
        "batch_size",
        "lr",
        "lr_reference_batch",
        "gamma",
        "warmup_iters",
        "warmup_factor",
    ),
    control=("device", "workers", "output", "log_interval", "save_every_steps", "save_every_minutes", "keep"),
)

# Every DetectionConfig field in words, for `senet detect train --help` and docs/detection.md.
FIELD_HELP = {
    "backbone": "registered network with stages (senet models), e.g. se_resnet50, resnet101",
    "pretrained": "ImageNet weights for the backbone: a senet weights file (senet convert), a run directory "
    "or a published model name (senet.load_pretrained); then BatchNorms frozen and stem + stage 1 frozen "
    "(Detectron) unless --norm / --frozen-stages say otherwise (default: none, from scratch)",
    "norm": "the backbone's BatchNorms: bn (trainable) or frozen_bn (default: frozen_bn with --pretrained, "
    "bn from scratch)",
    "frozen_stages": "stem and stages 1..K frozen, -1 for none (default: 1 with --pretrained, -1 from scratch)",
    "data": "COCO's layout: ROOT/annotations/instances_{train,val}2017.json and ROOT/{train,val}2017/ "
    "(senet data shapes OUT makes one)",
    "train_ann": "training annotations (COCO json), instead of --data's",
    "train_images": "folder of the training images, instead of --data's",
    "val_ann": "validation annotations (COCO json), instead of --data's",
    "val_images": "folder of the validation images, instead of --data's",
    "strict_data": "stop at the first malformed annotation or unreadable image instead of skipping it",
    "flip_prob": "probability of the horizontal flip of a training image",
    "workers": "DataLoader worker processes (0: load in the training process; exact resume needs 0)",
    "min_size": "shorter side of the resized images; several (640,672,704,736,768,800): one at random per "
    "training batch, the last for evaluation",
    "max_size": "longer side at most",
    "out_indices": "backbone stages feeding the pyramid (default: the last four after the stem)",
    "fpn_channels": "channels of every pyramid level",
    "box_head_size": "width of the two-layer box head",
    "schedule": "1x (12 epochs, lr / 10 after 8 and 11) or 2x (24 epochs, after 16 and 22) (default: 1x "
    "unless --epochs is given)",
    "epochs": "a custom run of N epochs, lr / 10 after 2/3 and 11/12 of them (default: the schedule's)",
    "batch_size": "global batch size, split over the processes of a torchrun job",
    "lr": "learning rate at --lr-reference-batch images, scaled linearly to --batch-size",
    "lr_reference_batch": "batch size at which --lr is given",
    "momentum": "SGD momentum, in [0, 1)",
    "weight_decay": "L2 weight decay",
    "gamma": "factor of each of the two drops",
    "warmup_iters": "linear warm-up steps from --warmup-factor x the rate (default: 500, at most a fifth of "
    "the run)",
    "warmup_factor": "the warm-up's starting fraction of the rate",
    "seed": "random seed of weights, data order and augmentation",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "mixed precision: bf16 on CPU, fp16 with a gradient scaler on CUDA",
    "output": "run directory (default: runs/<time>-faster_rcnn_<backbone>)",
    "log_interval": "plain progress line every N batches when not on a terminal (0: none)",
    "save_every_steps": "also checkpoint every N optimizer steps (0: at epoch ends only)",
    "save_every_minutes": "also checkpoint when this many minutes passed since the last save (0: off)",
    "keep": "checkpoints kept in the run directory: the newest N",
}


def lr_factor(config: DetectionConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The rate's factor at each optimizer step: Detectron's linear warm-up times ``gamma`` per drop passed."""
    warmup = config.warmup_steps((config.epochs or 0) * steps_per_epoch)
    drops = [m * steps_per_epoch for m in config.milestones]

    def factor(step: int) -> float:
        value = config.gamma ** sum(step >= d for d in drops)
        if step < warmup:
            alpha = step / warmup
            value *= config.warmup_factor * (1 - alpha) + alpha
        return value

    return factor


def check_detector_options(config: DetectionConfig, num_classes: int = 1) -> None:
    """Build ``config``'s detector on the meta device (no memory, no weights), so that a bad backbone or
    detector option fails in one line before a run directory is made."""
    kwargs = config.detector_kwargs()
    pretrained = kwargs.pop("pretrained")
    if pretrained is not None:  # the defaults that pretrained weights bring, without reading them here
        kwargs["norm"] = kwargs["norm"] or "frozen_bn"
        kwargs["frozen_stages"] = 1 if kwargs["frozen_stages"] is None else kwargs["frozen_stages"]
    try:
        with torch.device("meta"):
            build_detector(config.backbone, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"a detector on {config.backbone} cannot be built: {error}") from None


def _require_pycocotools() -> None:
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        raise ValueError(
            "detection needs pycocotools for COCO's metrics: pip install 'senet[detection]'"
        ) from None


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    ground_truth: CocoDetection,
    device: torch.device,
    *,
    amp: bool = False,
    ctx: Dist = Dist(),
    prefix: str = "val",
    log_interval: int = 0,
    control: RunControl | None = None,
) -> dict[str, Any]:
    """COCO's box metrics of ``model`` on ``loader`` (batches of :func:`senet.detection.data.collate`) against
    ``ground_truth``: ``{prefix}_AP``, ``_AP50``, ``_AP75``, ``_APs`` / ``_APm`` / ``_APl``, ``_AR1`` ...
    (:data:`senet.detection.metrics.METRICS`, through pycocotools' COCOeval), ``_images`` (evaluated) and
    ``_skipped`` (unreadable). Over the images the detector ran on; in a distributed run each rank's loader
    holds its slice, the detections are gathered on rank 0, evaluated there once, and every rank returns the
    same dict. With ``control``, a stop signal ends evaluation early (:class:`StopRequested`) on every rank.
    """
    model.eval()
    predictions: dict[int, dict[str, torch.Tensor]] = {}
    skipped = 0
    polls = control.min_over_ranks(len(loader)) if control is not None else 0
    for index, (images, targets, missing) in enumerate(
        progress_bar(loader, prefix, log_interval, ctx.is_main)
    ):
        if index < polls:
            control.check_stop()  # type: ignore[union-attr]
        skipped += missing
        if not images:
            continue
        with autocast(device, amp):
            outputs = model([image.to(device, non_blocking=True) for image in images])
        for target, output in zip(targets, outputs):
            predictions[int(target["image_id"])] = {
                k: (v.float() if v.is_floating_point() else v).detach().cpu() for k, v in output.items()
            }
    if ctx.world_size > 1:
        gathered: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
        dist.gather_object((predictions, skipped), gathered, dst=0)
        if ctx.is_main:
            assert gathered is not None
            predictions = {k: v for part, _ in gathered for k, v in part.items()}
            skipped = sum(count for _, count in gathered)
    result: list[Any] = [None]
    if ctx.is_main:
        metrics = dict.fromkeys(METRICS, -1.0)
        if predictions:
            metrics = coco_evaluate(predictions, ground_truth, image_ids=predictions)
        result[0] = {
            **{f"{prefix}_{name}": value for name, value in metrics.items()},
            f"{prefix}_images": len(predictions),
            f"{prefix}_skipped": skipped,
        }
    if ctx.world_size > 1:
        dist.broadcast_object_list(result, src=0)
    return result[0]


def detection_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` if it is a detection run's; else a one-line ``ValueError`` naming the right command."""
    meta = checkpoint.meta
    if meta.get("task") != TASK:
        raise ValueError(
            f"{checkpoint.path} is not a detection run's checkpoint (a run of senet train? use senet eval / "
            "predict / train --resume for those)"
        )
    for key, kind in (("build_options", dict), ("categories", dict)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(
                f"{checkpoint.path} is damaged: missing or wrong field {key} (expected a {kind.__name__})"
            )
    return checkpoint


def load_detector(
    source: str | Path | Checkpoint, weights: str = "last"
) -> tuple[nn.Module, CategoryMap, Checkpoint]:
    """The detector a run directory (or one of its ``checkpoint-*.json``) trained, in eval mode, with its
    categories and the checkpoint: rebuilt from the recorded ``build_options``, loaded strictly from the
    newest complete checkpoint (``weights="last"``) or the best epoch's weights (``"best"``)."""
    if weights not in ("last", "best"):
        raise ValueError(f"weights={weights!r}; choose 'last' or 'best'")
    checkpoint = detection_checkpoint(source if isinstance(source, Checkpoint) else load_checkpoint(source))
    meta = checkpoint.meta
    try:
        detector = detector_from_options(meta["build_options"])
        categories = CategoryMap.from_dict(meta["categories"])
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"{checkpoint.path}: its build_options cannot rebuild the detector ({error})"
        ) from None
    if categories.num_classes != meta["num_classes"]:
        raise ValueError(
            f"{checkpoint.path} is damaged: {categories.num_classes} categories, {meta['num_classes']} classes"
        )
    if weights == "best":
        state, origin = load_weights_file(checkpoint.run_dir / BEST_NAME), str(checkpoint.run_dir / BEST_NAME)
    else:
        state, origin = checkpoint.model_state(), str(checkpoint.path)
    load_weights_into(detector, state, origin)
    return detector.eval(), categories, checkpoint


def evaluate_run(
    source: str | Path,
    *,
    data: str | Path | None = None,
    val_ann: str | Path | None = None,
    val_images: str | Path | None = None,
    weights: str = "last",
    batch_size: int = 2,
    workers: int = 0,
    device: str = "auto",
    amp: bool = False,
    strict_data: bool = False,
    write: bool = True,
) -> dict[str, Any]:
    """COCO's metrics of a trained detector: ``{"AP": ..., "AP50": ..., ..., "images": N, "skipped": M}``.

    Args:
        source: a run directory of ``senet detect train`` (or one of its ``checkpoint-*.json``).
        data, val_ann, val_images: the validation split (``resolve_coco_paths``); default the run's own.
        weights: the newest checkpoint (``last``) or the best epoch's weights (``best``).
        batch_size: images per forward pass (per process under ``torchrun``).
        write: also write the result as ``eval-<weights>.json`` into the run directory (rank 0).
    """
    _require_pycocotools()
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    ctx, device_ = setup_device(device)
    detector, categories, checkpoint = load_detector(source, weights)
    saved = checkpoint.meta["config"]
    if data is None and val_ann is None and val_images is None:
        data, val_ann, val_images = saved.get("data"), saved.get("val_ann"), saved.get("val_images")
    dataset = coco_datasets(
        data, val_ann=val_ann, val_images=val_images, splits=("val",), strict=strict_data
    )["val"]
    if dataset.categories != categories:
        raise ValueError(
            f"{dataset.annotation_file}: its categories {list(dataset.categories.names)} are not the "
            f"{list(categories.names)} the detector of {checkpoint.run_dir} was trained on"
        )
    cuda = device_.type == "cuda"
    loader = build_loader(
        val_shard(dataset, ctx),
        batch_size=batch_size,
        train=False,
        workers=workers,
        pin_memory=cuda,
        collate_fn=collate,
    )
    try:
        metrics = evaluate(detector.to(device_), loader, dataset, device_, amp=amp, ctx=ctx)
    finally:
        shutdown_workers(loader)
    if metrics["val_images"] == 0:
        raise ValueError(
            f"no image of {dataset.image_folder} could be read ({metrics['val_skipped']} skipped)"
        )
    result = {name: metrics[f"val_{name}"] for name in METRICS}
    result.update(images=metrics["val_images"], skipped=metrics["val_skipped"])
    if write and ctx.is_main:
        record = {
            "checkpoint": checkpoint.path.name,
            "weights": weights,
            "epoch": checkpoint.meta["epoch"],
            "annotations": str(dataset.annotation_file),
            "images": str(dataset.image_folder),
            "metrics": result,
        }
        atomic_write(
            checkpoint.run_dir / f"eval-{weights}.json", (json.dumps(record, indent=1) + "\n").encode()
        )
    return result


# ------------------------------------------------------------------------------------------------- training


def train(
    config: DetectionConfig,
    resume: str | Path | Checkpoint | None = None,
    *,
    overwrite: bool = False,
    extend_schedule: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Train a detector on ``config``'s COCO-format data; ``resume`` continues a run exactly where it stopped.

    Args and behaviour as :func:`senet.train.train` (``resume``: a run directory, a loaded checkpoint or
    ``"auto"``; ``overwrite``; ``extend_schedule``; ``on_step(epoch, batch)``): options, data and run
    directory are all checked before anything is written, and a directory another live process writes is
    refused; a NaN/inf loss or weights raise ``TrainingDiverged``, a stop signal ``TrainingInterrupted`` after
    a checkpoint at that step. ``RunResult.model`` is the detector,
    ``history`` the per-epoch records (``metrics.jsonl``), ``best`` the epoch of the best ``val_AP``.
    """
    _require_pycocotools()
    ctx, device = setup_device(config.device)
    if isinstance(resume, Checkpoint):
        detection_checkpoint(resume)
    check_detector_options(config)
    run_dir, checkpoint = prepare_run_dir(config, resume, overwrite)
    changes = Changes({}, RESUME_RULES.schedule)
    if checkpoint is not None:
        detection_checkpoint(checkpoint)
        changes = reconcile(
            checkpoint.meta["config"],
            config,
            extend_schedule=extend_schedule,
            mid_epoch=checkpoint.meta["batches_done"] > 0,
            rules=RESUME_RULES,
        )
    datasets = coco_datasets(
        config.data,
        train_ann=config.train_ann,
        train_images=config.train_images,
        val_ann=config.val_ann,
        val_images=config.val_images,
        strict=config.strict_data,
        flip_prob=config.flip_prob,
    )
    train_set, val_set = datasets["train"], datasets["val"]
    categories = train_set.categories
    if not len(train_set):
        raise ValueError(f"{train_set.annotation_file}: no training image holds a non-crowd box")
    if not len(val_set):
        raise ValueError(f"{val_set.annotation_file}: no validation image to evaluate on")
    check_batches(config.batch_size, len(train_set), ctx)
    seed_everything(config.seed)  # same initial weights on every rank
    if checkpoint is None:
        net = build_detector(config.backbone, num_classes=categories.num_classes, **config.detector_kwargs())
    else:
        saved = CategoryMap.from_dict(checkpoint.meta["categories"])
        if saved != categories:
            raise ValueError(
                f"{train_set.annotation_file}: categories {list(categories.names)} differ from the "
                f"checkpoint's {list(saved.names)}"
            )
        net, _, _ = load_detector(checkpoint)
        if checkpoint.position >= (config.epochs, 0):
            return finished_run(config, run_dir, checkpoint, net, ctx)
    net = net.to(device)
    run = None
    with writing_run_dir(run_dir, config, checkpoint, ctx, _DetectionRun.command):
        try:
            with RunControl(ctx.world_size, config.save_every_steps, config.save_every_minutes) as control:
                run = _DetectionRun(config, ctx, device, run_dir, train_set, val_set, net, control, on_step)
                if checkpoint is not None:
                    run.restore(checkpoint, changes)
                return run.run()
        finally:
            if run is not None:
                for loader in (run.train_loader, run.val_loader):
                    shutdown_workers(loader)


LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")  # torchvision's


class _LossMeter(Meter):
    """The training losses of torchvision's Faster R-CNN: total*n, each part*n, n (images)."""

    width = 2 + len(LOSSES)

    def add(self, losses: dict[str, torch.Tensor], total: torch.Tensor, images: int) -> None:
        n = float(images)
        parts = [losses[name].detach().double() * n for name in LOSSES]
        count = torch.tensor(n, dtype=torch.float64, device=self.sums.device)
        self.sums += torch.stack([total.detach().double() * n, *parts, count])

    def result(self, ctx: Dist, prefix: str) -> dict[str, Any]:
        totals = self.totals(ctx)
        total, *parts, n = totals["sums"]
        seen = max(n, 1.0)
        return {
            f"{prefix}_loss": total / seen,
            **{f"{prefix}_{name}": value / seen for name, value in zip(LOSSES, parts)},
            f"{prefix}_images": int(n),
            f"{prefix}_skipped": totals["skipped"],
        }


def _to_device(
    images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    moved = [
        {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]
    return [image.to(device, non_blocking=True) for image in images], moved


class _DetectionRun(TrainingRun):
    """One detection run: its detector, optimizer, data and position, and its loop (the rest is shared)."""

    command = "senet detect train"

    def __init__(
        self,
        config: DetectionConfig,
        ctx: Dist,
        device: torch.device,
        run_dir: Path,
        train_set: CocoDetection,
        val_set: CocoDetection,
        net: nn.Module,
        control: RunControl,
        on_step: Callable[[int, int], None] | None,
    ) -> None:
        self.config, self.ctx, self.device, self.run_dir = config, ctx, device, run_dir
        self.train_set, self.val_set, self.categories = train_set, val_set, train_set.categories
        self.net, self.control, self.on_step = net, control, on_step
        seed_everything(config.seed + ctx.rank)  # different augmentation streams per rank
        self.per_rank_batch = config.batch_size // ctx.world_size
        cuda = device.type == "cuda"
        common = dict(workers=config.workers, pin_memory=cuda, collate_fn=collate)
        self.train_loader = build_loader(
            train_set,
            batch_size=self.per_rank_batch,
            train=True,
            seed=config.seed,
            distributed=ctx.world_size > 1,
            **common,  # type: ignore[arg-type]
        )
        self.val_loader = build_loader(
            val_shard(val_set, ctx),
            batch_size=self.per_rank_batch,
            train=False,
            **common,  # type: ignore[arg-type]
        )
        self.steps_per_epoch = len(self.train_loader)  # > 0: see check_batches
        self.model: nn.Module = (
            DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
            if ctx.world_size > 1
            else net
        )
        self.optimizer = torch.optim.SGD(
            [p for p in net.parameters() if p.requires_grad],  # frozen stages and BatchNorms stay out
            lr=config.scaled_lr(),
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.lr_factors = [lr_factor(config, self.steps_per_epoch)]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factors)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp and cuda)
        self.finite = FiniteCheck(device, control.min_over_ranks)
        self._start_position()

    def _meta(self, epoch_state: dict[str, Any]) -> dict[str, Any]:
        return {
            "task": TASK,
            "config": self.config.to_dict(),
            "model": self.config.backbone,
            "num_classes": self.categories.num_classes,
            "classes": list(self.categories.names),
            "categories": self.categories.as_dict(),
            "build_options": self.net.build_options,
            **self._position_meta(epoch_state),
        }

    def run(self) -> RunResult:
        config, ctx = self.config, self.ctx
        if ctx.is_main:
            milestones = ", ".join(f"{m:g}" for m in config.milestones)
            log.info(
                f"run {self.run_dir}: Faster R-CNN + FPN on {config.backbone}"
                f"{f' from {config.pretrained}' if config.pretrained else ''} "
                f"({len(self.train_set)} train / {len(self.val_set)} val images, "
                f"{self.categories.num_classes} categories), {ctx.world_size} process(es) on {self.device}, "
                f"lr {config.scaled_lr():g} (batch {config.batch_size}), {config.epochs} epochs, "
                f"lr x {config.gamma:g} after epochs {milestones}, "
                f"warm-up {config.warmup_steps(config.epochs * self.steps_per_epoch)} steps"  # type: ignore[operator]
            )
        while self.epoch < config.epochs:  # type: ignore[operator]
            meter, elapsed = self._train_epoch()
            started = time.perf_counter()
            try:
                val_metrics = evaluate(  # in float32 under --amp too: scores that low precision cannot tie
                    self.model,  # through DDP: rank 0's BatchNorm statistics on every rank
                    self.val_loader,
                    self.val_set,
                    self.device,
                    ctx=ctx,
                    log_interval=config.log_interval,
                    control=self.control,
                )
            except StopRequested as request:  # the epoch is trained: resume will evaluate it
                self.stop(request.signum, meter, None, elapsed)
            self._end_epoch(meter, val_metrics, elapsed, time.perf_counter() - started)
        return RunResult(self.run_dir, self.net, self.history, self.best)

    def _train_epoch(self) -> tuple[_LossMeter, float]:
        config = self.config
        self.train_loader.sampler.set_epoch(self.epoch, start=self.batch * self.per_rank_batch)  # type: ignore
        self.model.train()  # frozen stages stay in eval mode (StagedNetwork.train)
        meter = _LossMeter(self.device, self.epoch_state or None)
        started = time.perf_counter() - self.epoch_state.get("elapsed_s", 0.0)
        self.epoch_state = {}
        batches: Iterable = progress_bar(
            self.train_loader,
            f"epoch {self.epoch + 1}/{config.epochs}",
            config.log_interval,
            self.ctx.is_main,
        )
        batches = iter(batches)
        self._restore_rng()
        while True:
            rng = rng_state()  # what the next batch draws from (flips, then the samplers of the step)
            if (batch := next(batches, None)) is None:
                break
            images, targets, skipped = batch
            if self._enter_batch(meter, rng, skipped, not images, started):
                self._step(*_to_device(images, targets, self.device), meter)
        self._check_finite()
        return meter, time.perf_counter() - started

    def _step(self, images: list[torch.Tensor], targets: list[dict[str, Any]], meter: _LossMeter) -> None:
        with autocast(self.device, self.config.amp):
            losses = self.model(images, targets)
        loss = sum(value.float() for value in losses.values())
        assert isinstance(loss, torch.Tensor)
        self._optimize(loss)
        meter.add(losses, loss, len(images))
        self._after_step()

    def _end_epoch(
        self, meter: _LossMeter, val_metrics: dict[str, Any], elapsed: float, eval_time: float
    ) -> None:
        record = {**self._epoch_record(meter, val_metrics, elapsed, "images"), "eval_time_s": eval_time}
        improved = not self.best or record["val_AP"] > self.best["val_AP"]
        self._commit_epoch(
            record,
            {key: record[key] for key in ("epoch", "val_AP", "val_AP50")} if improved else None,
            f"loss {record['train_loss']:.4f}  val AP {record['val_AP']:.4f}  AP50 {record['val_AP50']:.4f}  "
            f"AP75 {record['val_AP75']:.4f}  {lr_text(record)}  {record['images_per_s']:.1f} img/s  "
            f"eval {eval_time:.1f}s",
        )
