"""One training lifecycle for every task of the library: classification (``senet.train.engine``) and detection
(``senet.detection.engine``) supply a :class:`Task`, and :func:`fit` runs it, as Lightning's loops call a
module's hooks.

Written here once: the device and the process group (``senet.runtime``), the run directory (checked before
anything is written, then locked for one writer: :func:`writing_run_dir`), exact resume (position, optimizer,
schedule, gradient scaler, the RNG of every rank, the epoch's sums), the loop over epochs and batches, stop
signals and periodic saves (``control.RunControl``), checkpoints gathered from every rank and written by rank
0, the best weights, ``metrics.jsonl`` and the epoch's log line, the finite check of losses and weights
(``feed.FiniteCheck``), and the process group's failure marking. A task supplies its data and loaders, its
model and optimizer, the loss of a batch and what its meter sums, its evaluation, the metric that picks the
best weights, its checkpoint fields and the text of its log lines.

Under ``torchrun`` each process trains on its shard of the data, DDP averages the gradients, metrics are
summed over all processes, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from senet.data.loaders import shutdown_workers
from senet.runtime import Dist, mark_run_failed, progress_bar, seed_everything, setup_device
from senet.train.control import RunControl, StopRequested, TrainingInterrupted
from senet.train.feed import FiniteCheck
from senet.train.rundir import (
    METRICS_NAME,
    Changes,
    ResumeRules,
    RunConfig,
    RunDirInUse,
    lock_run_dir,
    open_run_dir,
    prepare_run_dir,
    reconcile,
)
from senet.weights.checkpoint import (
    BEST_NAME,
    Checkpoint,
    RngState,
    list_checkpoints,
    rng_state,
    save_checkpoint,
    save_weights,
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


class Feeder(Protocol):
    """Batches for the loop (``senet.train.feed``): ``fetch`` gives ``(rng, images, targets, skipped)`` or
    None at the end (``rng``: every RNG's state before the batch was drawn), ``ready`` the batch on the
    device."""

    def fetch(self) -> tuple[RngState, Any, Any, int] | None: ...

    def ready(self, images: Any, targets: Any) -> tuple[Any, Any]: ...


class Task:
    """What one kind of training supplies to :func:`fit`, hook by hook in the order the lifecycle calls them.

    ``config`` has ``output``, ``model`` (the default run name), ``to_dict()``, ``device``, ``seed``,
    ``epochs``, ``batch_size`` (global), ``amp``, ``keep``, ``log_interval``, ``save_every_steps``,
    ``save_every_minutes`` and ``scaled_lr()``. :func:`fit` sets ``ctx`` and ``device`` before the first hook.
    """

    command: str  # what continues a stopped run, named in the stop message; also the lock's holder
    resume_rules: ResumeRules  # what a resume may change in ``config``
    # The run's ``best`` record besides the epoch; the first key picks the best weights.
    best_keys: tuple[str, ...]
    higher_is_better: bool  # of ``best_keys[0]``
    data_name: str  # what to fix when an epoch read no image: "fix or replace the train <data_name>"
    # The epoch's log line after "epoch E/N": a format of the epoch's metrics.jsonl record, and {lr_text}.
    epoch_line: str

    config: Any
    ctx: Dist
    device: torch.device

    # -- before the run directory is written ---------------------------------------------------------------

    def check(self, resume: str | Path | Checkpoint | None) -> None:
        """Refuse what cannot run (options, ``resume`` of another task) before the run directory is chosen."""

    def adopt(self, checkpoint: Checkpoint | None) -> None:
        """The checkpoint the run continues (None: a new run), before its config is compared with ``config``:
        check that it is this task's, complete ``config`` from it."""

    def build_data(self) -> int:
        """Read and check the data; returns the number of training examples."""
        raise NotImplementedError

    def build_model(self, checkpoint: Checkpoint | None) -> nn.Module:
        """The network, new, or with ``checkpoint``'s weights (checked against the data)."""
        raise NotImplementedError

    # -- set-up of the run ---------------------------------------------------------------------------------

    def prepare_model(self, net: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The network the run saves (e.g. in channels_last), and the module it calls (e.g. compiled)."""
        return net, net

    def loaders(self, batch: int) -> tuple[Any, Any]:
        """The train loader (its sampler resumable: ``set_epoch(epoch, start)``) and this rank's val loader,
        at ``batch`` examples per process."""
        raise NotImplementedError

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def lr_factors(self, steps_per_epoch: int) -> list[Callable[[int], float]]:
        """Per parameter group, the rate's factor at each optimizer step (the first group is the main one)."""
        raise NotImplementedError

    def describe(self, run_dir: Path, steps_per_epoch: int) -> str:
        """The run's first log line."""
        raise NotImplementedError

    # -- an epoch ------------------------------------------------------------------------------------------

    def train_mode(self, net: nn.Module, epoch: int) -> None:
        """After ``model.train()`` at the start of each training epoch: modules that stay in eval mode."""

    def meter(self, state: dict[str, Any] | None) -> Any:
        """A :class:`senet.train.meters.Meter` of the epoch (``state``: the sums of a resumed one)."""
        raise NotImplementedError

    def feeder(self, batches: Iterator[Any]) -> Feeder:
        raise NotImplementedError

    def is_empty(self, images: Any, targets: Any) -> bool:
        """Whether no image of the batch could be read."""
        raise NotImplementedError

    def step(self, model: nn.Module, images: Any, targets: Any) -> tuple[torch.Tensor, tuple]:
        """The loss of a batch (whose backward pass the lifecycle runs), and the meter's ``add`` arguments."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Any, control: RunControl) -> dict[str, Any]:
        """Validation metrics (``val_...``, with ``val_images`` and ``val_skipped``), the same on every rank;
        a stop signal ends it early (``StopRequested``)."""
        raise NotImplementedError

    def epoch_fields(self, eval_time: float) -> dict[str, Any]:
        """Fields the task adds at the end of an epoch's metrics.jsonl line."""
        return {}

    def checkpoint_meta(self, net: nn.Module) -> dict[str, Any]:
        """The task's fields of every checkpoint's JSON (see checkpoint._SCHEMA), before the position's."""
        raise NotImplementedError


def fit(
    task: Task,
    resume: str | Path | Checkpoint | None = None,
    *,
    overwrite: bool = False,
    extend_schedule: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Train ``task``; ``resume`` continues a run exactly where it stopped.

    Args:
        resume: a run directory (continued from its newest complete checkpoint) or a loaded checkpoint, or
            ``"auto"``: the run in ``config.output`` if it has a checkpoint, else a new run there (a requeued
            job reruns one command).
        overwrite: replace the run already in ``config.output`` (without it, an existing run is refused).
        extend_schedule: let a resumed run change its schedule (epochs, lr, batch size, ...); the learning
            rate follows the new schedule from where the run stands.
        on_step: ``on_step(epoch, batch)`` after every optimizer step (progress hooks, tests).

    Model, options, data and run directory are all checked before anything is written; a run directory that
    another live process writes is refused (:class:`senet.train.rundir.RunDirInUse`). Raises
    :class:`TrainingDiverged` on a NaN/inf loss or weights, and :class:`TrainingInterrupted` when SIGINT,
    SIGTERM or SIGUSR1 stopped training at a step boundary (after saving a checkpoint there).
    """
    task.ctx, task.device = ctx, device = setup_device(task.config.device)
    task.check(resume)
    run_dir, checkpoint = prepare_run_dir(task.config, resume, overwrite)
    task.adopt(checkpoint)
    config = task.config
    changes = Changes({})
    if checkpoint is not None:
        changes = reconcile(
            checkpoint.meta["config"],
            config,
            extend_schedule=extend_schedule,
            mid_epoch=checkpoint.meta["batches_done"] > 0,
            rules=task.resume_rules,
        )
    seed_everything(config.seed)  # same initial weights on every rank
    _check_batches(config.batch_size, task.build_data(), ctx)
    net = task.build_model(checkpoint)
    if checkpoint is not None and checkpoint.position >= (config.epochs, 0):
        return _finished_run(config, run_dir, checkpoint, net, ctx)
    net = net.to(device)
    run = None
    with writing_run_dir(run_dir, config, checkpoint, ctx, task.command):
        try:
            with RunControl(ctx.world_size, config.save_every_steps, config.save_every_minutes) as control:
                run = TrainingRun(task, run_dir, net, control, on_step)
                if checkpoint is not None:
                    run.restore(checkpoint, changes)
                return run.run()
        finally:
            # The loaders' workers end with the run, not whenever the loaders are collected.
            if run is not None:
                for loader in (run.train_loader, run.val_loader):
                    shutdown_workers(getattr(loader, "loader", loader))  # a DeviceLoader wraps its loader


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
            handlers = _setup_logging(run_dir)
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


def _setup_logging(run_dir: Path) -> list[logging.Handler]:
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


def _check_batches(batch_size: int, train_images: int, ctx: Dist) -> None:
    """The global batch splits over the processes and the training split fills at least one batch."""
    if batch_size % ctx.world_size:
        raise ValueError(f"batch size {batch_size} does not split over {ctx.world_size} processes")
    per_rank = batch_size // ctx.world_size
    if math.ceil(train_images / ctx.world_size) < per_rank:  # each rank's shard, as the samplers cut it
        raise ValueError(
            f"{train_images} training images give no full batch of {batch_size}; lower --batch-size"
        )


def _finished_run(config: Any, run_dir: Path, checkpoint: Checkpoint, net: nn.Module, ctx: Dist) -> RunResult:
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


def _lr_text(record: dict[str, Any]) -> str:
    """An epoch's rates for its log line: "lr 0.1", or "lr 0.025 to 6.03e-05" where the schedule moved."""
    first, last = record["lr"], record["lr_last"]
    return f"lr {first:.4g}" if f"{first:.4g}" == f"{last:.4g}" else f"lr {first:.4g} to {last:.4g}"


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
    """One run of a :class:`Task`: the position in the run (epoch, batches done, optimizer steps), the loop,
    exact resume (optimizer, schedule, RNG of every rank, the epoch's sums), checkpoints gathered from every
    rank and written by rank 0, the stop at a step boundary, and the finite check of losses and weights.

    Nothing diverged is ever written: every step's loss and the weights it left are checked finite (on the
    device, read every step on CPU and every 50 on CUDA, see ``senet.train.feed``), and the check is read
    before every save (periodic, on a signal, at the epoch's end and of ``best.safetensors``).
    """

    def __init__(
        self,
        task: Task,
        run_dir: Path,
        net: nn.Module,
        control: RunControl,
        on_step: Callable[[int, int], None] | None,
    ) -> None:
        self.task, self.config, self.run_dir = task, task.config, run_dir
        self.control, self.on_step = control, on_step
        ctx, device = self.ctx, self.device = task.ctx, task.device
        self.net, model = task.prepare_model(net)
        seed_everything(self.config.seed + ctx.rank)  # different augmentation streams per rank
        self.per_rank_batch = self.config.batch_size // ctx.world_size
        cuda = device.type == "cuda"
        self.train_loader, self.val_loader = task.loaders(self.per_rank_batch)
        self.steps_per_epoch = len(self.train_loader)  # > 0: see _check_batches
        if ctx.world_size > 1:
            model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        self.model = model
        self.optimizer = task.optimizer(self.net)
        self.lr_factors = task.lr_factors(self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factors)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.config.amp and cuda)
        self.finite = FiniteCheck(device, control.min_over_ranks)
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.epoch_state: dict[str, Any] = {}  # train sums and time of the epoch in progress, when resumed
        self.resumed_from: Checkpoint | None = None
        self.saved_at: tuple[int, int] | None = None

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        if self.ctx.is_main:
            log.info(self.task.describe(self.run_dir, self.steps_per_epoch))
        while self.epoch < self.config.epochs:
            meter, elapsed = self._train_epoch()
            started = time.perf_counter()
            try:
                # Validation runs in float32 under --amp too: scores that low precision cannot tie.
                val_metrics = self.task.evaluate(self.model, self.val_loader, self.control)
            except StopRequested as request:  # the epoch is trained: resume will evaluate it
                self.stop(request.signum, meter, None, elapsed)
            self._end_epoch(meter, val_metrics, elapsed, time.perf_counter() - started)
        return RunResult(self.run_dir, self.net, self.history, self.best)

    def _train_epoch(self) -> tuple[Any, float]:
        task, config = self.task, self.config
        self.train_loader.sampler.set_epoch(self.epoch, start=self.batch * self.per_rank_batch)
        self.model.train()
        task.train_mode(self.net, self.epoch)
        meter = task.meter(self.epoch_state or None)
        started = time.perf_counter() - self.epoch_state.get("elapsed_s", 0.0)
        self.epoch_state = {}
        batches = progress_bar(
            self.train_loader,
            f"epoch {self.epoch + 1}/{config.epochs}",
            config.log_interval,
            self.ctx.is_main,
        )
        self._restore_rng()
        feeder = task.feeder(iter(batches))
        while (batch := feeder.fetch()) is not None:
            rng, images, targets, skipped = (
                batch  # rng: what this batch drew from, saved if we stop before it
            )
            if self._enter_batch(meter, rng, skipped, task.is_empty(images, targets), started):
                self._step(*feeder.ready(images, targets), meter)
        self._check_finite()
        return meter, time.perf_counter() - started

    def _step(self, images: Any, targets: Any, meter: Any) -> None:
        """One optimizer step, launched without waiting for the device (see senet.train.feed); the step's loss
        and the weights it left join the finite flag, which is read only when due. Then the meter counts the
        step, periodic saves come, and the caller's ``on_step``."""
        loss, measured = self.task.step(self.model, images, targets)
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
        meter.add(*measured)
        self.control.after_step(self.step)
        if self.on_step is not None:
            self.on_step(self.epoch, self.batch)

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

    @functools.cached_property
    def _saved_weights(self) -> list[torch.Tensor]:
        """The floating-point parameters and buffers a checkpoint saves; their L1 norm is finite exactly when
        all are. A NaN or infinite gradient that the optimizer applied shows there too (even at lr 0, as
        0 * nan is nan); one that the gradient scaler skipped changed nothing."""
        tensors = itertools.chain(self.net.parameters(), self.net.buffers())
        return [tensor for tensor in tensors if tensor.is_floating_point()]

    def _end_epoch(self, meter: Any, val_metrics: dict[str, Any], elapsed: float, eval_time: float) -> None:
        """The epoch's record in the history, the best weights where the task's metric improved, the
        checkpoint (the epoch's commit point), then its metrics.jsonl line (rewritten from the checkpoint on
        resume) and its log line. Nothing is written unless the weights are finite."""
        task = self.task
        record = {**self._epoch_record(meter, val_metrics, elapsed), **task.epoch_fields(eval_time)}
        key = task.best_keys[0]
        improved = not self.best or (
            record[key] > self.best[key] if task.higher_is_better else record[key] < self.best[key]
        )
        self._check_finite()
        self.history.append(record)
        if improved:
            self.best = {name: record[name] for name in ("epoch", *task.best_keys)}
            if self.ctx.is_main:
                save_weights(self.run_dir / BEST_NAME, self.net)
        self.epoch, self.batch = self.epoch + 1, 0
        self.save()
        if self.ctx.is_main:
            with open(self.run_dir / METRICS_NAME, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            skipped = record["train_skipped"] + record["val_skipped"]
            log.info(
                f"epoch {self.epoch}/{self.config.epochs}  "
                + task.epoch_line.format(lr_text=_lr_text(record), **record)
                + (f"  skipped {skipped} unreadable images" if skipped else "")
            )

    def _epoch_record(self, meter: Any, val_metrics: dict[str, Any], elapsed: float) -> dict:
        """The epoch's line of metrics.jsonl (position, rate, train sums over the ranks, validation, speed);
        an epoch in which no train or no val image could be read is refused, naming what to fix."""
        train_metrics = meter.result(self.ctx, "train")
        for split, metrics in (("train", train_metrics), ("val", val_metrics)):
            if metrics[f"{split}_images"] == 0:
                raise ValueError(
                    f"no {split} image could be used in epoch {self.epoch + 1} "
                    f"({metrics[f'{split}_skipped']} unreadable, skipped): fix or replace the {split} "
                    f"{self.task.data_name}"
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

    # -- resume and save -----------------------------------------------------------------------------------

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
        """Set the learning rates for ``position`` batches into the run, as that many scheduler steps do."""
        self.scheduler.last_epoch = position
        for group, base_lr, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.lr_factors, strict=True
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
                    meta={**self.task.checkpoint_meta(self.net), **self._position_meta(epoch_state)},
                )
            except Exception as failure:  # noqa: BLE001 -- every rank must learn of it, or the others hang
                error = f"{type(failure).__name__}: {failure}"
        if not self.control.min_over_ranks(int(not error)):
            raise ValueError(
                f"could not write a checkpoint into {self.run_dir} ({error or 'failed on rank 0'}); "
                "free some space or fix the permissions, then resume from the last checkpoint"
            )
        self.saved_at = position
        self.control.saved(self.step)
        return path

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
            f"`{self.task.command} --resume {self.run_dir}`"
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
