"""The ``senet`` command. Each sub-command is a thin layer over a Python function of the package.

One module per command group registers its sub-commands and holds their functions, which import the modules
that do the work (torch, the engines) only when they run, so that ``senet --help`` stays fast:
:mod:`~senet.cli.models`, :mod:`~senet.cli.train` (train, eval, plot), :mod:`~senet.cli.study` (ablate, demo),
:mod:`~senet.cli.deploy` (predict, export), :mod:`~senet.cli.weights` (convert), :mod:`~senet.cli.bench`,
:mod:`~senet.cli.data`, :mod:`~senet.cli.analyze` and :mod:`~senet.cli.detect`. What their parsers share is in
:mod:`~senet.cli.flags`; the training commands' run directory and ``--resume`` in :mod:`~senet.cli.runs`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import typing
from typing import Sequence

from senet.cli import analyze, bench, data, deploy, detect, models, study, train, weights
from senet.cli.flags import Parser

# The commands in the order `senet --help` lists them.
_COMMANDS = (
    models.add_models,
    train.add_train,
    study.add_ablate,
    train.add_eval,
    deploy.add_predict,
    weights.add_convert,
    train.add_plot,
    bench.add_bench,
    deploy.add_export,
    study.add_demo,
    data.add_data,
    analyze.add_analyze,
    detect.add_detect,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="senet", description="Squeeze-and-Excitation Networks: build, count, train, measure."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of these; `senet COMMAND --help` describes its flags",
    )
    for add_command in _COMMANDS:
        add_command(commands)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("senet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from senet import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit status: 0, 2 for bad input (one line on stderr), or another non-zero
    status for a run that diverged or was stopped.
    Errors argparse finds itself (a flag's value, a missing argument) exit with status 2 too, by raising
    SystemExit after printing the usage and one error line, as do ``--help`` and ``--version`` with 0.
    A standard output closed by its reader (``senet models | head -1``) ends any command quietly with status
    141, as SIGPIPE ends a Unix tool (128 + SIGPIPE; Python itself ignores the signal and raises instead)."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # what is still buffered goes now, where a closed pipe is caught, not at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # Python flushes stdout again at exit: give it somewhere to write, or it prints the error after all.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _stdout_closed() -> bool:
    """Whether standard output is a pipe (or socket) whose reading end is gone: a BrokenPipeError from
    anything else (a worker's pipe) is an error like any other."""
    import select

    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file (pytest's capture)
        return False
    if not hasattr(select, "poll"):  # no poll (Windows): stdout is the likely pipe
        return True
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _run(argv: Sequence[str] | None) -> int:
    """:func:`main` but for a closed standard output."""
    from senet.ops import SEKernelError
    from senet.train.control import TrainingInterrupted
    from senet.train.lifecycle import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        with _terminate_by_exception():
            return args.run(args)
    except _Terminated:  # what a file write had under way was removed on the way out (atomic_write)
        print(f"senet {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (ValueError, OSError) as error:
        if isinstance(error, BrokenPipeError) and _stdout_closed():
            raise  # the reader of our output is gone: main ends quietly
        # Users get one line naming the problem; the traceback is for bugs, not for bad input (ValueError)
        # or a file that is missing, unreadable or in the way (OSError). An error raised in a DataLoader
        # worker arrives wrapped in its traceback: its last line is the message.
        message = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        print(f"senet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (TrainingDiverged, SEKernelError) as error:  # SEKernelError: a Triton kernel failed on this GPU
        print(f"senet {args.command}: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stopped:  # a stop signal, after a checkpoint: 128 + its number
        print(f"senet {args.command}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print(f"senet {args.command}: interrupted", file=sys.stderr)
        return 130


class _Terminated(BaseException):
    """SIGTERM as an exception: ``finally`` and ``except BaseException`` blocks run, so a file half written
    (senet convert, export) leaves no temporary file behind. ``senet train`` installs its own handlers."""


@contextlib.contextmanager
def _terminate_by_exception() -> typing.Iterator[None]:
    def terminate(signum: int, frame: object) -> None:
        raise _Terminated

    own = threading.current_thread() is threading.main_thread()
    own = own and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # never replace a caller's handler
    previous = signal.signal(signal.SIGTERM, terminate) if own else None
    try:
        yield
    finally:
        if own:
            signal.signal(signal.SIGTERM, previous)
