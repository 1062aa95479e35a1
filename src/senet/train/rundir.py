"""Run directories: which one a run writes to, what it may resume, and what may never be overwritten.

Everything here decides before anything is written: a new run refuses a directory that already holds files
(unless told to overwrite a run), a resumed run refuses a config that trains something else or changes the
schedule without saying so, and only then does :func:`open_run_dir` create or tidy the directory.

Classification (``senet train``) and detection (``senet detect train``) runs share all of it: a config is any
dataclass with ``output``, ``model`` (the default run name) and ``to_dict()``, and :class:`ResumeRules` say
which of its fields a resume may change.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from senet.train.checkpoint import (
    BEST_NAME,
    Checkpoint,
    atomic_write,
    list_checkpoints,
    load_checkpoint,
    remove_stale_files,
)


class RunConfig(Protocol):
    """What a run's config must offer here (``TrainConfig``, ``senet.detection.engine.DetectionConfig``)."""

    @property
    def output(self) -> str | None: ...

    @property
    def model(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
LOG_NAME = "train.log"
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
# Run control: may change freely on resume.
_CONTROL_FIELDS = (
    "device",
    "workers",
    "loader",
    "output",
    "log_interval",
    "save_every_steps",
    "save_every_minutes",
    "keep",
    "compile",
)


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
            f"{run_dir} holds files that are not a senet run's ({foreign[0].name}, ...); choose another --output"
        )
    if _run_files(run_dir) and not overwrite and str(resume) != "auto":
        raise ValueError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, replace it with --overwrite, "
            "or choose another --output"
        )
    return run_dir, None  # a new run, or one that saved nothing yet and starts again


def checkpoint_to_resume(resume: str | Path) -> Checkpoint:
    """The newest complete checkpoint of run directory ``resume``; one line saying why there is none."""
    resume = Path(resume)
    try:
        return load_checkpoint(resume)
    except FileNotFoundError as error:
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
    """What a run directory holds besides a run's own files (which --overwrite would delete)."""
    return [p for p in run_dir.iterdir() if p not in _run_files(run_dir)] if run_dir.is_dir() else []


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
