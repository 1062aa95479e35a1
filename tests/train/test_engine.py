import json
import math

import pytest
import torch

from senet.cli import main
from senet.train import TrainConfig, TrainingDiverged, train
from senet.weights.checkpoint import load_checkpoint

TINY = {"widths": (4, 8, 8)}  # a CIFAR ResNet-20 a few thousand parameters wide: seconds per epoch on digits


def tiny_config(tmp_path, name="run", **overrides) -> TrainConfig:
    values = dict(
        model="se_resnet20_cifar",
        model_options=TINY,
        data="digits",
        epochs=2,
        batch_size=64,
        lr=0.1,
        schedule="step",
        step_epochs=1,
        gamma=0.5,
        output=str(tmp_path / name),
        log_interval=0,
        device="cpu",
    )  # exact equality of runs is a CPU guarantee; CUDA kernels may reorder sums
    return TrainConfig(**{**values, **overrides})


def _same_weights(a, b):
    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_training_writes_config_log_metrics_and_checkpoints(tmp_path):
    result = train(tiny_config(tmp_path, epochs=2))
    run = result.run_dir
    assert json.loads((run / "config.json").read_text())["model"] == "se_resnet20_cifar"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "val_top1_err", "val_top5_err", "lr", "images_per_s"} <= set(records[0])
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert (run / "best.safetensors").is_file() and "epoch 2/2" in (run / "train.log").read_text()
    assert load_checkpoint(run).meta["epoch"] == 2
    # The rates each epoch trained at: 0.1, then 0.1 x gamma 0.5 (step schedule, one epoch per step).
    assert [(r["lr"], r["lr_last"]) for r in records] == [(0.1, 0.1), (0.05, 0.05)]
    (epoch_1,) = [
        line for line in (run / "train.log").read_text().splitlines() if line.startswith("epoch 1/2")
    ]
    assert "  lr 0.1  " in epoch_1


def test_a_cosine_run_logs_the_rates_its_epochs_trained_at_and_warm_up_stays_below_the_base_rate(tmp_path):
    result = train(tiny_config(tmp_path, schedule="cosine", warmup_epochs=0.5))
    steps = 22  # 1437 digits in full batches of 64
    total, warmup = 2 * steps, 0.5 * steps

    def cosine(step):  # the rate of optimizer step ``step`` (0-based), from the schedule's definition
        return 0.1 * 0.5 * (1 + math.cos(math.pi * step / total))

    first, second = result.history
    assert first["lr"] == pytest.approx(0.1 / warmup) and first["lr_last"] == pytest.approx(cosine(steps - 1))
    assert second["lr"] == pytest.approx(cosine(steps)) and second["lr_last"] == pytest.approx(
        cosine(total - 1)
    )
    assert second["lr_last"] > 0
    line = (result.run_dir / "train.log").read_text().splitlines()[-1]
    assert f"lr {second['lr']:.4g} to {second['lr_last']:.4g}" in line


def test_warm_up_never_exceeds_the_base_rate():
    # 0.5 warm-up epochs of 7 steps: warm-up ends mid-way through step 3 (3.5 steps), which the factor
    # ceil(3.5) / 3.5 = 1.14 used to overshoot.
    from senet.train.engine import lr_factor

    config = TrainConfig(model="resnet20_cifar", schedule="step", step_epochs=30, warmup_epochs=0.5)
    factors = [lr_factor(config, 7)(step) for step in range(20)]
    assert factors[:3] == pytest.approx([1 / 3.5, 2 / 3.5, 3 / 3.5]) and factors[3:] == [1.0] * 17


def test_resume_gives_exactly_the_weights_of_a_straight_run(tmp_path):
    straight = train(tiny_config(tmp_path, "straight", epochs=2))
    train(tiny_config(tmp_path, "resumed", epochs=1))
    # A step schedule does not depend on the number of epochs: extending 1 -> 2 epochs is the 2-epoch run.
    resumed = train(
        tiny_config(tmp_path, "resumed", epochs=2), resume=tmp_path / "resumed", extend_schedule=True
    )
    assert _same_weights(straight.model, resumed.model)
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in resumed.history]


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    # Epoch 1 trains normally; the step schedule then multiplies the lr by 1e30 and the loss blows up.
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch 2.*last good checkpoint"):
        train(tiny_config(tmp_path, epochs=2, gamma=1e30))
    after = load_checkpoint(tmp_path / "run")
    assert after.meta["epoch"] == 1 and after.meta["batches_done"] == 0
    assert all(torch.isfinite(v).all() for v in after.model_state().values())


def test_a_checkpoint_of_another_model_is_refused_with_what_differs(tmp_path):
    train(tiny_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="model: checkpoint 'se_resnet20_cifar' vs 'resnet20_cifar'"):
        train(tiny_config(tmp_path, model="resnet20_cifar"), resume=tmp_path / "run")


