"""The configuration of a detection run: :class:`DetectionConfig`, its flags' help and its resume rules.

Kept apart from the engine (:mod:`senet.detection.engine`) so that the ``senet detect train`` flags and a
saved run's config are read without the training loop. Every field declares the help of its flag, from which
``senet detect train`` makes its flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from senet.detection.model import DETECTOR_OPTIONS
from senet.models.registry import model_info
from senet.train.config import (
    SHARED_RANGES,
    Range,
    check_number,
    check_ranges,
    config_from_dict,
    option,
    shared_field,
)
from senet.train.rundir import RUN_CONTROL_FIELDS, ResumeRules

SCHEDULES = {
    "1x": 12,
    "2x": 24,
}  # epochs of Detectron's schedules on COCO (90k / 180k iterations at batch 16)
REFERENCE_BATCH = 16  # the batch at which lr 0.02 is given (Detectron: 8 GPUs x 2 images)
WARMUP_ITERS = 500  # Detectron's linear warm-up, from a third of the rate
_BACKBONE_RESERVED = ("features_only", "pretrained", "num_classes", "out_indices", "frozen_stages", "norm")


@dataclass
class DetectionConfig:
    """Everything a detection run needs; saved as ``config.json`` and in every checkpoint.

    The schedule is ``schedule`` (``1x``: 12 epochs, ``2x``: 24) or ``epochs`` (any count; not both, unless
    they agree): the rate drops by ``gamma`` after 2/3 and 11/12 of the epochs (1x: after 8 and 11). ``lr`` is
    the rate at ``lr_reference_batch`` images, scaled linearly to ``batch_size`` (the global batch, split
    over the processes). The warm-up rises linearly from ``warmup_factor`` x the rate over ``warmup_iters``
    steps (default: Detectron's 500, at most a fifth of the run, so that a short run is not all warm-up).

    Each field declares the help of its ``senet detect train`` flag (:func:`senet.train.config.option`, with
    ``metavar`` and ``choices`` where its type does not say them); a field's default is appended to it
    unless the text names it.
    """

    backbone: str = option(
        "se_resnet50", "registered network with stages (senet models), e.g. se_resnet50, resnet101"
    )
    backbone_options: dict[str, Any] = field(default_factory=dict)  # given as --backbone-opt KEY=VALUE
    pretrained: str | None = option(
        None,
        "ImageNet weights for the backbone: a senet weights file (senet convert), a run "
        "directory or a published model name (senet.load_pretrained); then BatchNorms frozen and stem "
        "+ stage 1 frozen (Detectron) unless --norm / --frozen-stages say otherwise (default: none, from "
        "scratch)",
        metavar="W",
    )
    norm: str | None = option(
        None,
        "the backbone's BatchNorms: bn (trainable) or frozen_bn (default: frozen_bn with "
        "--pretrained, bn from scratch)",
        choices=("bn", "frozen_bn"),
    )
    frozen_stages: int | None = option(
        None, "stem and stages 1..K frozen, -1 for none (default: 1 with --pretrained, -1 from scratch)"
    )
    data: str | None = option(
        None,
        "COCO's layout: ROOT/annotations/instances_{train,val}2017.json and "
        "ROOT/{train,val}2017/ (senet data shapes OUT makes one)",
        metavar="ROOT",
    )
    train_ann: str | None = option(
        None, "training annotations (COCO json), instead of --data's", metavar="FILE"
    )
    train_images: str | None = option(
        None, "folder of the training images, instead of --data's", metavar="DIR"
    )
    val_ann: str | None = option(
        None, "validation annotations (COCO json), instead of --data's", metavar="FILE"
    )
    val_images: str | None = option(
        None, "folder of the validation images, instead of --data's", metavar="DIR"
    )
    strict_data: bool = option(
        False, "stop at the first malformed annotation or unreadable image instead of skipping it"
    )
    flip_prob: float = option(0.5, "probability of the horizontal flip of a training image")
    workers: int = option(
        0, "DataLoader worker processes (0: load in the training process; exact resume needs 0)"
    )

    min_size: tuple[int, ...] = option(
        (800,),
        "shorter side of the resized images; several (640,672,704,736,768,800): one at random "
        "per training batch, the last for evaluation",
        metavar="N1,N2",
    )
    max_size: int = option(1333, "longer side at most")
    out_indices: tuple[int, ...] | None = option(
        None, "backbone stages feeding the pyramid (default: the last four after the stem)", metavar="N1,N2"
    )
    fpn_channels: int = option(256, "channels of every pyramid level")
    box_head_size: int = option(1024, "width of the two-layer box head")
    detector_options: dict[str, Any] = field(default_factory=dict)  # given as --detector-opt KEY=VALUE

    schedule: str | None = option(
        None,
        "1x (12 epochs, lr / 10 after 8 and 11) or 2x (24 epochs, after 16 and 22) (default: 1x "
        "unless --epochs is given)",
        choices=tuple(SCHEDULES),
    )
    epochs: int | None = option(
        None, "a custom run of N epochs, lr / 10 after 2/3 and 11/12 of them (default: the schedule's)"
    )
    batch_size: int = shared_field("batch_size", 16)
    lr: float = option(0.02, "learning rate at --lr-reference-batch images, scaled linearly to --batch-size")
    lr_reference_batch: int = option(REFERENCE_BATCH, "batch size at which --lr is given")
    momentum: float = shared_field("momentum")
    weight_decay: float = shared_field("weight_decay")
    gamma: float = option(0.1, "factor of each of the two drops")
    warmup_iters: int | None = option(
        None,
        "linear warm-up steps from --warmup-factor x the rate (default: 500, at most a fifth of the run)",
    )
    warmup_factor: float = option(1 / 3, "the warm-up's starting fraction of the rate")

    seed: int = shared_field("seed")
    device: str = shared_field("device")
    amp: bool = shared_field("amp")
    output: str | None = option(
        None, "run directory (default: runs/<time>-faster_rcnn_<backbone>)", metavar="RUN_DIR"
    )
    log_interval: int = shared_field("log_interval")
    save_every_steps: int = shared_field("save_every_steps")
    save_every_minutes: float = shared_field("save_every_minutes")
    keep: int = shared_field("keep")

    def __post_init__(self) -> None:
        """Refuse every value that cannot be meant, one line naming the field and what it takes."""
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(
                f"backbone must be a registered model name (senet models), got {self.backbone!r}"
            )
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
        check_ranges(self, _RANGES, _OPTIONAL)

    def _resolve_schedule(self) -> None:
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose 1x (12 epochs) or 2x (24 epochs)")
        if self.epochs is not None:
            check_number("epochs", self.epochs, int)
            if self.epochs < 1:
                raise ValueError(f"epochs must be >= 1, got {self.epochs!r}")
        if self.schedule is not None and self.epochs is not None and self.epochs != SCHEDULES[self.schedule]:
            raise ValueError(
                f"schedule {self.schedule} is {SCHEDULES[self.schedule]} epochs, epochs is {self.epochs}; "
                "give one of --schedule and --epochs"
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
        return config_from_dict(cls, values, "detection config")


# The rows of check_ranges (senet.train.config) besides SHARED_RANGES; _OPTIONAL ones may also be None.
_RANGES: tuple[Range, ...] = (
    ("frozen_stages", int, lambda c, v: v >= -1, ">= -1 (-1: nothing frozen; or None: 1 with --pretrained)"),
    ("flip_prob", float, lambda c, v: 0 <= v <= 1, "in [0, 1]"),
    ("max_size", int, lambda c, v: v >= max(c.min_size), "an integer >= every --min-size"),
    ("fpn_channels", int, lambda c, v: v >= 1, ">= 1"),
    ("box_head_size", int, lambda c, v: v >= 1, ">= 1"),
    ("lr_reference_batch", int, lambda c, v: v >= 1, ">= 1"),
    (
        "warmup_iters",
        int,
        lambda c, v: v >= 0,
        ">= 0 (0: no warm-up; or None: 500, at most a fifth of the run)",
    ),
    ("warmup_factor", float, lambda c, v: 0 < v <= 1, "in (0, 1]"),
    *SHARED_RANGES,
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
    control=RUN_CONTROL_FIELDS,
)
