"""The training and evaluation engine: one code path for one process and for ``torchrun`` (PyTorch DDP).

``train(config)`` builds data, model, optimizer and schedule from a :class:`TrainConfig`, trains, evaluates
after every epoch, writes one JSON line per epoch and a checkpoint per epoch (and, if asked, every N steps or
minutes) into the run directory, and resumes exactly from any checkpoint. SIGINT, SIGTERM and SIGUSR1 stop
it at a step boundary after a checkpoint (see ``control.py``). Under ``torchrun`` each process trains on its
shard of the data, DDP averages the gradients, metrics are summed over all processes, and only rank 0 writes.

The detection engine (``senet.detection.engine``) runs on the same machinery: :func:`setup_device` (and the
process group's end with the process), :func:`writing_run_dir` (one writer per run directory),
:class:`TrainingRun` (position, resume, checkpoints, stop signals, the finite check of losses and weights),
:class:`Meter`, :func:`progress_bar`, :func:`check_batches`, :func:`finished_run`, :func:`val_shard`,
:func:`autocast` and :func:`lr_text`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from senet.data import DataSpec, build_data, build_loader
from senet.data.device_pipeline import (
    DeviceLoader,
    convert_on_device,
    decodes_on_device,
    device_pipeline_datasets,
)
from senet.data.loaders import shutdown_workers
from senet.models.registry import create_model
from senet.runtime import Dist, autocast, mark_run_failed, progress_bar, seed_everything, setup_device
from senet.train.checkpoint import (
    BEST_NAME,
    Checkpoint,
    RngState,
    list_checkpoints,
    load_weights_into,
    rng_state,
    save_checkpoint,
    save_weights,
)
from senet.train.config import TrainConfig
from senet.train.control import RunControl, StopRequested, TrainingInterrupted
from senet.train.feed import DeviceFeeder, FiniteCheck, to_device
from senet.train.rundir import (
    METRICS_NAME,
    Changes,
    RunConfig,
    RunDirInUse,
    lock_run_dir,
    open_run_dir,
    prepare_run_dir,
    reconcile,
)

log = logging.getLogger("senet.train")


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def writing_run_dir(
    run_dir: Path, config: RunConfig, checkpoint: Checkpoint | None, ctx: Dist, command: str
) -> Iterator[None]:
    """The run writes ``run_dir`` (checked and decided by ``prepare_run_dir``) inside this block: rank 0 locks
    it for the rest of the run (:func:`senet.train.rundir.lock_run_dir`; every rank learns whether it could,
    so a refused run stops on every rank and never touches a live run's files), then creates or tidies it
    (``open_run_dir``) and logs into it. A run that ends in an error makes the process group abort at exit.

    Under ``torchrun`` only rank 0 locks: the lock ends with its process, so a worker group that torchrun
    restarts after a failure takes it again."""
    refusal, lock = None, None
    if ctx.is_main:
        try:
            lock = lock_run_dir(run_dir, command)
        except RunDirInUse as error:
            refusal = str(error)
    if ctx.world_size > 1:  # also a barrier: every rank has read the directory before rank 0 changes it
        box = [refusal]
        dist.broadcast_object_list(box, src=0)
        refusal = box[0]
    if refusal is not None:
        raise RunDirInUse(refusal)
    handlers: list[logging.Handler] = []
    try:
        if ctx.is_main:
            open_run_dir(run_dir, config, checkpoint)
            handlers = setup_logging(run_dir)
        yield
    except BaseException:
        mark_run_failed()
        raise
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        if lock is not None:
            lock.release()


def setup_logging(run_dir: Path) -> list[logging.Handler]:
    """Rank 0 logs to stdout and to ``train.log`` in the run directory; other ranks stay quiet."""
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stdout),
        logging.FileHandler(run_dir / "train.log"),
    ]
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
        if epoch < config.warmup_epochs:  # the last warm-up step may end mid-way: never above the base rate
            return min((step + 1) / (config.warmup_epochs * steps_per_epoch), 1.0)
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
    bn_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    params = list(model.parameters())
    return [p for p in params if id(p) not in bn_ids], [p for p in params if id(p) in bn_ids]


def model_build_options(config: TrainConfig) -> dict[str, Any]:
    """The build options of a run's model, besides what its data sets (classes, input channels)."""
    options = dict(config.model_options)
    if config.drop_rate is not None:
        options["drop_rate"] = config.drop_rate
    return options


def build_model(config: TrainConfig, spec: DataSpec, pretrained: bool = False) -> nn.Module:
    """The run's network; with ``pretrained``, initialised from ``config.pretrained`` (a new classifier where the
    data has another class count)."""
    options = model_build_options(config)
    if pretrained and config.pretrained:
        from senet.weights.pretrained import load_pretrained

        return load_pretrained(
            config.pretrained,
            model=config.model,
            num_classes=spec.num_classes,
            in_chans=spec.in_chans,
            **options,
        )
    return create_model(config.model, num_classes=spec.num_classes, in_chans=spec.in_chans, **options)


def with_pretrained_options(config: TrainConfig, checkpoint: Checkpoint | None = None) -> TrainConfig:
    """``config`` with the build options that ``config.pretrained``'s weights need (e.g. torchvision's layout)
    written into its ``model_options``: saved with every checkpoint, they make resume, evaluation, prediction
    and export rebuild the network the weights belong to. Contradicting options are refused.

    A run resumed from ``checkpoint`` that started from the same weights takes them from its saved config (the
    weights file may be gone by now); options given now that contradict them fail the resume's identity check.
    """
    if not config.pretrained:
        return config
    saved = checkpoint.meta["config"] if checkpoint is not None else {}
    if saved.get("pretrained") == config.pretrained:
        options = {**saved["model_options"], **config.model_options}
    else:
        from senet.weights.pretrained import pretrained_build_options

        options = pretrained_build_options(config.pretrained, config.model, config.model_options)
    data_set = ("in_chans", "num_classes")  # set by the data (and checked against the weights when loading)
    return dataclasses.replace(config, model_options={k: v for k, v in options.items() if k not in data_set})


def _build_data(config: TrainConfig) -> DataSpec:
    return build_data(
        config.data,
        root=config.data_root,
        image_size=config.image_size,
        eval_crop=config.eval_crop,
        strict_data=config.strict_data,
        download=config.download,
        cutout=config.cutout,
    )


def _loaders(config: TrainConfig, ctx: Dist, device: torch.device, spec: DataSpec, batch: int) -> tuple:
    """The train and val loaders: images decoded and augmented in the workers (``loader="cpu"``; on CUDA they
    send uint8 batches, converted and normalised on the device), or only read there and finished on the
    device (``"gpu"``; ``"auto"``: on CUDA, for image folders and their shards)."""
    cuda = device.type == "cuda"
    gpu = config.loader == "gpu" or (config.loader == "auto" and cuda and decodes_on_device(spec))
    if gpu:
        train, val, pipeline = device_pipeline_datasets(spec)
        parts = [(train, pipeline), (val, pipeline)]
    elif cuda:  # a quarter of float32's bytes to pin and copy
        parts = [convert_on_device(split) or (split, None) for split in (spec.train, spec.val)]
    else:
        parts = [(spec.train, None), (spec.val, None)]
    (train, train_finish), (val, val_finish) = parts
    common = dict(batch_size=batch, workers=config.workers, pin_memory=cuda)
    loaders = (
        build_loader(
            train,
            train=True,
            seed=config.seed,
            distributed=ctx.world_size > 1,
            balanced_targets=spec.train_targets if config.balanced_sampling else None,
            collate_fn=train_finish.collate if train_finish else None,
            **common,
        ),
        build_loader(
            val_shard(val, ctx), train=False, collate_fn=val_finish.collate if val_finish else None, **common
        ),
    )
    return tuple(
        loader if finish is None else DeviceLoader(loader, finish, device, config.channels_last)
        for loader, finish in zip(loaders, (train_finish, val_finish))
    )


def val_shard(dataset: Any, ctx: Dist) -> Any:
    """Every rank evaluates a disjoint part; no padding, so summed metrics count each image once.

    Shards (a dataset with ``shard_sizes``) are cut into contiguous parts of their stored order, as equal as
    can be: each rank reads its own run of shards in order, sharing at most the shard at each end of its
    part with a neighbour (whole shards per rank could leave ranks idle, or twice as busy as others). Other
    data is strided."""
    if ctx.world_size == 1:
        return dataset
    if getattr(dataset, "shard_sizes", None) is not None:
        total = len(dataset)
        start, stop = total * ctx.rank // ctx.world_size, total * (ctx.rank + 1) // ctx.world_size
        return Subset(dataset, range(start, stop))
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))


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


