"""The run directory of a training command (``senet train``, ``senet detect train``): its flags, and the run
that ``--resume`` continues."""

from __future__ import annotations

import argparse
import typing
from typing import Any, Callable

if typing.TYPE_CHECKING:
    from senet.weights.checkpoint import Checkpoint


def add_run_flags(parser: argparse.ArgumentParser, resume_note: str, extend_help: str) -> None:
    """``--resume``, ``--overwrite`` and ``--extend-schedule``: what every training command does with its run
    directory (senet.train.rundir). The rest of it, ``--output``, ``--keep`` and ``--save-every-*``, are
    fields of the config (``senet.train.config.SHARED_FIELDS``)."""
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue a run from its newest complete checkpoint; auto: the run in --output if it has one, "
        f"else start it there{resume_note}",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    parser.add_argument("--extend-schedule", action="store_true", help=extend_help)


def _checkpoint_to_continue(resume: str | None, output: str | None) -> Checkpoint | str | None:
    """What ``--resume`` continues: the newest checkpoint of the run directory it names, loaded once so that
    training continues from this very checkpoint; with ``auto``, the run in ``output`` if it saved anything,
    else ``"auto"`` (a new run there, for requeued cluster jobs); None without ``--resume``."""
    from senet.train.rundir import checkpoint_to_resume
    from senet.weights.checkpoint import list_checkpoints

    if resume == "auto":
        if not (output and list_checkpoints(output)):
            return "auto"
        resume = output
    return None if resume is None else checkpoint_to_resume(resume)


def _resumed_values(
    checkpoint: Checkpoint, overrides: dict[str, Any], linked: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The config of a resumed run: the saved one, with the flags given now over it (``train()`` checks what
    they may change). A run directory may have been moved since it was saved: it continues where it is now.
    ``linked``: saved fields that one another decides (detection's epochs and schedule): any of them given now
    replaces them all."""
    saved = dict(checkpoint.meta["config"])
    if set(linked) & set(overrides):
        for name in linked:
            saved.pop(name, None)
    return {**saved, "output": str(checkpoint.run_dir), **overrides}


def train_run(
    args: argparse.Namespace,
    train: Callable[..., Any],
    config_type: Any,
    overrides: dict[str, Any],
    new: Callable[[], Any],
    best: Callable[[dict[str, Any]], str],
    *,
    checked: Callable[[Checkpoint], Checkpoint] = lambda checkpoint: checkpoint,
    linked: tuple[str, ...] = (),
) -> int:
    """What a training command does: ``train`` the run that ``--resume`` continues (its checkpoint
    ``checked`` for this task, its saved ``config_type`` with ``overrides``, the flags given now, over it; see
    ``_resumed_values`` for ``linked``) or a new one (``new()``), as the run flags say; then print its best
    epoch (``best(result.best)``) and where the run is."""
    resume = _checkpoint_to_continue(args.resume, overrides.get("output"))
    if resume is not None and resume != "auto":
        resume = checked(resume)
        config = config_type.from_dict(_resumed_values(resume, overrides, linked))
    else:
        config = new()
    result = train(config, resume=resume, overwrite=args.overwrite, extend_schedule=args.extend_schedule)
    if result.best:
        print(f"{best(result.best)}; run: {result.run_dir}")
    return 0
