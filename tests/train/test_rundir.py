"""Runs are never clobbered, finished runs say so, and a resumed run changes its schedule only when told."""

import json

import pytest

from senet.cli import main
from senet.train import TrainConfig, train
from senet.train.checkpoint import list_checkpoints, load_checkpoint

ARGS = (
    "--model resnet20_cifar --model-opt widths=(4,4,4) --batch-size 256 --schedule step --step-epochs 1 "
    "--gamma 0.5 --log-interval 0 --device cpu"
).split()


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
    config = TrainConfig(
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
    )
    train(config, resume="auto")  # the job's first attempt got through one epoch of two
    assert [load_checkpoint(p).position for p in list_checkpoints(run)] == [(1, 0)]
    assert main([*command, "--extend-schedule"]) == 0  # requeued: continues, does not start over
    assert load_checkpoint(run).position == (2, 0)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--resume", "auto", *ARGS]) == 2  # auto needs to know where the run is
