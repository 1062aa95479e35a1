"""Training and evaluating detectors: ``train(DetectionConfig)``, ``evaluate``, ``evaluate_run``,
``load_detector``.

``train(config)`` builds the COCO-format data (:func:`senet.detection.data.coco_datasets`) and a
Faster R-CNN + FPN on ``config.backbone`` (:func:`senet.detection.model.build_detector`), trains it with
Detectron's recipe -- SGD, momentum 0.9, weight decay 1e-4, lr 0.02 at batch 16 scaled linearly with the
global batch, a linear warm-up, and the rate divided by 10 after 2/3 and 11/12 of the run (1x: 12 epochs,
drops after epochs 8 and 11; 2x: 24 epochs, after 16 and 22) -- and evaluates after every epoch with
pycocotools' COCOeval.

Detection is a task (:class:`DetectionTask`) of the one training lifecycle
(:func:`senet.train.lifecycle.fit`), which classification runs too: the run directory and its refusals, the
one-writer lock, atomic safetensors + JSON checkpoints with schema checks and retention, stop signals,
periodic saves and the agreement of DDP ranks, ``torchrun`` set-up and device choice, AMP, progress lines,
exact resume (position, optimizer, RNG of every rank, the epoch's sums), the finite check of losses and
weights, the best weights and the log. Each epoch appends one line to ``metrics.jsonl`` (``train_loss`` and
its four parts, ``val_AP``, ``val_AP50``, ..., ``eval_time_s``), so ``senet plot RUN`` draws it.

Every checkpoint records the :class:`DetectionConfig`, the detector's ``build_options`` and the
``categories``, so that :func:`load_detector` (``senet detect eval`` / ``predict``) and a resumed run rebuild
exactly the same network (:func:`senet.detection.model.detector_from_options`), without the pretrained weights
file.

Under ``torchrun`` every process trains on its shard; for evaluation every process runs the detector on its
slice of the validation images and the detections are gathered on rank 0
(``torch.distributed.gather_object``), which runs COCOeval once; the metrics are then broadcast so every rank
records the same epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from senet.data.loaders import build_loader, shutdown_workers
from senet.detection.config import RESUME_RULES, DetectionConfig
from senet.detection.data import CategoryMap, CocoDetection, coco_datasets, collate
from senet.detection.metrics import METRICS, coco_evaluate
from senet.detection.model import build_detector, detector_from_options
from senet.runtime import ONE_PROCESS, Dist, autocast, progress_bar, setup_device
from senet.train.control import RunControl, stoppable
from senet.train.feed import HostFeeder
from senet.train.lifecycle import RunResult, Task, fit, val_shard
from senet.train.meters import Meter
from senet.weights.checkpoint import (
    BEST_NAME,
    Checkpoint,
    atomic_write,
    load_checkpoint,
    load_weights_file,
    load_weights_into,
)

TASK = "detection"  # the ``task`` of a detection checkpoint: classification tools refuse it, and vice versa


def lr_factor(config: DetectionConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The rate's factor at each optimizer step: Detectron's linear warm-up, times ``gamma`` per drop."""
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
    ctx: Dist = ONE_PROCESS,
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
    batches = progress_bar(loader, prefix, log_interval, ctx.is_main)
    for images, targets, missing in stoppable(batches, len(loader), control):
        skipped += missing
        if not images:
            continue
        with autocast(device, amp):
            outputs = model([image.to(device, non_blocking=True) for image in images])
        for target, output in zip(targets, outputs, strict=True):
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
            f"{checkpoint.path} is damaged: "
            f"{categories.num_classes} categories, {meta['num_classes']} classes"
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
    return fit(
        DetectionTask(config), resume, overwrite=overwrite, extend_schedule=extend_schedule, on_step=on_step
    )


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
            **{f"{prefix}_{name}": value / seen for name, value in zip(LOSSES, parts, strict=True)},
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