def test_cli_train_resume_eval_and_plot(tmp_path, capsys):
    run = tmp_path / "cli"
    args = [
        *"--model resnet20_cifar --model-opt widths=(4,8,8) --epochs 1".split(),
        "--output",
        str(run),
        *"--log-interval 0 --schedule step".split(),
    ]
    assert main(["train", "--preset", "demo", *args]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--extend-schedule"]) == 0
    assert load_checkpoint(run).meta["epoch"] == 2
    capsys.readouterr()
    per_class = tmp_path / "classes.csv"
    assert main(["eval", "--checkpoint", str(run), "--per-class", str(per_class), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["images"] == 360 and result["top1_err"] == pytest.approx(last["val_top1_err"], abs=1e-6)
    assert len((tmp_path / "classes.csv").read_text().splitlines()) == 11
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_eval_scores_a_run_at_its_own_evaluation_crop(tmp_path, capsys):
    # Trained at 32 x 32, validated at --eval-crop 16: `senet eval RUN` must score what the run logged.
    run = train(
        tiny_config(
            tmp_path, model="resnet20_cifar", model_options={"widths": (4, 8, 8)}, epochs=1, eval_crop=16
        )
    ).run_dir
    logged = json.loads((run / "metrics.jsonl").read_text())["val_top1_err"]
    capsys.readouterr()
    scored = {}
    for scales in ([], ["--scales", "16"], ["--scales", "32"]):
        assert main(["eval", "--checkpoint", str(run), "--format", "json", "--device", "cpu", *scales]) == 0
        scored[tuple(scales)] = json.loads(capsys.readouterr().out)["top1_err"]
    assert scored[()] == pytest.approx(logged, abs=1e-6) and scored[("--scales", "16")] == scored[()]
    assert abs(scored[("--scales", "32")] - logged) > 1  # the crop matters here: 15 of 360 images differ


def test_an_amp_run_validates_in_float32_as_senet_eval_scores(tmp_path):
    # bf16 logits tie (3 of the 360 digits had equal top-2 logits): a run's validation ranks float32 ones.
    from senet.data import build_data, build_loader
    from senet.train.evaluation import evaluate, evaluate_runs

    result = train(tiny_config(tmp_path, epochs=1, batch_size=256, amp=True))
    (record,) = result.history
    loader = build_loader(build_data("digits").val, batch_size=256, train=False)
    fp32 = evaluate(result.model, loader, torch.device("cpu"))
    assert record["val_loss"] == fp32["val_loss"] and record["val_top1_err"] == fp32["val_top1_err"]
    scored = evaluate_runs([result.run_dir], device="cpu")
    assert scored.top1_err == pytest.approx(record["val_top1_err"], abs=1e-6)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--model", "se_resnet05", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "closest: se_resnet50" in err
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_imagenet_paper_preset_runs_on_a_small_image_folder(tmp_path, make_folder):
    root = make_folder(classes=("cat", "dog"), per_class=4)
    run = tmp_path / "imagenet"
    tiny = (
        "--model se_resnet18 --model-opt widths=(8,8,8,8) --image-size 32 --batch-size 4 --epochs 1 "
        "--workers 0"
    ).split()
    argv = ["train", "--preset", "imagenet-paper", "--data", str(root), *tiny, "--output", str(run)]
    code = main([*argv, "--log-interval", "0", "--balanced-sampling"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["schedule"] == "step" and config["lr_reference_batch"] == 1024
    assert load_checkpoint(run).meta["classes"] == ["cat", "dog"]
    # Multi-scale, ten-crop and a two-model ensemble all fuse on the same validation images.
    assert (
        main(["eval", "--checkpoint", str(run), "--checkpoint", str(run), "--ten-crop", "--scales", "32,40"])
        == 0
    )


def test_unreadable_images_are_skipped_and_counted_or_fatal_with_strict_data(tmp_path, make_folder, capsys):
    root = make_folder(classes=("cat", "dog"), per_class=4)
    broken = root / "train" / "cat" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    tiny = (
        "--model resnet18 --model-opt widths=(8,8,8,8) --image-size 32 --batch-size 3 --epochs 1 "
        "--log-interval 0"
    ).split()
    common = ["train", "--data", str(root), *tiny]
    assert main([*common, "--output", str(tmp_path / "lenient")]) == 0
    record = json.loads((tmp_path / "lenient" / "metrics.jsonl").read_text())
    assert record["train_skipped"] >= 1
    assert main([*common, "--output", str(tmp_path / "strict"), "--strict-data"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(broken) in err


def test_a_training_split_with_no_readable_image_is_refused(tmp_path, make_folder, capsys):
    root = make_folder(classes=("cat", "dog"), per_class=2)
    for k in range(40):  # more than build_data's cheap up-front decode check looks at
        for name in ("cat", "dog"):
            (root / "train" / name / f"bad{k}.jpg").write_bytes(b"not a jpeg")
    for good in (root / "train").rglob("[0-9].jpg"):
        good.write_bytes(b"not a jpeg either")
    tiny = (
        "--model resnet20_cifar --model-opt widths=(4,4,4) --image-size 16 --batch-size 8 --epochs 1 "
        "--log-interval 0"
    ).split()
    code = main(["train", "--data", str(root), *tiny, "--output", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no train image could be used in epoch 1 (80 unreadable, skipped)" in err