class Meter:
    """``width`` sums over an epoch's batches (float64, on the device) and the unreadable images skipped,
    reduced over the ranks when read; a resumed epoch starts from the sums saved mid-epoch (``state``, as
    :meth:`totals` returned them). Subclasses say what they sum (``add``) and what it means (``result``)."""

    width = 4

    def __init__(self, device: torch.device, state: dict[str, Any] | None = None) -> None:
        sums = state["sums"] if state else [0.0] * self.width
        self.sums = torch.tensor(sums, dtype=torch.float64, device=device)
        self.skipped = state["skipped"] if state else 0

    def totals(self, ctx: Dist) -> dict[str, Any]:
        """The sums over all ranks, as saved in a checkpoint (every rank must call this)."""
        sums = ctx.sum(
            torch.cat(
                [self.sums, torch.tensor([float(self.skipped)], dtype=torch.float64, device=self.sums.device)]
            )
        )
        *totals, skipped = sums.tolist()
        return {"sums": totals, "skipped": int(skipped)}


class _Meter(Meter):
    """Sums of loss, top-1/top-5 hits and counts: loss*n, top1 hits, top5 hits, n."""

    def add(self, loss: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> None:
        top1, top5 = _topk_correct(scores.detach(), targets)
        n = torch.tensor(float(targets.numel()), dtype=torch.float64, device=self.sums.device)
        self.sums += torch.stack([loss.detach().double() * n, top1.double(), top5.double(), n])

    def result(self, ctx: Dist, prefix: str) -> dict[str, float]:
        totals = self.totals(ctx)
        loss, top1, top5, n = totals["sums"]
        seen = max(n, 1.0)
        return {
            f"{prefix}_loss": loss / seen,
            f"{prefix}_top1_err": 100 * (1 - top1 / seen),
            f"{prefix}_top5_err": 100 * (1 - top5 / seen),
            f"{prefix}_images": int(n),
            f"{prefix}_skipped": totals["skipped"],
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    ctx: Dist = Dist(),
    prefix: str = "val",
    log_interval: int = 0,
    control: RunControl | None = None,
) -> dict[str, float]:
    """Loss and top-1/top-5 error (in %) over ``loader``, summed over all processes of a distributed run.

    ``amp``: autocast the forward pass (faster on GPUs, but low-precision logits can tie, so a run validates
    in float32 whatever its ``amp``). With ``control``, a stop signal ends evaluation early
    (:class:`StopRequested`) on every rank.
    """
    model.eval()
    meter = _Meter(device)
    # Ranks' shards may differ by a batch: they agree on stopping only over the batches all of them have.
    polls = control.min_over_ranks(len(loader)) if control is not None else 0
    for index, (images, targets, skipped) in enumerate(
        progress_bar(loader, f"{prefix}", log_interval, ctx.is_main)
    ):
        if index < polls:
            control.check_stop()  # type: ignore[union-attr]
        meter.skipped += skipped
        if targets.numel() == 0:
            continue
        images, targets = to_device(images, targets, device, channels_last)
        with autocast(device, amp):
            scores, are_probs = _forward(model, images)
        if are_probs:
            loss = nn.functional.nll_loss(scores.clamp_min(1e-12).log(), targets)
        else:
            loss = nn.functional.cross_entropy(scores, targets)
        meter.add(loss, scores, targets)
    return meter.result(ctx, prefix)


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs (averaged over crops for multi-crop batches) and targets of a whole loader, on CPU."""
    model.eval()
    probs, labels = [], []
    for images, targets, _ in progress_bar(loader, "predict", 0, True):
        if targets.numel() == 0:
            continue
        images, targets = to_device(images, targets, device, channels_last)
        with autocast(device, amp):
            scores, are_probs = _forward(model, images)
        probs.append((scores if are_probs else scores.softmax(-1)).cpu())
        labels.append(targets.cpu())
    return torch.cat(probs), torch.cat(labels)


# -- training -----------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    resume: str | Path | Checkpoint | None = None,
    *,
    overwrite: bool = False,
    extend_schedule: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Train ``config.model`` on ``config.data``; ``resume`` continues a run exactly where it stopped.

    Args:
        resume: a run directory (continued from its newest complete checkpoint) or a loaded checkpoint, or
            ``"auto"``: the run in ``config.output`` if it has a checkpoint, else a new run there (a requeued
            job reruns one command).
        overwrite: replace the run already in ``config.output`` (without it, an existing run is refused).
        extend_schedule: let a resumed run change its schedule (epochs, lr, batch size, ...); the learning rate
            follows the new schedule from where the run stands.
        on_step: ``on_step(epoch, batch)`` after every optimizer step (progress hooks, tests).

    Model, options, data and run directory are all checked before anything is written; a run directory that
    another live process writes is refused (:class:`senet.train.rundir.RunDirInUse`). Raises
    :class:`TrainingDiverged` on a NaN/inf loss or weights, and :class:`TrainingInterrupted` when SIGINT,
    SIGTERM or SIGUSR1 stopped training at a step boundary (after saving a checkpoint there).
    """
    ctx, device = setup_device(config.device)
    run_dir, checkpoint = prepare_run_dir(config, resume, overwrite)
    config = with_pretrained_options(config, checkpoint)
    changes = Changes({})
    if checkpoint is not None:
        changes = reconcile(
            checkpoint.meta["config"],
            config,
            extend_schedule=extend_schedule,
            mid_epoch=checkpoint.meta["batches_done"] > 0,
        )
    seed_everything(config.seed)  # same initial weights on every rank
    spec = _build_data(config)
    check_batches(config.batch_size, len(spec.train), ctx)
    net = build_model(config, spec, pretrained=checkpoint is None).to(device)
    if checkpoint is not None:
        if checkpoint.meta["num_classes"] != spec.num_classes:
            raise ValueError(
                f"checkpoint has {checkpoint.meta['num_classes']} classes, the data {spec.num_classes}"
            )
        load_weights_into(net, checkpoint.model_state(), str(checkpoint.path))
        if checkpoint.position >= (config.epochs, 0):
            return finished_run(config, run_dir, checkpoint, net, ctx)
    run = None
    with writing_run_dir(run_dir, config, checkpoint, ctx, _Run.command):
        try:
            with RunControl(ctx.world_size, config.save_every_steps, config.save_every_minutes) as control:
                run = _Run(config, ctx, device, run_dir, spec, net, control, on_step)
                if checkpoint is not None:
                    run.restore(checkpoint, changes)
                return run.run()
        finally:
            # The loaders' workers end with the run, not whenever the loaders are collected.
            if run is not None:
                for loader in (run.train_loader, run.val_loader):
                    shutdown_workers(getattr(loader, "loader", loader))  # a DeviceLoader wraps its loader


def lr_text(record: dict[str, Any]) -> str:
    """An epoch's rates for its log line: "lr 0.1", or "lr 0.025 to 6.03e-05" where the schedule moved."""
    first, last = record["lr"], record["lr_last"]
    return f"lr {first:.4g}" if f"{first:.4g}" == f"{last:.4g}" else f"lr {first:.4g} to {last:.4g}"


def check_batches(batch_size: int, train_images: int, ctx: Dist) -> None:
    """The global batch splits over the processes and the training split fills at least one batch."""
    if batch_size % ctx.world_size:
        raise ValueError(f"batch size {batch_size} does not split over {ctx.world_size} processes")
    per_rank = batch_size // ctx.world_size
    if math.ceil(train_images / ctx.world_size) < per_rank:  # each rank's shard, as the samplers cut it
        raise ValueError(
            f"{train_images} training images give no full batch of {batch_size}; lower --batch-size"
        )


def finished_run(config: Any, run_dir: Path, checkpoint: Checkpoint, net: nn.Module, ctx: Dist) -> RunResult:
    """A resumed run that has nothing left to do says so and leaves its files as they are."""
    epoch, batches = checkpoint.position
    if (epoch, batches) > (config.epochs, 0):
        raise ValueError(
            f"{run_dir} has trained {epoch} epochs, more than --epochs {config.epochs}; "
            "give at least that many"
        )
    if ctx.is_main:
        print(
            f"{run_dir} has finished all {config.epochs} epochs; nothing to do (to train longer, resume with "
            "a larger --epochs and --extend-schedule)"
        )
    meta = checkpoint.meta
    return RunResult(run_dir, net, meta["history"], meta["best"])


def _schedule_plan(
    config: Any, steps_per_epoch: int, epoch: int, batch: int, factor: Callable[[int], float]
) -> str:
    """'lr 0.05 now; at the start of epoch 5: 0.04, ...': what the learning rate does from here."""
    lr = config.scaled_lr()
    now = lr * factor(epoch * steps_per_epoch + batch)
    upcoming = [
        f"epoch {e + 1}: {lr * factor(e * steps_per_epoch):.4g}" for e in range(epoch + 1, config.epochs)
    ]
    more = f", ... until epoch {config.epochs}" if len(upcoming) > 5 else ""
    return f"lr {now:.4g} now" + (f"; at the start of {', '.join(upcoming[:5])}{more}" if upcoming else "")


class TrainingRun:
    """What every training loop of the library shares (classification here, detection in
    ``senet.detection.engine``): the position in the run (epoch, batches done, optimizer steps), exact resume
    (optimizer, schedule, RNG of every rank, the epoch's sums), checkpoints gathered from every rank and
    written by rank 0, the stop at a step boundary, and the finite check of losses and weights.

    A subclass sets ``config`` (with ``keep``, ``seed``, ``epochs`` and ``scaled_lr()``), ``ctx``, ``device``,
    ``run_dir``, ``control``, ``net``, ``optimizer``, ``scheduler`` (a per-step ``LambdaLR`` over
    ``lr_factors``), ``scaler``, ``finite`` and ``steps_per_epoch``, calls :meth:`_start_position`, and writes
    ``_meta`` and its epochs. A meter passed to :meth:`save` has ``totals(ctx)`` (its sums over the ranks).

    Nothing diverged is ever written: every step's loss and the weights it left are checked finite (on the
    device, read every step on CPU and every 50 on CUDA, see ``senet.train.feed``), and the check is read
    before every save (periodic, on a signal, at the epoch's end and of ``best.safetensors``).
    """

    command = "senet train"  # what continues a stopped run, named in the stop message

    config: Any
    ctx: Dist
    device: torch.device
    run_dir: Path
    control: RunControl
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    lr_factors: list[Callable[[int], float]]
    scaler: torch.amp.GradScaler
    finite: FiniteCheck
    steps_per_epoch: int
    on_step: Callable[[int, int], None] | None

    def _start_position(self) -> None:
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.epoch_state: dict[str, Any] = {}  # train sums and time of the epoch in progress, when resumed
        self.resumed_from: Checkpoint | None = None
        self.saved_at: tuple[int, int] | None = None

    # -- one batch ---------------------------------------------------------------------------------------

    def _position_meta(self, epoch_state: dict[str, Any]) -> dict[str, Any]:
        """The part of a checkpoint's record that every task writes: where the run stands, the gradient
        scaler, the epochs so far and the sums of the epoch in progress."""
        return {
            "epoch": self.epoch,
            "batches_done": self.batch,
            "step": self.step,
            "world_size": self.ctx.world_size,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "history": self.history,
            "best": self.best,
            "epoch_state": epoch_state,
        }

    def _enter_batch(self, meter: Any, rng: Any, skipped: int, empty: bool, started: float) -> bool:
        """What every rank does before a batch, together (``control.poll``): stop (saving at this step), save,
        count the batch; False where some rank has no readable image in it, so every rank steps over it."""
        decision = self.control.poll(step=self.step, empty=empty)
        if decision.stop_signal:
            self.stop(decision.stop_signal, meter, rng, time.perf_counter() - started)
        if decision.save:
            self.save(meter, rng, time.perf_counter() - started)
        self.batch += 1
        meter.skipped += skipped
        if not decision.skip:
            return True
        if self.ctx.is_main:
            log.info(
                f"  epoch {self.epoch + 1} batch {self.batch}: no readable image on some process; "
                "batch skipped on all"
            )
        self._move_schedule_to(self.scheduler.last_epoch + 1)  # the rate follows the position, trained or not
        return False

    def _optimize(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss``, launched without waiting for the device (see senet.train.feed); the
        schedule moves with the step. The step's loss and the weights it left join the finite flag, which is
        read only when due."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        with torch.no_grad():
            weights = torch.nn.utils.get_total_norm(self._saved_weights, norm_type=1.0)
        self.finite.observe(self.step, loss, (self.epoch + 1, self.batch), weights)
        if self.finite.due():
            self._check_finite()

    @functools.cached_property
    def _saved_weights(self) -> list[torch.Tensor]:
        """The floating-point parameters and buffers a checkpoint saves; their L1 norm is finite exactly when
        all are. A NaN or infinite gradient that the optimizer applied shows there too (even at lr 0, as
        0 * nan is nan); one that the gradient scaler skipped changed nothing."""
        tensors = itertools.chain(self.net.parameters(), self.net.buffers())
        return [tensor for tensor in tensors if tensor.is_floating_point()]

    def _epoch_record(self, meter: Any, val_metrics: dict[str, Any], elapsed: float, what: str) -> dict:
        """The epoch's line of metrics.jsonl (position, rate, train sums over the ranks, validation, speed);
        an epoch in which no train or no val image could be read is refused, naming the ``what`` to fix."""
        train_metrics = meter.result(self.ctx, "train")
        for split, metrics in (("train", train_metrics), ("val", val_metrics)):
            if metrics[f"{split}_images"] == 0:
                raise ValueError(
                    f"no {split} image could be used in epoch {self.epoch + 1} "
                    f"({metrics[f'{split}_skipped']} unreadable, skipped): fix or replace the {split} {what}"
                )
        first = self.epoch * self.steps_per_epoch
        return {
            "epoch": self.epoch + 1,
            "step": self.step,
            # The rates of the epoch's first and last steps (the main parameter group's): what it trained at.
            "lr": self._scheduled_lr(first),
            "lr_last": self._scheduled_lr(first + self.steps_per_epoch - 1),
            **train_metrics,
            **val_metrics,
            "images_per_s": train_metrics["train_images"] / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
        }

    def _scheduled_lr(self, position: int) -> float:
        """The main parameter group's rate at ``position`` batches into the run, as the scheduler sets it."""
        return self.scheduler.base_lrs[0] * self.lr_factors[0](position)

    def _commit_epoch(self, record: dict, best: dict | None, summary: str) -> None:
        """End the epoch: ``record`` in the history, the best weights where ``best`` (the new best entry) is
        given, the checkpoint (the epoch's commit point), then its metrics.jsonl line (rewritten from the
        checkpoint on resume) and ``summary`` in the log. Nothing is written unless the weights are finite."""
        self._check_finite()
        self.history.append(record)
        if best is not None:
            self.best = best
            if self.ctx.is_main:
                save_weights(self.run_dir / BEST_NAME, self.net)
        self.epoch, self.batch = self.epoch + 1, 0
        self.save()
        if self.ctx.is_main:
            with open(self.run_dir / METRICS_NAME, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            skipped = record["train_skipped"] + record["val_skipped"]
            log.info(
                f"epoch {self.epoch}/{self.config.epochs}  {summary}"
                + (f"  skipped {skipped} unreadable images" if skipped else "")
            )

    def _after_step(self) -> None:
        """Once the step is counted in the meter: periodic saves, then the caller's ``on_step``."""
        self.control.after_step(self.step)
        if self.on_step is not None:
            self.on_step(self.epoch, self.batch)

    # -- resume and save ---------------------------------------------------------------------------------

    def restore(self, checkpoint: Checkpoint, changes: Changes) -> None:
        meta = checkpoint.meta
        self.epoch, self.batch = checkpoint.position
        if self.batch and meta["world_size"] != self.ctx.world_size:
            raise ValueError(
                f"{checkpoint.path} was saved mid-epoch by {meta['world_size']} process(es); resume it "
                f"with as many, or from an epoch-end checkpoint (this run has {self.ctx.world_size})"
            )
        self.optimizer.load_state_dict(checkpoint.optimizer_state())
        # The schedule is a pure function of the position in the run: recomputed, not loaded, so that a
        # schedule extended on resume (extend_schedule) takes effect from here.
        self._move_schedule_to(self.epoch * self.steps_per_epoch + self.batch)
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        self.step, self.history, self.best = meta["step"], meta["history"], meta["best"]
        # Rank 0 carries the epoch's sums over all ranks; the others restart theirs from zero.
        self.epoch_state = meta["epoch_state"] if self.ctx.is_main else {}
        self.resumed_from = checkpoint
        self.saved_at = checkpoint.position
        self.control.saved(self.step)
        if self.ctx.is_main:
            log.info(
                f"resuming {self.run_dir} at epoch {self.epoch + 1}, batch {self.batch} (step {self.step}) "
                f"from {checkpoint.path.name}"
            )
            if changes.fields:
                log.info(f"changed on resume: {changes}")
            if changes.schedule:
                log.info(
                    f"schedule recomputed for {self.config.epochs} epochs: "
                    + _schedule_plan(
                        self.config, self.steps_per_epoch, self.epoch, self.batch, self.lr_factors[0]
                    )
                )

    def _move_schedule_to(self, position: int) -> None:
        """Set the learning rates for ``position`` batches into the run, as ``position`` scheduler steps would."""
        self.scheduler.last_epoch = position
        for group, base_lr, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.lr_factors
        ):
            group["lr"] = base_lr * factor(position)

    def _restore_rng(self) -> None:
        checkpoint, self.resumed_from = self.resumed_from, None
        if checkpoint is None:
            return
        if self.ctx.rank < len(checkpoint.meta["rng"]):
            checkpoint.restore_rng(self.ctx.rank)
        else:  # more processes than the saved run (at an epoch boundary): a fresh stream for this rank
            seed_everything(self.config.seed + self.ctx.rank + 1_000_003 * self.epoch)

    def save(self, meter: Any = None, rng: RngState | None = None, elapsed: float = 0.0) -> Path | None:
        """Checkpoint the current position on rank 0; every rank calls this (it gathers every rank's state).

        ``rng``: the RNG state at this step boundary (taken before the next batch was drawn).
        """
        self._check_finite()  # a diverged state is never written
        rngs = self.control.gather(rng if rng is not None else rng_state())
        epoch_state = {**meter.totals(self.ctx), "elapsed_s": elapsed} if meter is not None else {}
        position = (self.epoch, self.batch)
        path, error = None, ""
        if self.ctx.is_main and position != self.saved_at:  # a boundary already saved holds the same state
            try:
                path = save_checkpoint(
                    self.run_dir,
                    model=self.net,
                    optimizer=self.optimizer,
                    rng=rngs,
                    keep=self.config.keep,
                    meta=self._meta(epoch_state),
                )
            except Exception as failure:  # noqa: BLE001 -- every rank must learn of it, or the others would hang
                error = f"{type(failure).__name__}: {failure}"
        if not self.control.min_over_ranks(int(not error)):
            raise ValueError(
                f"could not write a checkpoint into {self.run_dir} ({error or 'failed on rank 0'}); "
                "free some space or fix the permissions, then resume from the last checkpoint"
            )
        self.saved_at = position
        self.control.saved(self.step)
        return path

    def _meta(self, epoch_state: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint's JSON holds besides the tensors (see checkpoint._SCHEMA): each task's own."""
        raise NotImplementedError

    def stop(self, signum: int, meter: Any = None, rng: RngState | None = None, elapsed: float = 0.0) -> None:
        """Save at this step boundary and raise :class:`TrainingInterrupted` (on every rank)."""
        name = signal.Signals(signum).name
        where = f"epoch {self.epoch + 1}, batch {self.batch} (step {self.step})"
        try:
            self.save(meter, rng, elapsed)
        except ValueError as error:
            raise TrainingInterrupted(signum, False, f"stopped by {name} at {where}, but {error}") from None
        message = (
            f"stopped by {name} at {where}; saved in {self.run_dir}: continue with "
            f"`{self.command} --resume {self.run_dir}`"
        )
        if self.ctx.is_main:
            log.info(message)
        raise TrainingInterrupted(signum, True, message)

    def _check_finite(self) -> None:
        """Stop with the exact step if a loss or the weights a step left since the last check were NaN or
        infinite (every rank)."""
        bad = self.finite.first_bad()
        if bad is None:
            return
        step, value, where = bad
        epoch, batch = where if where is not None else (self.epoch + 1, self.batch)
        checkpoints = list_checkpoints(self.run_dir)
        last = checkpoints[-1] if checkpoints else "none yet"
        what = (
            f"weights became NaN or infinite (loss {value:.4g}: a NaN or infinite gradient was applied)"
            if math.isfinite(value)
            else f"loss became {value}"
        )
        raise TrainingDiverged(
            f"{what} at epoch {epoch}, batch {batch} (step {step}); "
            f"training stopped, last good checkpoint: {last}. Lower --lr or check the data."
        )


class _Run(TrainingRun):
    """One classification run's model, optimizer, data and position, and its loop."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: Dist,
        device: torch.device,
        run_dir: Path,
        spec: DataSpec,
        net: nn.Module,
        control: RunControl,
        on_step: Callable[[int, int], None] | None,
    ) -> None:
        self.config, self.ctx, self.device, self.run_dir, self.spec = config, ctx, device, run_dir, spec
        self.control, self.on_step = control, on_step
        if config.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        seed_everything(config.seed + ctx.rank)  # different augmentation streams per rank
        self.per_rank_batch = config.batch_size // ctx.world_size
        cuda = device.type == "cuda"
        self.train_loader, self.val_loader = _loaders(config, ctx, device, spec, self.per_rank_batch)
        self.steps_per_epoch = len(self.train_loader)  # > 0: see check_batches
        model: nn.Module = torch.compile(net) if config.compile else net
        if ctx.world_size > 1:
            model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        self.model = model
        other, bn = _split_bn_params(net)
        self.optimizer = torch.optim.SGD(
            [{"params": other}, {"params": bn}],
            lr=config.scaled_lr(),
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            # One kernel per step, and GradScaler passes it the scale and the inf flag on the device instead
            # of reading the flag on the host (a sync per step). CPU keeps the default implementation.
            fused=True if cuda else None,
        )
        self.lr_factors = [
            _lr_factor(config, self.steps_per_epoch),
            _bn_lr_factor(config, self.steps_per_epoch),
        ]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factors)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp and cuda)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.finite = FiniteCheck(device, control.min_over_ranks)
        self._start_position()

    def _meta(self, epoch_state: dict[str, Any]) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "model": self.config.model,
            "num_classes": self.spec.num_classes,
            "classes": self.spec.classes,
            "in_chans": self.spec.in_chans,
            "preprocessing": self.spec.preprocessing.as_dict(),
            **self._position_meta(epoch_state),
        }

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        config, ctx, spec = self.config, self.ctx, self.spec
        if ctx.is_main:
            log.info(
                f"run {self.run_dir}: {config.model}"
                f"{f' from {config.pretrained}' if config.pretrained else ''} on {spec.name} "
                f"({len(spec.train)} train / {len(spec.val)} "
                f"val images, {spec.num_classes} classes), {ctx.world_size} process(es) on {self.device}, "
                f"lr {config.scaled_lr():g}, batch {config.batch_size}, {config.epochs} epochs"
            )
        while self.epoch < config.epochs:
            meter, elapsed = self._train_epoch()
            try:
                val_metrics = evaluate(  # in float32 under --amp too: what `senet eval` scores
                    self.model,
                    self.val_loader,
                    self.device,
                    channels_last=config.channels_last,
                    ctx=ctx,
                    control=self.control,
                )
            except StopRequested as request:  # the epoch is trained: resume will evaluate it
                self.stop(request.signum, meter, None, elapsed)
            self._end_epoch(meter, val_metrics, elapsed)
        return RunResult(self.run_dir, self.net, self.history, self.best)

    def _train_epoch(self) -> tuple[_Meter, float]:
        config, ctx, device = self.config, self.ctx, self.device
        self.train_loader.sampler.set_epoch(self.epoch, start=self.batch * self.per_rank_batch)  # type: ignore
        self.model.train()
        if _bn_frozen(config, self.epoch):
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        meter = _Meter(device, self.epoch_state or None)
        started = time.perf_counter() - self.epoch_state.get("elapsed_s", 0.0)
        self.epoch_state = {}
        batches = progress_bar(
            self.train_loader, f"epoch {self.epoch + 1}/{config.epochs}", config.log_interval, ctx.is_main
        )
        self._restore_rng()
        feeder = DeviceFeeder(iter(batches), device, config.channels_last)
        while (batch := feeder.fetch()) is not None:
            rng, images, targets, skipped = (
                batch  # rng: what this batch drew from, saved if we stop before it
            )
            if self._enter_batch(meter, rng, skipped, targets.numel() == 0, started):
                self._step(*feeder.ready(images, targets), meter)
        self._check_finite()
        return meter, time.perf_counter() - started

    def _step(self, images: torch.Tensor, targets: torch.Tensor, meter: _Meter) -> None:
        """One optimizer step, launched without waiting for the device (see senet.train.feed)."""
        with autocast(self.device, self.config.amp):
            logits = self.model(images)
            loss = self.criterion(logits.float(), targets)
        self._optimize(loss)
        meter.add(loss, logits.float(), targets)
        self._after_step()

    def _end_epoch(self, meter: _Meter, val_metrics: dict[str, float], elapsed: float) -> None:
        record = self._epoch_record(meter, val_metrics, elapsed, f"data of {self.spec.name}")
        improved = not self.best or record["val_top1_err"] < self.best["val_top1_err"]
        best = ("epoch", "val_top1_err", "val_top5_err")
        self._commit_epoch(
            record,
            {key: record[key] for key in best} if improved else None,
            f"loss {record['train_loss']:.4f}  train top-1 err {record['train_top1_err']:.2f}%  "
            f"val top-1 err {record['val_top1_err']:.2f}%  top-5 err {record['val_top5_err']:.2f}%  "
            f"{lr_text(record)}  {record['images_per_s']:.0f} img/s",
        )
