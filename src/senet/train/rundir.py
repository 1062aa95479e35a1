"""Run directories: which one a run writes to, what it may resume, and what may never be overwritten.

Everything here decides before anything is written: a new run refuses a directory that already holds files
(unless told to overwrite a run), a resumed run refuses a config that trains something else or changes the
schedule without saying so, and only then does :func:`open_run_dir` create or tidy the directory. One process
writes a directory at a time: :func:`lock_run_dir` holds an OS lock on it for the writer's whole life.

Classification (``senet train``) and detection (``senet detect train``) runs share all of it: a config is any
dataclass with ``output``, ``model`` (the default run name) and ``to_dict()``, and :class:`ResumeRules` say
which of its fields a resume may change.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from senet.fileio import atomic_write
from senet.weights.checkpoint import (
    BEST_NAME,
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    remove_stale_files,
)


class RunConfig(Protocol):
    """What a run's config must offer here (``TrainConfig``, ``senet.detection.config.DetectionConfig``)."""

    @property
    def output(self) -> str | None: ...

    @property
    def model(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


_log = logging.getLogger("senet.train")

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
LOG_NAME = "train.log"
# The lock of the process writing the directory (see lock_run_dir); it stays when a run is overwritten.
LOCK_NAME = ".senet.lock"
# What `senet train` writes into a run directory; --overwrite deletes these and nothing else.
# (eval-*.json: what `senet detect eval` writes into the run it evaluated.)
_RUN_FILE_PATTERNS = (CONFIG_NAME, METRICS_NAME, LOG_NAME, BEST_NAME, "checkpoint-*", ".*.tmp", "eval-*.json")

# A checkpoint whose values of these differ trains another network on other data: never resumed.
IDENTITY_FIELDS = ("model", "model_options", "pretrained", "data")
# These define the learning-rate schedule: changing them on resume needs extend_schedule=True.
SCHEDULE_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "lr_reference_batch",
    "schedule",
    "step_epochs",
    "milestones",
    "gamma",
    "warmup_epochs",
    "freeze_bn_epochs",
)
# Run control: may change freely on resume. RUN_CONTROL_FIELDS: every task's (senet.detection.config too).
RUN_CONTROL_FIELDS = (
    "device",
    "workers",
    "output",
    "log_interval",
    "save_every_steps",
    "save_every_minutes",
    "keep",
)
_CONTROL_FIELDS = (*RUN_CONTROL_FIELDS, "loader", "compile")


@dataclass(frozen=True)
class ResumeRules:
    """Which fields of a config a resumed run may not change (``identity``: another network or other data),
    may change only with ``extend_schedule`` (``schedule``), or changes freely and silently (``control``)."""

    identity: tuple[str, ...]
    schedule: tuple[str, ...]
    control: tuple[str, ...]


CLASSIFICATION = ResumeRules(IDENTITY_FIELDS, SCHEDULE_FIELDS, _CONTROL_FIELDS)


def _run_files(run_dir: Path) -> list[Path]:
    return sorted({p for pattern in _RUN_FILE_PATTERNS for p in run_dir.glob(pattern)})


def new_run_dir(config: RunConfig) -> Path:
    if config.output:
        return Path(config.output)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{stamp}-{config.model}"


def prepare_run_dir(
    config: RunConfig, resume: str | Path | Checkpoint | None, overwrite: bool
) -> tuple[Path, Checkpoint | None]:
    """The run directory and the checkpoint to continue from, checked but not yet touched.

    ``resume``: a run directory (or a checkpoint's JSON file, or a loaded checkpoint) to continue; ``"auto"``:
    continue the run in ``config.output`` if it has a checkpoint, else start it there (a requeued cluster job
    reruns one command).
    """
    if resume is not None and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the run, or replace it")
    if resume is not None and str(resume) != "auto":
        return _resumed_run_dir(
            config, resume if isinstance(resume, Checkpoint) else checkpoint_to_resume(resume)
        )
    if str(resume) == "auto" and not config.output:
        raise ValueError("--resume auto needs --output RUN_DIR: the run to continue, or to start there")
    run_dir = new_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"--output {run_dir} is a file; give a directory")
    if str(resume) == "auto" and list_checkpoints(run_dir):
        return run_dir, load_checkpoint(run_dir)
    foreign = _foreign_files(run_dir)
    if foreign:
        raise ValueError(
            f"{run_dir} holds files that are not a senet run's ({foreign[0].name}, ...); "
            "choose another --output"
        )
    if _run_files(run_dir) and not overwrite and str(resume) != "auto":
        raise ValueError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
            "replace it with --overwrite, or choose another --output"
        )
    return run_dir, None  # a new run, or one that saved nothing yet and starts again