class DetectionTask(Task):
    """A detector on COCO-format data (:class:`DetectionConfig`), as :func:`senet.train.lifecycle.fit` runs
    it: the data, the detector (new, or rebuilt from a checkpoint's ``build_options``), SGD on the trainable
    parameters with Detectron's schedule, torchvision's losses, COCOeval and the best ``val_AP``."""

    command = "senet detect train"
    resume_rules = RESUME_RULES
    best_keys = ("val_AP", "val_AP50")
    higher_is_better = True
    data_name = "images"
    epoch_line = (
        "loss {train_loss:.4f}  val AP {val_AP:.4f}  AP50 {val_AP50:.4f}  AP75 {val_AP75:.4f}  {lr_text}  "
        "{images_per_s:.1f} img/s  eval {eval_time_s:.1f}s"
    )
    train_set: CocoDetection
    val_set: CocoDetection

    def __init__(self, config: DetectionConfig) -> None:
        self.config = config

    def check(self, resume: str | Path | Checkpoint | None) -> None:
        if isinstance(resume, Checkpoint):
            detection_checkpoint(resume)
        check_detector_options(self.config)

    def adopt(self, checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:
            detection_checkpoint(checkpoint)

    def build_data(self) -> int:
        config = self.config
        datasets = coco_datasets(
            config.data,
            train_ann=config.train_ann,
            train_images=config.train_images,
            val_ann=config.val_ann,
            val_images=config.val_images,
            strict=config.strict_data,
            flip_prob=config.flip_prob,
        )
        self.train_set, self.val_set = datasets["train"], datasets["val"]
        self.categories = self.train_set.categories
        if not len(self.train_set):
            raise ValueError(f"{self.train_set.annotation_file}: no training image holds a non-crowd box")
        if not len(self.val_set):
            raise ValueError(f"{self.val_set.annotation_file}: no validation image to evaluate on")
        return len(self.train_set)

    def build_model(self, checkpoint: Checkpoint | None) -> nn.Module:
        categories = self.categories
        if checkpoint is None:
            return build_detector(
                self.config.backbone, num_classes=categories.num_classes, **self.config.detector_kwargs()
            )
        saved = CategoryMap.from_dict(checkpoint.meta["categories"])
        if saved != categories:
            raise ValueError(
                f"{self.train_set.annotation_file}: categories {list(categories.names)} differ from the "
                f"checkpoint's {list(saved.names)}"
            )
        net, _, _ = load_detector(checkpoint)
        return net

    def loaders(self, batch: int) -> tuple[Any, Any]:
        cuda = self.device.type == "cuda"
        common = dict(batch_size=batch, workers=self.config.workers, pin_memory=cuda, collate_fn=collate)
        train_loader = build_loader(
            self.train_set,
            train=True,
            seed=self.config.seed,
            distributed=self.ctx.world_size > 1,
            **common,  # type: ignore[arg-type]
        )
        val_set = val_shard(self.val_set, self.ctx)
        val_loader = build_loader(val_set, train=False, **common)  # type: ignore[arg-type]
        return train_loader, val_loader

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            [p for p in net.parameters() if p.requires_grad],  # frozen stages and BatchNorms stay out
            lr=self.config.scaled_lr(),
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )

    def lr_factors(self, steps_per_epoch: int) -> list[Callable[[int], float]]:
        return [lr_factor(self.config, steps_per_epoch)]

    def describe(self, run_dir: Path, steps_per_epoch: int) -> str:
        config = self.config
        milestones = ", ".join(f"{m:g}" for m in config.milestones)
        return (
            f"run {run_dir}: Faster R-CNN + FPN on {config.backbone}"
            f"{f' from {config.pretrained}' if config.pretrained else ''} "
            f"({len(self.train_set)} train / {len(self.val_set)} val images, "
            f"{self.categories.num_classes} categories), {self.ctx.world_size} process(es) on {self.device}, "
            f"lr {config.scaled_lr():g} (batch {config.batch_size}), {config.epochs} epochs, "
            f"lr x {config.gamma:g} after epochs {milestones}, "
            f"warm-up {config.warmup_steps(config.epochs * steps_per_epoch)} steps"
        )

    # The detector's frozen stages stay in eval mode through model.train() (StagedNetwork.train).

    def meter(self, state: dict[str, Any] | None) -> _LossMeter:
        return _LossMeter(self.device, state)

    def feeder(self, batches: Iterator[Any]) -> HostFeeder:
        return HostFeeder(batches, lambda images, targets: _to_device(images, targets, self.device))

    def is_empty(self, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> bool:
        return not images

    def step(
        self, model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, tuple]:
        with autocast(self.device, self.config.amp):
            losses = model(images, targets)
        loss = sum(value.float() for value in losses.values())
        assert isinstance(loss, torch.Tensor)
        return loss, (losses, loss, len(images))

    def evaluate(self, model: nn.Module, loader: Any, control: RunControl) -> dict[str, Any]:
        # Through DDP: rank 0's BatchNorm statistics on every rank.
        return evaluate(
            model,
            loader,
            self.val_set,
            self.device,
            ctx=self.ctx,
            log_interval=self.config.log_interval,
            control=control,
        )

    def epoch_fields(self, eval_time: float) -> dict[str, Any]:
        return {"eval_time_s": eval_time}

    def checkpoint_meta(self, net: nn.Module) -> dict[str, Any]:
        categories = self.categories
        return {
            "task": TASK,
            "config": self.config.to_dict(),
            "model": self.config.backbone,
            "num_classes": categories.num_classes,
            "classes": list(categories.names),
            "categories": categories.as_dict(),
            "build_options": net.build_options,
        }
