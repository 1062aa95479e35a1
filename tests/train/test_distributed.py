"""Two CPU processes with gloo, all traffic on loopback: DDP keeps ranks identical and only rank 0 writes."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from senet.train import TrainConfig, train
from senet.weights.checkpoint import load_checkpoint

CONFIG = dict(
    model="se_resnet20_cifar",
    model_options={"widths": (4, 8, 8)},
    data="digits",
    epochs=2,
    batch_size=64,
    lr=0.1,
    schedule="cosine",
    log_interval=0,
    device="cpu",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig(**CONFIG, output=os.path.join(out, "run")))
        save_file(
            {k: v.contiguous() for k, v in result.model.state_dict().items()},
            os.path.join(out, f"rank{rank}.safetensors"),
        )
    finally:
        dist.destroy_process_group()


def test_two_ddp_processes_stay_identical_and_learn(tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2  # rank 0 alone writes
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[0]["val_images"] == 360  # each validation image counted once over both ranks


def _torchrun(*args, env=None, expect=0, launcher=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    start = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *launcher, "-m", "senet"]
    command = [sys.executable, *start, *"train --log-interval 0 --device cpu".split(), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == (expect == 0), done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_a_rank_whose_batch_is_all_unreadable_makes_every_rank_skip_it(tmp_path, make_folder):
    root = make_folder(classes=("cat", "dog"), per_class=6)
    files = sorted((root / "train").rglob("*.jpg"))  # ImageFolder's order: by class, then by name
    # DistributedSampler's epoch-0 order (seed 0); rank 1 takes every second index, 2 per batch.
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
    for index in order[1::2][:2]:  # rank 1's first batch: nothing readable
        files[index].write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    tiny = (
        "--model se_resnet20_cifar --model-opt widths=(4,4,4) --image-size 32 --batch-size 4 --epochs 1 "
        "--lr 0.01"
    ).split()
    _torchrun("--data", str(root), *tiny, "--output", str(run))
    record = json.loads((run / "metrics.jsonl").read_text())
    assert record["train_skipped"] == 2
    # Rank 0's half of the skipped step is not trained on either.
    assert record["train_images"] == len(files) - 4
    assert record["val_images"] == 12


TORCHRUN_DEMO = ["--preset", "demo", "--model-opt", "widths=(4,4,4)", "--epochs", "1", "--batch-size", "128"]


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """An uninterrupted 2-process run of the CLI under torchrun."""
    run = tmp_path_factory.mktemp("torchrun") / "run"
    done = _torchrun(*TORCHRUN_DEMO, "--output", str(run))
    return run, done


def test_torchrun_runs_the_cli(torchrun_run):
    run, done = torchrun_run
    assert "2 process(es)" in done.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, torchrun_run):
    run = tmp_path / "run"
    fault = {"SENET_FAULT": "SIGTERM@step=3", "SENET_FAULT_RANK": "1"}
    done = _torchrun(*TORCHRUN_DEMO, "--output", str(run), env=fault, expect=1)
    assert "stopped by SIGTERM at epoch 1, batch 3" in done.stdout
    assert load_checkpoint(run).meta["world_size"] == 2 and len(load_checkpoint(run).meta["rng"]) == 2
    _torchrun("--resume", str(run))
    ours, theirs = (load_checkpoint(d).model_state() for d in (run, torchrun_run[0]))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_finished_torchrun_job_exits_0_every_time(tmp_path):
    # Before the process group was ended at exit, gloo's threads outlived the interpreter and a finished job's
    # workers died with SIGABRT ("terminate called without an active exception") in some of the runs.
    tiny = "--model resnet20_cifar --model-opt widths=(4,4,4) --epochs 1 --batch-size 256".split()
    for attempt in range(3):
        done = _torchrun(*tiny, "--output", str(tmp_path / f"run{attempt}"))
        assert "terminate called" not in done.stderr and "epoch 1/1" in done.stdout


def test_torchrun_restarts_a_killed_worker_group_from_the_newest_checkpoint(tmp_path, torchrun_run):
    # Rank 1 is killed after step 7 of 11; torchrun --max-restarts starts a new worker group, which takes the
    # run directory's lock again, continues from step 5's checkpoint and ends with the uninterrupted weights.
    run = tmp_path / "run"
    fault = {"SENET_FAULT": "SIGKILL@step=7", "SENET_FAULT_RANK": "1"}
    job = [*TORCHRUN_DEMO, "--output", str(run), "--resume", "auto", "--save-every-steps", "5"]
    done = _torchrun(*job, env=fault, launcher=["--max-restarts=1"])
    assert "resuming" in done.stdout and "batch 5 (step 5)" in done.stdout
    ours, theirs = (load_checkpoint(d).model_state() for d in (run, torchrun_run[0]))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
