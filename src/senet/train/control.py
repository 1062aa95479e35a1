"""When a run stops, checkpoints or steps over a batch: signals, timers and agreement between DDP ranks.

SIGINT (Ctrl-C), SIGTERM (what SLURM and Kubernetes send) and SIGUSR1 (SLURM's early warning) never cut a
step in half: the handler only records the signal, and the engine asks :meth:`RunControl.poll` at every step
boundary whether to stop, to save, or to skip a batch that is empty on some rank. In a distributed run every
rank asks through one small collective on a gloo group (host memory: no GPU synchronisation), so all ranks
stop, save and skip at the same step. A second signal aborts at once, as Ctrl-C usually does.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist

from senet.weights import checkpoint

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
T = TypeVar("T")
FAULT_ENV = "SENET_FAULT"  # test hook: "SIGTERM@step=3" signals this process after optimizer step 3,
# "SIGKILL@save=2" kills it inside the second checkpoint save, between the tensor file and its JSON;
# SENET_FAULT_RANK=1 limits it to one rank of a torchrun job, and a worker group that torchrun restarts
# (TORCHELASTIC_RESTART_COUNT > 0) is not faulted again.

log = logging.getLogger("senet.train")


class TrainingInterrupted(Exception):
    """A stop signal ended training at a step boundary; ``saved`` says whether its checkpoint was written."""

    def __init__(self, signum: int, saved: bool, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.saved = saved

    @property
    def exit_code(self) -> int:
        """128 + the signal number after a successful save (the shell's convention), 1 if the save failed."""
        return 128 + self.signum if self.saved else 1


class StopRequested(Exception):
    """Raised inside a loop (e.g. evaluation) that a stop signal cuts short; the engine saves and stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Decision:
    stop_signal: int  # 0: go on
    save: bool  # a periodic checkpoint is due
    skip: bool  # some rank has an empty batch: every rank steps over it


class RunControl:
    """Signal handlers (while in a ``with`` block), periodic-save timers and the per-step agreement."""

    def __init__(
        self, world_size: int = 1, save_every_steps: int = 0, save_every_minutes: float = 0.0
    ) -> None:
        self._group = dist.new_group(backend="gloo") if world_size > 1 else None
        self.save_every_steps = save_every_steps
        self.save_every_s = 60 * save_every_minutes
        self.signum = 0
        self._last_save = time.monotonic()
        self._saved_step = 0
        self._previous: dict[int, object] = {}
        self._fault = _Fault.from_env()

    def __enter__(self) -> RunControl:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        if self._fault is not None:
            self._fault.arm()
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
        if self._fault is not None:
            self._fault.disarm()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            raise KeyboardInterrupt  # the user insists: stop now, the last checkpoint stays as it is
        self.signum = signum
        log.info(
            f"{signal.Signals(signum).name} received: finishing this step, then saving a checkpoint "
            "(send it again to stop at once without saving)"
        )

    def poll(self, *, step: int, empty: bool = False) -> Decision:
        """What every rank does at this step boundary (``step``: optimizer steps taken so far)."""
        due = bool(self.save_every_steps and step % self.save_every_steps == 0 and step != self._saved_step)
        due = due or bool(self.save_every_s and time.monotonic() - self._last_save >= self.save_every_s)
        flags = torch.tensor([self.signum, int(due), int(empty)], dtype=torch.int64)
        if self._group is not None:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
        signum, due, empty = flags.tolist()
        return Decision(int(signum), bool(due), bool(empty))

    def min_over_ranks(self, value: int) -> int:
        """The smallest ``value`` over all ranks (e.g. ``int(ok)``: 1 only if every rank is ok)."""
        flag = torch.tensor([value], dtype=torch.int64)
        if self._group is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self._group)
        return int(flag.item())

    def check_stop(self) -> None:
        """Raise :class:`StopRequested` on every rank if a stop signal reached any rank (outside steps)."""
        signum = self.poll(step=0).stop_signal
        if signum:
            raise StopRequested(signum)

    def gather(self, value: object) -> list[object]:
        """``value`` of every rank, in rank order (rank 0 writes them into one checkpoint)."""
        if self._group is None:
            return [value]
        values: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(values, value, group=self._group)
        return values

    def saved(self, step: int) -> None:
        """A checkpoint was written at ``step``: periodic saves count from here."""
        self._last_save = time.monotonic()
        self._saved_step = step

    def after_step(self, step: int) -> None:
        if self._fault is not None:
            self._fault.after_step(step)


@dataclass
class _Fault:
    """A signal at a fixed point, for tests that interrupt training deterministically (see ``FAULT_ENV``)."""

    signum: int
    at: str  # "step" or "save"
    count: int
    saves: int = 0

    @classmethod
    def from_env(cls) -> _Fault | None:
        text = os.environ.get(FAULT_ENV)
        only_rank = os.environ.get(FAULT_ENV + "_RANK")  # in a torchrun job: fire on this rank alone
        if not text or (only_rank is not None and only_rank != os.environ.get("RANK", "0")):
            return None
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":  # restarted after the fault
            return None
        try:
            name, _, point = text.partition("@")
            at, _, count = point.partition("=")
            if at not in ("step", "save"):
                raise ValueError(at)
            return cls(int(signal.Signals[name]), at, int(count))
        except (KeyError, ValueError):
            raise ValueError(
                f"{FAULT_ENV}={text!r}: expected SIGNAL@step=N or SIGNAL@save=N, e.g. SIGTERM@step=3"
            ) from None

    def _fire(self) -> None:
        os.kill(os.getpid(), self.signum)

    def after_step(self, step: int) -> None:
        if self.at == "step" and step == self.count:
            self._fire()

    def _on_save(self) -> None:
        self.saves += 1
        if self.saves == self.count:
            self._fire()

    def arm(self) -> None:
        if self.at == "save":
            checkpoint.before_commit = self._on_save

    def disarm(self) -> None:
        checkpoint.before_commit = None


def stoppable(batches: Iterable[T], count: int, control: RunControl | None) -> Iterator[T]:
    """``batches`` (``count`` of them on this rank) with ``control``'s stop check before each one that every
    rank has: ranks' shards may differ by a batch, so they agree on stopping only over the batches all of them
    have (every rank must iterate, even over no batch)."""
    polls = control.min_over_ranks(count) if control is not None else 0
    for index, batch in enumerate(batches):
        if index < polls:
            control.check_stop()  # type: ignore[union-attr]
        yield batch
