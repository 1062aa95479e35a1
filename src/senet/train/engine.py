"""The training and evaluation engine: one code path for one process and for ``torchrun`` (PyTorch DDP).

``train(config)`` builds data, model, optimizer and schedule from a :class:`TrainConfig`, trains, evaluates
after every epoch, writes one JSON line per epoch and a checkpoint per epoch into the run directory, and
resumes exactly from a checkpoint. Under ``torchrun`` each process trains on its shard of the data, DDP
averages the gradients, evaluation metrics are summed over all processes, and only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from senet.data import DataSpec, build_data, build_loader
from senet.models.registry import create_model
from senet.train.checkpoint import (
    BEST_NAME,
    Checkpoint,
    load_checkpoint,
    load_weights_into,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from senet.train.config import TrainConfig

log = logging.getLogger("senet.train")

# Fields that define what is trained: a checkpoint whose values differ belongs to another run.
IDENTITY_FIELDS = ("model", "model_options", "data")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(values)
        return values


# -- set-up -------------------------------------------------------------------------------------------

def _init_distributed(device_type: str) -> _Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; a distributed run uses the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")
        if name == "cuda" and local_rank >= torch.cuda.device_count():
            raise ValueError(f"process with LOCAL_RANK {local_rank} needs a GPU of its own, but {torch.cuda.device_count()} "
                             "are visible; start at most one process per GPU")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _new_run_dir(config: TrainConfig) -> Path:
    if config.output:
        return Path(config.output)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{stamp}-{config.model}"


def _setup_logging(run_dir: Path) -> list[logging.Handler]:
    """Rank 0 logs to stdout and to ``train.log`` in the run directory; other ranks stay quiet."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "train.log")]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handlers


def _lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a function of the optimizer step (per-iteration, so milestones may fall mid-epoch)."""

    def factor(step: int) -> float:
        epoch = step / steps_per_epoch
        if epoch < config.warmup_epochs:
            return (step + 1) / (config.warmup_epochs * steps_per_epoch)
        if config.schedule == "step":
            return config.gamma ** math.floor(epoch / config.step_epochs)
        if config.schedule == "multistep":
            return config.gamma ** sum(epoch >= m for m in config.milestones)
        return 0.5 * (1 + math.cos(math.pi * min(epoch / config.epochs, 1.0)))

    return factor


def _bn_lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """BatchNorm parameters follow the schedule, then stop for the last ``freeze_bn_epochs`` (SENet-154, appendix f)."""
    base = _lr_factor(config, steps_per_epoch)
    return lambda step: 0.0 if _bn_frozen(config, step // steps_per_epoch) else base(step)


def _bn_frozen(config: TrainConfig, epoch: int) -> bool:
    return config.freeze_bn_epochs > 0 and epoch >= config.epochs - config.freeze_bn_epochs


def _split_bn_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) not in bn_ids], [p for p in params if id(p) in bn_ids]


def build_model(config: TrainConfig, spec: DataSpec) -> nn.Module:
    options = dict(config.model_options)
    if config.drop_rate is not None:
        options["drop_rate"] = config.drop_rate
    return create_model(config.model, num_classes=spec.num_classes, in_chans=spec.in_chans, **options)


def _build_data(config: TrainConfig) -> DataSpec:
    return build_data(
        config.data, root=config.data_root, image_size=config.image_size, eval_crop=config.eval_crop,
        strict_data=config.strict_data, download=config.download, cutout=config.cutout,
    )


def val_shard(dataset: Any, ctx: _Dist) -> Any:
    """Every rank evaluates a disjoint slice; no padding, so summed metrics count each image once."""
    return dataset if ctx.world_size == 1 else Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))


# -- metrics ------------------------------------------------------------------------------------------

def _forward(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Logits, or for multi-crop batches (N, K, C, H, W) the mean softmax over the K crops."""
    if images.dim() == 5:
        n, k = images.shape[:2]
        logits = model(images.flatten(0, 1)).float()
        return logits.softmax(-1).view(n, k, -1).mean(1), True
    return model(images).float(), False


