"""Kill tests: training interrupted at fixed points resumes to exactly the uninterrupted run's weights.

Signals are sent at a fixed optimizer step or inside a checkpoint write through ``SENET_FAULT`` (see
``senet.train.control``), never by timers, so every test is deterministic on a loaded 2-core machine. SIGINT,
SIGTERM and SIGUSR1 run in-process (our handler catches them); SIGKILL needs a child process.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from senet.train import TrainConfig, TrainingInterrupted, train
from senet.train.control import FAULT_ENV
from senet.weights.checkpoint import list_checkpoints, load_checkpoint

STEPS_PER_EPOCH = 1437 // 128  # digits' training split in full batches of 128
SETTINGS = dict(
    model="se_resnet20_cifar",
    model_options={"widths": (4, 4, 4)},
    data="digits",
    epochs=2,
    batch_size=128,
    lr=0.1,
    schedule="cosine",
    warmup_epochs=0.5,
    log_interval=0,
    device="cpu",
    workers=0,
)
CLI = (
    "--model se_resnet20_cifar --model-opt widths=(4,4,4) --data digits --epochs 2 --batch-size 128 --lr 0.1 "
    "--schedule cosine --warmup-epochs 0.5 --log-interval 0 --device cpu --workers 0"
).split()


def config(run, **overrides) -> TrainConfig:
    return TrainConfig(**{**SETTINGS, "output": str(run), **overrides})


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    result = train(config(tmp_path_factory.mktemp("straight") / "run"))
    return {k: v.clone() for k, v in result.model.state_dict().items()}, result.history


def assert_same_run(result, straight):
    weights, history = straight
    state = result.model.state_dict()
    different = [k for k, v in weights.items() if not torch.equal(state[k], v)]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # never a duplicated or missing metrics line
    for ours, theirs in zip(records, history, strict=True):
        assert ours["train_images"] == theirs["train_images"] == STEPS_PER_EPOCH * 128
        assert ours["train_loss"] == theirs["train_loss"] and ours["val_top1_err"] == theirs["val_top1_err"]


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGUSR1"])
def test_a_stop_signal_mid_epoch_saves_at_the_step_and_resumes_exactly(tmp_path, monkeypatch, straight, name):
    run = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, f"{name}@step={STEPS_PER_EPOCH + 4}")  # epoch 2, after its 4th step
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config(run))
    assert stopped.value.saved and stopped.value.exit_code == 128 + signal.Signals[name]
    assert load_checkpoint(run).position == (1, 4)
    monkeypatch.delenv(FAULT_ENV)
    assert_same_run(train(config(run), resume=run), straight)


def test_a_signal_during_evaluation_saves_the_trained_epoch(tmp_path, monkeypatch, straight):
    run = tmp_path / "run"
    # At the last step of epoch 1: the signal is noticed during evaluation.
    monkeypatch.setenv(FAULT_ENV, f"SIGTERM@step={STEPS_PER_EPOCH}")
    with pytest.raises(TrainingInterrupted):
        train(config(run))
    assert load_checkpoint(run).position == (0, STEPS_PER_EPOCH)  # trained, not yet evaluated
    assert not (run / "metrics.jsonl").exists()
    monkeypatch.delenv(FAULT_ENV)
    assert_same_run(train(config(run), resume=run), straight)


def test_a_signal_while_the_epoch_checkpoint_is_written_keeps_it(tmp_path, monkeypatch, straight):
    run = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "SIGINT@save=1")  # arrives inside the first save: epoch 1's checkpoint
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config(run))
    assert stopped.value.saved and load_checkpoint(run).position == (1, 0)
    monkeypatch.delenv(FAULT_ENV)
    assert_same_run(train(config(run), resume=run), straight)


def _killed_cli_run(run, fault, *extra):
    env = {**os.environ, FAULT_ENV: fault, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "senet", "train", *CLI, "--output", str(run), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def test_sigkill_resumes_from_the_last_step_checkpoint(tmp_path, straight):
    run = tmp_path / "run"
    _killed_cli_run(run, f"SIGKILL@step={STEPS_PER_EPOCH + 6}", "--save-every-steps", "4", "--keep", "2")
    # Saved at steps 4, 8, epoch end (11), 12 and 16; two are kept, the newest at epoch 2, batch 5.
    assert [load_checkpoint(p).position for p in list_checkpoints(run)] == [(1, 1), (1, 5)]
    result = train(config(run, save_every_steps=4), resume=run)
    assert_same_run(result, straight)


def test_a_kill_inside_a_checkpoint_write_loses_nothing_but_that_save(tmp_path, straight):
    run = tmp_path / "run"
    _killed_cli_run(run, "SIGKILL@save=2", "--save-every-steps", "4")  # killed writing step 8's checkpoint
    assert [load_checkpoint(p).position for p in list_checkpoints(run)] == [(0, 4)]
    orphans = [p.name for p in run.glob("checkpoint-*.safetensors")]
    assert len(orphans) == 2  # the killed save's tensors, never committed by their JSON
    result = train(config(run, save_every_steps=4), resume=run)
    assert_same_run(result, straight)
    assert not list(run.glob(".*.tmp"))


def test_the_cli_exits_with_128_plus_the_signal_after_saving(tmp_path, monkeypatch, capsys):
    from senet.cli import main

    monkeypatch.setenv(FAULT_ENV, "SIGTERM@step=2")
    assert main(["train", *CLI, "--epochs", "1", "--output", str(tmp_path / "run")]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped by SIGTERM at epoch 1, batch 2" in err and "--resume" in err


def test_a_failed_save_after_a_signal_exits_1_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from senet.train import lifecycle

    run = tmp_path / "run"
    real_save = lifecycle.save_checkpoint
    saves = []

    def disk_full_on_the_second_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "save_checkpoint", disk_full_on_the_second_save)
    monkeypatch.setenv(FAULT_ENV, "SIGTERM@step=6")
    with pytest.raises(TrainingInterrupted, match="No space left on device") as stopped:
        train(config(run, save_every_steps=4))
    assert not stopped.value.saved and stopped.value.exit_code == 1
    assert load_checkpoint(run).position == (0, 4)


def test_time_based_saves_count_from_the_last_save(monkeypatch):
    from senet.train import control as control_module

    now = [1000.0]
    monkeypatch.setattr(control_module.time, "monotonic", lambda: now[0])
    control = control_module.RunControl(save_every_minutes=2)
    assert not control.poll(step=1).save
    now[0] += 119
    assert not control.poll(step=2).save
    now[0] += 1
    assert control.poll(step=3).save
    control.saved(3)
    assert not control.poll(step=4).save
    by_steps = control_module.RunControl(save_every_steps=5)
    assert [s for s in range(1, 16) if by_steps.poll(step=s).save] == [5, 10, 15]


def test_a_second_signal_stops_at_once_and_handlers_are_restored():
    from senet.train.control import RunControl

    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(KeyboardInterrupt):
        with RunControl() as control:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert control.poll(step=1).stop_signal == signal.SIGUSR1
            os.kill(os.getpid(), signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) is before