def checkpoint_to_resume(resume: str | Path) -> Checkpoint:
    """The newest complete checkpoint of run directory ``resume``; one line saying why there is none."""
    resume = Path(resume)
    try:
        return load_checkpoint(resume)
    except FileNotFoundError as error:
        if (holder := run_dir_holder(resume)) is not None:  # still before its first checkpoint
            raise RunDirInUse(_in_use(resume, holder)) from None
        if (resume / CONFIG_NAME).is_file():  # the run stopped before its first checkpoint
            raise FileNotFoundError(
                f"{error}; {resume} saved none before it stopped: start it again with --overwrite "
                f"(or --resume auto --output {resume})"
            ) from None
        raise


def _resumed_run_dir(config: RunConfig, checkpoint: Checkpoint) -> tuple[Path, Checkpoint]:
    if config.output and Path(config.output).resolve() != checkpoint.run_dir.resolve():
        raise ValueError(
            f"--output {config.output} differs from the resumed run {checkpoint.run_dir}; "
            "a resumed run continues in its own directory: drop --output"
        )
    return checkpoint.run_dir, checkpoint


def _foreign_files(run_dir: Path) -> list[Path]:
    """What a run directory holds besides a run's own files (which --overwrite would delete) and its lock."""
    if not run_dir.is_dir():
        return []
    own = set(_run_files(run_dir))
    return [p for p in run_dir.iterdir() if p not in own and p.name != LOCK_NAME]


@dataclass(frozen=True)
class Changes:
    """What a resumed run changes in its saved config (run-control fields such as ``workers`` left out)."""

    fields: dict[str, tuple[Any, Any]]  # name -> (saved, now)
    schedule_fields: tuple[str, ...] = SCHEDULE_FIELDS

    @property
    def schedule(self) -> bool:
        return any(name in self.schedule_fields for name in self.fields)

    def __str__(self) -> str:
        return "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in self.fields.items())


def reconcile(
    saved: dict[str, Any],
    config: Any,
    *,
    extend_schedule: bool,
    mid_epoch: bool,
    rules: ResumeRules = CLASSIFICATION,
) -> Changes:
    """Check that ``config`` (a dataclass) may continue a run saved with ``saved``, and say what it changes.

    Refuses another model, options or data (``rules.identity``), and a changed schedule (``rules.schedule``)
    unless ``extend_schedule``.
    """
    ours = json.loads(json.dumps(config.to_dict()))  # as the checkpoint stored it (tuples become lists)
    changed = [f.name for f in fields(config) if f.name in saved and saved[f.name] != ours[f.name]]
    differs = [
        f"{name}: checkpoint {saved.get(name)!r} vs {ours[name]!r}"
        for name in rules.identity
        if saved.get(name) != ours[name]
    ]
    if differs:
        raise ValueError(f"checkpoint belongs to another run ({'; '.join(differs)})")
    schedule = [f"{name} {saved[name]!r} -> {ours[name]!r}" for name in changed if name in rules.schedule]
    if schedule and not extend_schedule:
        raise ValueError(
            f"resuming with a changed schedule ({', '.join(schedule)}); pass --extend-schedule to "
            "recompute the learning-rate schedule for the new values, or drop the changes"
        )
    if "batch_size" in changed and mid_epoch:
        raise ValueError(
            "the batch size can only change at an epoch boundary; resume from an epoch-end "
            "checkpoint, or keep --batch-size"
        )
    return Changes(
        {name: (saved[name], ours[name]) for name in changed if name not in rules.control}, rules.schedule
    )