def _topk_correct(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(5, scores.shape[1])
    hits = scores.topk(k, dim=1).indices == targets[:, None]
    return hits[:, 0].sum(), hits.any(dim=1).sum()


class _Meter:
    """Sums of loss, top-1/top-5 hits and counts, reduced over ranks at the end."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, top1 hits, top5 hits, n
        self.skipped = 0

    def add(self, loss: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> None:
        top1, top5 = _topk_correct(scores.detach(), targets)
        n = targets.numel()
        self.sums += torch.stack([loss.detach().double() * n, top1.double(), top5.double(), torch.tensor(float(n), dtype=torch.float64, device=self.sums.device)])

    def result(self, ctx: _Dist, prefix: str) -> dict[str, float]:
        sums = ctx.sum(self.sums.clone())
        skipped = int(ctx.sum(torch.tensor([self.skipped], dtype=torch.float64, device=sums.device)).item())
        loss, top1, top5, n = sums.tolist()
        n = max(n, 1.0)
        return {f"{prefix}_loss": loss / n, f"{prefix}_top1_err": 100 * (1 - top1 / n),
                f"{prefix}_top5_err": 100 * (1 - top5 / n), f"{prefix}_images": int(n), f"{prefix}_skipped": skipped}


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CPU, fp16 on CUDA (paired with a gradient scaler in training)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False, channels_last: bool = False,
    ctx: _Dist = _Dist(), prefix: str = "val", log_interval: int = 0,
) -> dict[str, float]:
    """Loss and top-1/top-5 error (in %) over ``loader``, summed over all processes of a distributed run."""
    model.eval()
    meter = _Meter(device)
    for images, targets, skipped in _progress(loader, f"{prefix}", log_interval, ctx.is_main):
        meter.skipped += skipped
        if targets.numel() == 0:
            continue
        images, targets = _to_device(images, targets, device, channels_last)
        with autocast(device, amp):
            scores, are_probs = _forward(model, images)
        loss = nn.functional.nll_loss(scores.clamp_min(1e-12).log(), targets) if are_probs else nn.functional.cross_entropy(scores, targets)
        meter.add(loss, scores, targets)
    return meter.result(ctx, prefix)


@torch.no_grad()
def predict_proba(
    model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False, channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs (averaged over crops for multi-crop batches) and targets of a whole loader, on CPU."""
    model.eval()
    probs, labels = [], []
    for images, targets, _ in _progress(loader, "predict", 0, True):
        if targets.numel() == 0:
            continue
        images, targets = _to_device(images, targets, device, channels_last)
        with autocast(device, amp):
            scores, are_probs = _forward(model, images)
        probs.append((scores if are_probs else scores.softmax(-1)).cpu())
        labels.append(targets.cpu())
    return torch.cat(probs), torch.cat(labels)


# -- progress -----------------------------------------------------------------------------------------

def _progress(iterable: Iterable, desc: str, log_interval: int, enabled: bool) -> Iterator:
    """A tqdm bar on a terminal; plain lines every ``log_interval`` batches otherwise (CI logs, files)."""
    total = len(iterable) if hasattr(iterable, "__len__") else None
    if not enabled:
        yield from iterable
    elif sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    else:
        start = time.perf_counter()
        for i, item in enumerate(iterable, 1):
            yield item
            if log_interval and (i % log_interval == 0 or i == total):
                log.info(f"  {desc} {i}/{total} ({time.perf_counter() - start:.1f}s)")


# -- training -----------------------------------------------------------------------------------------

def _check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse a checkpoint of another model, options or dataset, naming what differs."""
    ours = json.loads(json.dumps(config.to_dict()))  # as the checkpoint stored it (tuples become lists)
    differs = [f"{name}: checkpoint {saved.get(name)!r} vs {ours[name]!r}" for name in IDENTITY_FIELDS
               if saved.get(name) != ours[name]]
    if differs:
        raise ValueError(f"checkpoint belongs to another run ({'; '.join(differs)})")


def train(
    config: TrainConfig,
    resume: str | Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Train ``config.model`` on ``config.data``; ``resume`` continues a run directory exactly where it stopped.

    ``on_step(epoch, batch)`` is called after every optimizer step (progress hooks, tests).
    Raises :class:`TrainingDiverged` on a NaN/inf loss, after logging which checkpoint is the last good one.
    A ``KeyboardInterrupt`` saves a checkpoint of the interrupted epoch and is re-raised.
    """
    device_name = config.device
    ctx = _init_distributed(resolve_device(device_name).type)
    device = resolve_device(device_name, ctx.local_rank)
    checkpoint: Checkpoint | None = load_checkpoint(resume) if resume is not None else None
    if checkpoint is not None:
        _check_resumable(checkpoint.meta["config"], config)
    run_dir = checkpoint.run_dir if checkpoint is not None else _new_run_dir(config)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    handlers = _setup_logging(run_dir) if ctx.is_main else []
    try:
        return _train(config, ctx, device, run_dir, checkpoint, on_step)
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


def _train(
    config: TrainConfig, ctx: _Dist, device: torch.device, run_dir: Path, checkpoint: Checkpoint | None,
    on_step: Callable[[int, int], None] | None,
) -> RunResult:
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch size {config.batch_size} does not split over {ctx.world_size} processes")
    seed_everything(config.seed)  # same initial weights on every rank
    spec = _build_data(config)
    net = build_model(config, spec).to(device)
    if checkpoint is not None:
        if checkpoint.meta.get("num_classes") != spec.num_classes:
            raise ValueError(f"checkpoint has {checkpoint.meta.get('num_classes')} classes, the data {spec.num_classes}")
        load_weights_into(net, checkpoint.model_state(), str(checkpoint.run_dir))
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    seed_everything(config.seed + ctx.rank)  # different augmentation and shuffling streams per rank

    per_rank_batch = config.batch_size // ctx.world_size
    train_loader = build_loader(
        spec.train, batch_size=per_rank_batch, train=True, workers=config.workers, seed=config.seed,
        distributed=ctx.world_size > 1, balanced_targets=spec.train_targets if config.balanced_sampling else None,
        pin_memory=device.type == "cuda",
    )
    val_loader = build_loader(val_shard(spec.val, ctx), batch_size=per_rank_batch, train=False,
                              workers=config.workers, pin_memory=device.type == "cuda")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(spec.train)} training images give no full batch of {per_rank_batch}; lower --batch-size")

    model: nn.Module = torch.compile(net) if config.compile else net
    if ctx.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    other, bn = _split_bn_params(net)
    optimizer = torch.optim.SGD(
        [{"params": other}, {"params": bn}], lr=config.scaled_lr(), momentum=config.momentum,
        nesterov=config.nesterov, weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [_lr_factor(config, steps_per_epoch), _bn_lr_factor(config, steps_per_epoch)]
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    start_epoch, skip_batches, step, history, best = 0, 0, 0, [], {}
    if checkpoint is not None:
        meta = checkpoint.meta
        optimizer.load_state_dict(checkpoint.optimizer_state())
        scheduler.load_state_dict(meta["scheduler"])
        # The saved lr belongs to the saved config; this run's schedule (e.g. more epochs) decides from here.
        for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(scheduler.last_epoch)
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        start_epoch, skip_batches, step = meta["epoch"], meta["batches_done"], meta["step"]
        history, best = meta.get("history", []), meta.get("best", {})
        if skip_batches == 0:
            set_rng_state(checkpoint.tensors, meta["rng"])
        if ctx.is_main:
            log.info(f"resuming {run_dir} at epoch {start_epoch + 1}, batch {skip_batches} (step {step})")

    def save(epoch: int, batches_done: int) -> None:
        if ctx.is_main:
            save_checkpoint(run_dir, model=net, optimizer=optimizer, meta={
                "config": config.to_dict(), "model": config.model, "num_classes": spec.num_classes,
                "classes": spec.classes, "in_chans": spec.in_chans, "epoch": epoch, "batches_done": batches_done,
                "step": step, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "history": history, "best": best,
            })

    if ctx.is_main:
        log.info(f"run {run_dir}: {config.model} on {spec.name} ({len(spec.train)} train / {len(spec.val)} val images, "
                 f"{spec.num_classes} classes), {ctx.world_size} process(es) on {device}, lr {config.scaled_lr():g}, "
                 f"batch {config.batch_size}, {config.epochs} epochs")

    for epoch in range(start_epoch, config.epochs):
        sampler = train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        if _bn_frozen(config, epoch):
            for module in net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        meter = _Meter(device)
        started = time.perf_counter()
        batch = 0
        try:
            batches = iter(train_loader)
            for _ in range(skip_batches):  # a run interrupted mid-epoch: replay the data order, then the RNG
                next(batches)
            if skip_batches:
                set_rng_state(checkpoint.tensors, checkpoint.meta["rng"])
            batch = skip_batches
            for images, targets, skipped in _progress(batches, f"epoch {epoch + 1}/{config.epochs}", config.log_interval, ctx.is_main):
                meter.skipped += skipped
                if targets.numel() == 0 and ctx.world_size == 1:
                    continue  # every image of this batch was unreadable (and skipped, as counted)
                images, targets = _to_device(images, targets, device, config.channels_last)
                with autocast(device, config.amp):
                    logits = model(images)
                    loss = criterion(logits.float(), targets)
                if not torch.isfinite(loss):
                    last = f"{run_dir}/checkpoint.json (after epoch {epoch})" if (run_dir / "checkpoint.json").exists() else "none yet"
                    raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, batch {batch + 1}; training "
                                           f"stopped, last good checkpoint: {last}. Lower --lr or check the data.")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                batch += 1
                meter.add(loss, logits.float(), targets)
                if on_step is not None:
                    on_step(epoch, batch)
        except KeyboardInterrupt:
            save(epoch, batch)
            if ctx.is_main:
                log.info(f"interrupted: saved epoch {epoch + 1} batch {batch} to {run_dir}; continue with "
                         f"`senet train --resume {run_dir}`")
            raise
        skip_batches = 0
        elapsed = time.perf_counter() - started
        train_metrics = meter.result(ctx, "train")
        val_metrics = evaluate(model, val_loader, device, amp=config.amp, channels_last=config.channels_last, ctx=ctx)
        record = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"], **train_metrics,
                  **val_metrics, "images_per_s": train_metrics["train_images"] / elapsed, "epoch_time_s": elapsed}
        history.append(record)
        improved = not best or record["val_top1_err"] < best["val_top1_err"]
        if improved:
            best = {"epoch": epoch + 1, "val_top1_err": record["val_top1_err"], "val_top5_err": record["val_top5_err"]}
        if ctx.is_main:
            with open(run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            if improved:
                save_weights(run_dir / BEST_NAME, net)
            skipped = record["train_skipped"] + record["val_skipped"]
            log.info(f"epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  "
                     f"train top-1 err {record['train_top1_err']:.2f}%  val top-1 err {record['val_top1_err']:.2f}%  "
                     f"top-5 err {record['val_top5_err']:.2f}%  lr {record['lr']:.4g}  "
                     f"{record['images_per_s']:.0f} img/s" + (f"  skipped {skipped} unreadable images" if skipped else ""))
        save(epoch + 1, 0)
    return RunResult(run_dir, net, history, best)
