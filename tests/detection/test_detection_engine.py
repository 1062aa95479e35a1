"""The detection engine and `senet detect`: training lowers the loss, evaluation is pycocotools' dict, exact
resume after a stop signal, Detectron's schedule and freezing, the CLI from train to predict, DDP's gather.

(Not ``test_engine.py``: tests/train has one, and the test folders are not packages.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

import senet
from senet.cli import main
from senet.data.transforms import Preprocessing
from senet.detection.config import DetectionConfig
from senet.detection.engine import evaluate_run, load_detector, lr_factor, train
from senet.detection.metrics import METRICS
from senet.train.control import FAULT_ENV, TrainingInterrupted
from senet.weights.checkpoint import load_checkpoint
from senet.weights.info import WeightsInfo, save_weights_file

WIDTHS = (8, 16, 32)
# A detector of a few hundred thousand parameters on 64 px images (see test_model.py): ~0.2 s per step of 4.
TINY = dict(
    backbone="resnet20_cifar",
    backbone_options={"widths": WIDTHS},
    out_indices=(2, 3),
    fpn_channels=32,
    box_head_size=128,
    min_size=(56, 64),  # two sizes: the random choice per batch is part of what resume must replay
    max_size=64,
    detector_options=dict(rpn_batch_size_per_image=64, box_batch_size_per_image=64),
    batch_size=4,
    epochs=2,
    device="cpu",
    log_interval=0,
)
TINY_CLI = (
    "--backbone resnet20_cifar --backbone-opt widths=(8,16,32) --out-indices 2,3 --fpn-channels 32 "
    "--box-head-size 128 --min-size 56,64 --max-size 64 --detector-opt rpn_batch_size_per_image=64 "
    "--detector-opt box_batch_size_per_image=64 --batch-size 4 --device cpu --log-interval 0"
).split()
STEPS_PER_EPOCH = 19 // 4  # 20 training images, one holding only a crowd: 19, in full batches of 4


def config(shapes_root: Path, run: Path, **overrides) -> DetectionConfig:
    return DetectionConfig(**{**TINY, "data": str(shapes_root), "output": str(run), **overrides})


@pytest.fixture(scope="module")
def straight(shapes_root, tmp_path_factory):
    """An uninterrupted two-epoch run that the other tests read or must reproduce."""
    return train(config(shapes_root, tmp_path_factory.mktemp("straight") / "run"))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _untimed(records: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s", "eval_time_s")}
        for r in records
    ]


def test_training_lowers_the_loss_and_records_coco_metrics_per_epoch(straight):
    records = _records(straight.run_dir)
    assert [r["epoch"] for r in records] == [1, 2] and records == straight.history
    assert records[1]["train_loss"] < 0.9 * records[0]["train_loss"], [r["train_loss"] for r in records]
    for record in records:
        assert {f"val_{name}" for name in METRICS} <= set(record)
        assert record["val_images"] == 5 and record["train_images"] == STEPS_PER_EPOCH * 4
        assert record["train_loss"] == pytest.approx(
            sum(
                record[f"train_{part}"]
                for part in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
            )
        )
    meta = load_checkpoint(straight.run_dir).meta
    assert meta["task"] == "detection" and meta["classes"] == ["rectangle", "ellipse", "triangle"]
    assert meta["categories"]["coco_ids"] == [3, 7, 11]
    assert meta["build_options"]["backbone_options"] == {"widths": list(WIDTHS)}
    assert json.loads((straight.run_dir / "config.json").read_text())["epochs"] == 2


def test_evaluate_run_is_the_coco_dict_of_the_last_epoch(straight):
    result = evaluate_run(straight.run_dir, device="cpu", batch_size=3)
    assert set(result) == {*METRICS, "images", "skipped"} and result["images"] == 5
    last = straight.history[-1]
    assert all(result[name] == pytest.approx(last[f"val_{name}"], abs=1e-12) for name in METRICS)
    written = json.loads((straight.run_dir / "eval-last.json").read_text())
    assert written["metrics"] == result and written["epoch"] == 2
    best = evaluate_run(straight.run_dir, device="cpu", weights="best", write=False)
    assert best["AP"] == pytest.approx(straight.best["val_AP"], abs=1e-12)
    detector, categories, _ = load_detector(straight.run_dir)
    assert categories.coco_ids == (3, 7, 11) and not detector.training


def test_a_stop_signal_mid_epoch_resumes_to_the_straight_runs_weights(
    shapes_root, tmp_path, monkeypatch, straight
):
    run = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, f"SIGTERM@step={STEPS_PER_EPOCH + 2}")  # epoch 2, after its 2nd step
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config(shapes_root, run))
    assert stopped.value.saved and stopped.value.exit_code == 128 + signal.SIGTERM
    assert "senet detect train --resume" in str(stopped.value)
    assert load_checkpoint(run).position == (1, 2)
    monkeypatch.delenv(FAULT_ENV)
    resumed = train(config(shapes_root, run), resume=run)
    ours, theirs = resumed.model.state_dict(), straight.model.state_dict()
    assert [k for k in theirs if not torch.equal(ours[k], theirs[k])] == []
    assert _untimed(_records(run)) == _untimed(_records(straight.run_dir))  # losses and COCO metrics too


def test_schedules_are_detectrons_1x_and_2x_with_warmup_and_linear_scaling():
    one = DetectionConfig(data="coco")
    assert (one.schedule, one.epochs, one.scaled_lr()) == ("1x", 12, 0.02)
    assert DetectionConfig(schedule="2x").epochs == 24 and DetectionConfig(epochs=24).milestones == (16, 22)
    assert DetectionConfig(batch_size=2).scaled_lr() == pytest.approx(0.0025)
    # 1x at 1000 steps an epoch: warm-up from 1/3 over Detectron's 500 steps, x0.1 at epoch 8, x0.01 at 11.
    factor = lr_factor(one, 1000)
    assert factor(0) == pytest.approx(1 / 3) and factor(250) == pytest.approx(2 / 3)
    steps = (500, 7999, 8000, 10999, 11000, 11999)
    assert [factor(s) for s in steps] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    # A 3-epoch run of 10 steps: the warm-up is a fifth of it, the drops at 2/3 and 11/12 of it.
    short = lr_factor(DetectionConfig(epochs=3), 10)
    assert short(0) == pytest.approx(1 / 3) and short(6) == 1
    assert [short(s) for s in (19, 20, 27, 28)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert lr_factor(DetectionConfig(epochs=3, warmup_iters=0), 10)(0) == 1
    with pytest.raises(ValueError, match="give one of --schedule and --epochs"):
        DetectionConfig(schedule="1x", epochs=5)


def test_pretrained_weights_train_with_frozen_bn_stem_and_first_stage(shapes_root, tmp_path):
    network = senet.create_model("resnet20_cifar", num_classes=10, widths=WIDTHS)
    info = WeightsInfo(
        "resnet20_cifar", {"widths": list(WIDTHS)}, 10, Preprocessing((0.5,) * 3, (0.25,) * 3, 32)
    )
    weights = save_weights_file(tmp_path / "imagenet.safetensors", network.state_dict(), info)
    options = {**TINY, "epochs": 1, "pretrained": str(weights)}
    del options["backbone_options"]  # the weights' record brings them
    result = train(DetectionConfig(**options, data=str(shapes_root), output=str(tmp_path / "run")))
    meta = load_checkpoint(result.run_dir).meta
    assert (meta["build_options"]["norm"], meta["build_options"]["frozen_stages"]) == ("frozen_bn", 1)
    body, start = result.model.backbone.body.state_dict(), network.state_dict()
    frozen = [k for k in body if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert frozen and all(torch.equal(body[k], start[k]) for k in frozen)  # neither stepped nor decayed
    assert not torch.equal(body["layer3.0.conv1.weight"], start["layer3.0.conv1.weight"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    (tmp_path / "imagenet.safetensors").unlink()
    rebuilt, _, _ = load_detector(result.run_dir)  # without the weights file: from the recorded options
    assert list(rebuilt.transform.image_mean) == [0.5] * 3


def test_cli_train_resume_eval_predict_and_plot(shapes_root, tmp_path, capsys):
    run = tmp_path / "cli"
    assert (
        main(
            ["detect", "train", *TINY_CLI, "--data", str(shapes_root), "--epochs", "1", "--output", str(run)]
        )
        == 0
    )
    assert "best val AP" in capsys.readouterr().out
    assert main(["detect", "train", "--resume", str(run), "--epochs", "2", "--extend-schedule"]) == 0
    assert load_checkpoint(run).meta["epoch"] == 2 and len(_records(run)) == 2
    capsys.readouterr()
    assert main(["detect", "eval", "--checkpoint", str(run), "--device", "cpu", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["AP50"] == pytest.approx(_records(run)[-1]["val_AP50"], abs=1e-12)

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    images = sorted((shapes_root / "val2017").glob("*.png"))[:2]
    drawn = tmp_path / "drawn"
    argv = [
        "detect",
        "predict",
        "--checkpoint",
        str(run),
        *map(str, images),
        str(broken),
        "--output",
        str(drawn),
    ]
    assert main([*argv, "--score-threshold", "0.01", "--max-detections", "3", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and {line["image"] for line in lines} <= set(map(str, images))
    assert all(line["category_id"] in (3, 7, 11) and line["score"] >= 0.01 for line in lines)
    assert all(len(line["box"]) == 4 and line["box"][0] <= line["box"][2] <= 64 for line in lines)
    for image in images:
        assert sum(line["image"] == str(image) for line in lines) <= 3
    assert f"skipped {broken}" in err and err.count("skipped") == 1
    assert sorted(p.name for p in drawn.iterdir()) == sorted(p.name for p in images)

    assert main(["plot", str(run), "--out", str(tmp_path / "ap.png")]) == 0
    assert main(["plot", str(run), "--metric", "loss", "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "ap.png").stat().st_size > 1000
    assert main(["predict", "--checkpoint", str(run), str(images[0])]) == 2  # a classifier's command
    assert "is a detection run" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, root: str, out: str) -> None:
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
        result = train(config(Path(root), Path(out) / "run", epochs=1))
        state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
        save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def test_two_ddp_processes_gather_their_detections_for_one_cocoeval(shapes_root, tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(shapes_root), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    (record,) = _records(tmp_path / "run")
    assert record["val_images"] == 5  # each rank evaluated its slice (3 + 2), gathered on rank 0
    # One process on the same weights and images gives the same COCO metrics.
    alone = evaluate_run(tmp_path / "run", device="cpu", write=False)
    assert all(alone[name] == pytest.approx(record[f"val_{name}"], abs=1e-12) for name in METRICS)


def test_an_amp_run_validates_in_float32_as_detect_eval_scores(shapes_root, tmp_path):
    # bf16 scores tie where float32 ones do not, and COCOeval ranks detections by score.
    result = train(config(shapes_root, tmp_path / "run", epochs=1, amp=True))
    (record,) = result.history
    fp32 = evaluate_run(result.run_dir, device="cpu", batch_size=4, write=False)
    assert all(fp32[name] == record[f"val_{name}"] for name in METRICS)


def test_a_run_directory_another_process_writes_is_refused_untouched(shapes_root, tmp_path, capsys):
    from tests.train.test_rundir import held_by_another_process, snapshot

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')  # a live run's file, which --overwrite would delete
    with held_by_another_process(run) as (holder, _):
        before = snapshot(run)
        argv = ["detect", "train", *TINY_CLI, "--data", str(shapes_root), "--epochs", "1"]
        assert main([*argv, "--output", str(run), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by senet train, pid {holder.pid} on" in err
        assert snapshot(run) == before


def test_a_torchrun_detection_job_exits_0_every_time(shapes_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "senet",
    ]
    for attempt in range(2):
        args = ["detect", "train", *TINY_CLI, "--data", str(shapes_root), "--epochs", "1"]
        command = [*launcher, *args, "--output", str(tmp_path / f"run{attempt}")]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]
        assert len(_records(tmp_path / f"run{attempt}")) == 1