def open_run_dir(run_dir: Path, config: RunConfig, checkpoint: Checkpoint | None) -> None:
    """Create or tidy the run directory (rank 0 only): stale temp files go, metrics match the checkpoint."""
    if checkpoint is None:
        for path in _run_files(run_dir) if run_dir.is_dir() else []:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_files(run_dir)
    atomic_write(run_dir / CONFIG_NAME, json.dumps(config.to_dict(), indent=1).encode())
    if checkpoint is not None:
        # The checkpoint's history is the truth: a crash after the metrics line but before the next
        # checkpoint must not leave that epoch twice in the file once it is trained again.
        history = checkpoint.meta["history"]
        atomic_write(run_dir / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in history).encode())


class RunDirInUse(ValueError):
    """Another live process writes the directory (it holds its lock)."""


# flock's errors on a file system without locks (some NFS and Lustre mounts): the run goes on, with a warning.
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
# The lock files this process holds (descriptors). A child that the process forks without exec (DataLoader
# workers) closes its copies at once: a worker outliving its killed run would otherwise keep the lock.
_HELD: set[int] = set()


def _close_in_forked_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_forked_child)


@dataclass
class RunDirLock:
    """A lock that :func:`lock_run_dir` took; :meth:`release` or the process's end (any end) drops it."""

    directory: Path
    _fd: int

    def release(self) -> None:
        if self._fd in _HELD:
            _HELD.discard(self._fd)
            os.close(self._fd)

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_dir(directory: str | Path, command: str) -> RunDirLock:
    """Create ``directory`` if needed and lock it for this process, or refuse in one line
    (:class:`RunDirInUse`) naming the process that holds it (``command``, pid and host, from the lock file).

    ``flock`` on ``LOCK_NAME`` inside it, held by its open file: the kernel drops it when the process ends,
    however it ends (SIGKILL included), so a killed run never leaves a stale lock; other files or descriptors
    the process opens and closes leave it alone (unlike ``lockf``'s locks), and forked children close it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(fd, 4096, 0)
        os.close(fd)
        if error.errno in (errno.EACCES, errno.EAGAIN):
            raise RunDirInUse(_in_use(directory, _holder_text(holder))) from None
        if error.errno not in _NO_LOCKS:
            raise
        _log.warning(
            f"{directory}: its file system offers no locks ({error.strerror}); nothing stops another process "
            "from writing this directory at the same time"
        )
        return RunDirLock(directory, -1)
    _HELD.add(fd)
    record = {"command": command, "pid": os.getpid(), "host": socket.gethostname()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return RunDirLock(directory, fd)


def lock_output_dir(directory: str | Path, command: str) -> contextlib.AbstractContextManager:
    """:func:`lock_run_dir` in a single process or on rank 0 of a ``torchrun`` job (``RANK``, read before any
    process group exists), a no-op on the other ranks; for folders of runs (senet ablate, senet demo)."""
    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return lock_run_dir(directory, command)


def run_dir_holder(directory: str | Path) -> str | None:
    """Who holds ``directory``'s lock ("senet train, pid 123 on node7"), or None if no live process does."""
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:  # a probe: granted (and dropped with the descriptor) only if no process holds the lock
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return _holder_text(os.pread(fd, 4096, 0))
    finally:
        os.close(fd)
    return None


def _holder_text(data: bytes) -> str:
    try:
        record = json.loads(data)
        return f"{record['command']}, pid {record['pid']} on {record['host']}"
    except (ValueError, KeyError, TypeError):  # taken a moment ago, not yet written
        return "another process"


def _in_use(directory: Path, holder: str) -> str:
    return (
        f"{directory} is in use by {holder}: one process writes it at a time; wait for that one to end "
        "(or stop it: SIGTERM saves a checkpoint), then start again"
    )
