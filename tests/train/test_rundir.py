"""Runs are never clobbered, finished runs say so, a resumed run changes its schedule only when told, and one
process writes a run directory at a time."""

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from senet.cli import main
from senet.train import TrainConfig, train
from senet.train.rundir import LOCK_NAME, RunDirInUse, lock_run_dir, run_dir_holder
from senet.weights.checkpoint import list_checkpoints, load_checkpoint

ARGS = (
    "--model resnet20_cifar --model-opt widths=(4,4,4) --batch-size 256 --schedule step --step-epochs 1 "
    "--gamma 0.5 --log-interval 0 --device cpu"
).split()


def _config(run, **options):
    """ARGS for one epoch into ``run``, as a TrainConfig (for runs in this process)."""
    return TrainConfig(
        model="resnet20_cifar",
        model_options={"widths": (4, 4, 4)},
        batch_size=256,
        epochs=1,
        schedule="step",
        step_epochs=1,
        gamma=0.5,
        log_interval=0,
        device="cpu",
        output=str(run),
        **options,
    )


def snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run (5 steps of 256 digits)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *ARGS, "--epochs", "1", "--output", str(run)]) == 0
    return run


def test_an_existing_run_is_refused_without_resume_or_overwrite(finished, capsys):
    before = snapshot(finished)
    assert main(["train", *ARGS, "--epochs", "1", "--output", str(finished)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--overwrite" in err
    assert snapshot(finished) == before


def test_overwrite_replaces_a_run_but_never_other_files(tmp_path, finished, capsys):
    run = tmp_path / "run"
    assert main(["train", *ARGS, "--epochs", "1", "--output", str(run)]) == 0
    first = load_checkpoint(run).path.read_bytes()
    assert main(["train", *ARGS, "--epochs", "1", "--output", str(run), "--overwrite", "--lr", "0.05"]) == 0
    assert json.loads((run / "config.json").read_text())["lr"] == 0.05
    assert (
        len((run / "metrics.jsonl").read_text().splitlines()) == 1
        and load_checkpoint(run).path.read_bytes() != first
    )
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    assert main(["train", *ARGS, "--epochs", "1", "--output", str(run), "--overwrite"]) == 2
    assert "not a senet run's (notes.txt" in capsys.readouterr().err and snapshot(run) == before


def test_a_failing_start_creates_nothing(tmp_path, monkeypatch, make_folder):
    monkeypatch.chdir(tmp_path)
    one_class = make_folder(classes=("cat",), per_class=2)
    assert main(["train", "--model", "se_resnet05", "--epochs", "1"]) == 2
    assert main(["train", *ARGS, "--epochs", "1", "--data", str(one_class)]) == 2
    assert not (tmp_path / "runs").exists()


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, capsys):
    before = snapshot(finished)
    assert main(["train", "--resume", str(finished)]) == 0
    assert "has finished all 1 epochs; nothing to do" in capsys.readouterr().out
    assert snapshot(finished) == before


def test_a_changed_schedule_needs_extend_schedule_and_the_log_says_what_the_lr_does(
    tmp_path, finished, capsys
):
    before = snapshot(finished)
    for flags in (["--epochs", "3"], ["--lr", "0.3"], ["--batch-size", "128"]):
        assert main(["train", "--resume", str(finished), *flags]) == 2
        assert "--extend-schedule" in capsys.readouterr().err
    assert main(["train", "--resume", str(finished), "--model", "resnet56_cifar"]) == 2
    assert "belongs to another run (model:" in capsys.readouterr().err
    assert snapshot(finished) == before
    run = tmp_path / "extended"
    run.mkdir()
    for path in finished.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    assert main(["train", "--resume", str(run), "--epochs", "3", "--extend-schedule"]) == 0
    log = (run / "train.log").read_text()
    # step schedule, lr 0.1 halved every epoch: epoch 2 starts at 0.05, epoch 3 at 0.025.
    assert "changed on resume: epochs 1 -> 3" in log
    assert "schedule recomputed for 3 epochs: lr 0.05 now; at the start of epoch 3: 0.025" in log
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_auto_starts_then_continues_the_run(tmp_path):
    run = tmp_path / "job"
    command = ["train", *ARGS, "--epochs", "2", "--output", str(run), "--resume", "auto"]
    train(_config(run), resume="auto")  # the job's first attempt got through one epoch of two
    assert [load_checkpoint(p).position for p in list_checkpoints(run)] == [(1, 0)]
    assert main([*command, "--extend-schedule"]) == 0  # requeued: continues, does not start over
    assert load_checkpoint(run).position == (2, 0)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--resume", "auto", *ARGS]) == 2  # auto needs to know where the run is


_HOLDER = """
import os, sys, time
from senet.train.rundir import lock_run_dir
lock = lock_run_dir(sys.argv[1], "senet train")
child = os.fork()  # as a DataLoader worker is forked from the training process
if child == 0:
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
time.sleep(120)
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


@contextlib.contextmanager
def held_by_another_process(directory):
    """``directory`` locked by another live process, as a running ``senet train`` holds its run directory;
    yields that process (a forked child of it runs too, as DataLoader workers do) and the child's pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory)], stdout=subprocess.PIPE, env=_env()
    )
    child = int(holder.stdout.readline())
    try:
        yield holder, child
    finally:
        for pid in (holder.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        holder.wait()


def test_a_run_directory_lock_names_its_holder_and_ends_with_it_not_with_its_children(tmp_path, capsys):
    run = tmp_path / "run"
    with held_by_another_process(run) as (holder, child):
        named = f"in use by senet train, pid {holder.pid} on {socket.gethostname()}"
        assert run_dir_holder(run) == named[len("in use by ") :]
        with pytest.raises(RunDirInUse, match=named):
            lock_run_dir(run, "senet train")
        # A study or a demo whose folder a live process writes is refused too, before anything trains, and
        # so is resuming a live run that has saved no checkpoint yet.
        for command in (
            ["ablate", "--study", "squeeze", "--model", "se_resnet20_cifar", "--output", str(run)],
            ["demo", "--output", str(run)],
            ["train", "--resume", str(run)],
        ):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and named in err
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
        os.kill(child, 0)  # the forked child lives on, and holds no lock
        assert run_dir_holder(run) is None
        with lock_run_dir(run, "senet train"):
            assert run_dir_holder(run) == f"senet train, pid {os.getpid()} on {socket.gethostname()}"
            with pytest.raises(RunDirInUse, match="in use by senet train, pid"):
                lock_run_dir(run, "senet train")  # the same process twice: refused as well
        assert run_dir_holder(run) is None and [p.name for p in run.iterdir()] == [LOCK_NAME]


def test_a_live_run_is_refused_by_a_second_process_and_left_untouched(tmp_path):
    # A requeued job (--resume auto) whose old job still runs, a --resume and an --overwrite: each is refused
    # in one line naming the live process, and none of them touches its files (so no epoch is listed twice).
    run = tmp_path / "run"
    seen = {}

    def second_processes(epoch, batch):
        if (epoch, batch) != (0, 2):  # after the second step, with step 1's checkpoint saved
            return
        before = snapshot(run)
        new = [*ARGS, "--epochs", "1", "--output", str(run)]
        commands = {
            "resume": ["--resume", str(run)],
            "auto": [*new, "--resume", "auto"],
            "overwrite": [*new, "--overwrite"],
        }
        started = {
            name: subprocess.Popen(
                [sys.executable, "-m", "senet", "train", *args], env=_env(), stderr=subprocess.PIPE, text=True
            )
            for name, args in commands.items()
        }
        for name, process in started.items():
            seen[name] = (process.wait(timeout=300), process.stderr.read())
        seen["untouched"] = snapshot(run) == before

    train(_config(run, save_every_steps=1), on_step=second_processes)
    named = f"{run} is in use by senet train, pid {os.getpid()} on {socket.gethostname()}"
    for name in ("resume", "auto", "overwrite"):
        code, err = seen[name]
        assert code == 2 and err.count("\n") == 1 and named in err, (name, err)
    assert seen["untouched"]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_file_system_without_locks_is_named_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    from senet.train import rundir

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    with lock_run_dir(tmp_path / "run", "senet train"):
        assert run_dir_holder(tmp_path / "run") is None
    assert "offers no locks (No locks available)" in caplog.text
