"""Where a process runs: its device, its place in a distributed job, its seeds and its progress output.

The ground floor of senet (beside :mod:`senet.ops` and :mod:`senet.fileio`): training, evaluation, deployment,
the analysis and detection all take their device and process group from here, without importing a training
engine for it.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("senet.train")  # progress lines belong to the training log


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a run: its rank, the number of processes, its GPU's index on the node."""

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


ONE_PROCESS = Dist()  # a process that works alone (evaluation outside a run)


# -- set-up -------------------------------------------------------------------------------------------


def init_distributed(device_type: str) -> Dist:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) the default process group (nccl on CUDA, gloo on CPU); else one
    process. A group created here lasts as long as the process (several runs may share it, e.g. the runs of
    ``senet ablate``) and ends with it: see :class:`_ProcessGroupEnd`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            rank = int(os.environ["RANK"])
            dist.init_process_group(
                backend, store=_attempt_store(world_size), rank=rank, world_size=world_size
            )
        else:
            dist.init_process_group(backend)
        _process_group_end.register()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _attempt_store(world_size: int) -> dist.Store:
    """The key-value store of torchrun's agent, under a prefix of its own for this attempt of the worker
    group (and for each process group this process creates, should one be destroyed and made again).

    The agent keeps one store for all the attempts of ``torchrun --max-restarts`` and hands workers no prefix
    (torch 2.5 and later), so a restarted group would read the dead group's keys (gloo: "connectFullMesh
    failed ... Connection refused", or a hang). The restart count is the same for every worker of one agent;
    agents of several nodes may count differently (membership changes are not counted), hence the docs'
    advice for multi-node restarts: ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, with which the agent shares no
    store and this path is not taken."""
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=dist.constants.default_pg_timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"senet/attempt{attempt}/init{_process_group_end.created}", store)


class _ProcessGroupEnd:
    """Ends the process group that :func:`init_distributed` created when the process exits: destroyed after
    success, aborted after a run failed (:meth:`failed`), as torchtitan does. Left alone, gloo's threads
    outlive the interpreter and the process may die with SIGABRT ("terminate called without an active
    exception"): torchrun then reports a finished job failed."""

    def __init__(self) -> None:
        self.created = 0  # process groups created by this process
        self.run_failed = False

    def register(self) -> None:
        if not self.created:
            atexit.register(self)
        self.created += 1

    def failed(self) -> None:
        self.run_failed = True

    def __call__(self) -> None:
        if not dist.is_initialized():  # the caller ended it already
            return
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)  # torch >= 2.6, private
        try:
            abort() if self.run_failed and abort is not None else dist.destroy_process_group()
        except Exception:  # noqa: BLE001 -- the process is ending: its own outcome is the one to report
            pass


_process_group_end = _ProcessGroupEnd()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; a distributed run uses the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")
        if name == "cuda" and local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process with LOCAL_RANK {local_rank} needs a GPU of its own, but "
                f"{torch.cuda.device_count()} are visible; start at most one process per GPU"
            )
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup_device(name: str) -> tuple[Dist, torch.device]:
    """The process group (under ``torchrun``) and this process's device for ``--device name``; on CUDA the
    device is made the current one (NCCL, RNG state)."""
    ctx = init_distributed(resolve_device(name).type)
    device = resolve_device(name, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return ctx, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mark_run_failed() -> None:
    """The process group this process created ends with an abort at exit, not a clean destroy:
    a run failed."""
    _process_group_end.failed()


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CPU, fp16 on CUDA (paired with a gradient scaler in training)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


# -- progress -----------------------------------------------------------------------------------------


def progress_bar(iterable: Iterable, desc: str, log_interval: int, enabled: bool) -> Iterator:
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
