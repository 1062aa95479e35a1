"""Two CPU processes with gloo, all traffic on loopback: DDP keeps ranks identical and only rank 0 writes."""

import json
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from senet.train import TrainConfig, train

CONFIG = dict(model="se_resnet20_cifar", model_options={"widths": (4, 8, 8)}, data="digits", epochs=2,
              batch_size=64, lr=0.1, schedule="cosine", log_interval=0, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig(**CONFIG, output=os.path.join(out, "run")))
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))
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


def test_torchrun_runs_the_cli(tmp_path):
    run = tmp_path / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "senet",
               "train", "--preset", "demo", "--model-opt", "widths=(4,8,8)", "--epochs", "1", "--output", str(run),
               "--log-interval", "0", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 process(es)" in done.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
