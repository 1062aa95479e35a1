"""Bad input, one row each: the CLI answers with one line of error and exit status 2, never a traceback, and
leaves every file as it found it.

To add a case, append a ``Case`` to ``CASES``: an id, the argv after ``senet`` (paths are relative to a fresh
folder that already holds ``keep.txt`` and ``run/notes.txt``), optionally a ``setup(folder)`` that writes more
files first, and fragments the error line must contain. Anything that could start training uses tiny widths
and one epoch (``_train``), but every case here must fail before the first step.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from senet.cli import main
from senet.weights.checkpoint import FORMAT


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    setup: Callable[[Path], None] | None = None
    expect: tuple[str, ...] = ()  # fragments of the error line (the message must say what is wrong)
    marks: tuple = ()  # e.g. (pytest.mark.xfail(reason=...),) for a case whose fix is in progress


def _train(*extra: str) -> list[str]:
    """``senet train`` on a few-thousand-parameter network for one epoch, into the pre-existing ``run/``."""
    tiny = ["--device", "cpu", "--epochs", "1", "--model-opt", "widths=(4,8,8)", "--output", "run"]
    return ["train", *tiny, *extra]


_CHECKPOINT = "bad_run/checkpoint-e1-b0.json"  # given as a file, so that no run-folder lookup intervenes


def _checkpoint_json(content: str) -> Callable[[Path], None]:
    """A run folder whose checkpoint file holds ``content``: valid JSON or not, of the right shape or not."""

    def setup(folder: Path) -> None:
        (folder / _CHECKPOINT).parent.mkdir()
        (folder / _CHECKPOINT).write_text(content)

    return setup


@functools.cache
def _finished_run() -> Path:
    """One finished tiny run (trained once per test session), copied into the cases that need a real run."""
    run = Path(tempfile.mkdtemp(prefix="senet-bad-input-")) / "run"
    argv = (
        "train --device cpu --epochs 1 --batch-size 256 --log-interval 0 --model resnet20_cifar "
        "--model-opt widths=(4,4,4)"
    ).split()
    assert main([*argv, "--output", str(run)]) == 0
    return run


def _with_run(damage: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """Copy the finished run into ``done/``, then ``damage(done)`` (e.g. truncate one of its files)."""

    def setup(folder: Path) -> None:
        shutil.copytree(_finished_run(), folder / "done")
        if damage is not None:
            damage(folder / "done")

    return setup


def _truncate(pattern: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        for path in run.glob(pattern):
            path.write_bytes(path.read_bytes()[:100])

    return damage


def _weights_file(path: Path) -> None:
    """A senet weights file of a tiny resnet20_cifar."""
    import senet
    from senet.data.transforms import Preprocessing
    from senet.weights.info import WeightsInfo, save_weights_file

    net = senet.create_model("resnet20_cifar", widths=(4, 4, 4))
    info = WeightsInfo(
        "resnet20_cifar", {"widths": [4, 4, 4]}, 10, Preprocessing((0.5,) * 3, (0.2,) * 3, 32, 1.0)
    )
    save_weights_file(path, net.state_dict(), info)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# A detector of a few hundred thousand parameters on 64 px images (tests/detection/test_detection_engine.py).
_TINY_DETECTOR = [
    *"--device cpu --epochs 1 --backbone resnet20_cifar".split(),
    *"--backbone-opt widths=(8,16,32) --out-indices 2,3".split(),
    *"--fpn-channels 32 --box-head-size 128 --min-size 64 --max-size 64 --log-interval 0".split(),
]


def _detect(*extra: str) -> list[str]:
    """``senet detect train`` of a tiny detector for one epoch, into the pre-existing ``run/``."""
    return ["detect", "train", *_TINY_DETECTOR, "--output", "run", *extra]


@functools.cache
def _finished_detection_run() -> Path:
    """One finished tiny detection run on a shapes data set (both made once per test session)."""
    from senet.detection.shapes import make_shapes

    root = Path(tempfile.mkdtemp(prefix="senet-bad-input-detect-"))
    shapes = make_shapes(root / "shapes", train=8, val=2, size=64)
    argv = ["detect", "train", *_TINY_DETECTOR, "--batch-size", "4", "--data", str(shapes)]
    assert main([*argv, "--output", str(root / "run")]) == 0
    return root / "run"


def _with_detection_run(folder: Path) -> None:
    """Copy the finished detection run into ``det/``."""
    shutil.copytree(_finished_detection_run(), folder / "det")


def _other_categories(folder: Path) -> None:
    _with_detection_run(folder)
    _write(
        folder / "other.json",
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}),
    )
    (folder / "other").mkdir()


def _tiny_shapes(folder: Path) -> None:
    from senet.detection.shapes import make_shapes

    make_shapes(folder / "shapes", train=4, val=1, size=32, crowd_every=0)


CASES = [
    # runs: never clobbered, never resumed into something else, damaged files named
    Case(
        "train-existing-run", _train("--output", "done"), setup=_with_run(), expect=("already holds a run",)
    ),
    Case("train-output-is-a-file", _train("--output", "keep.txt", "--resume", "auto"), expect=("is a file",)),
    Case(
        "train-resume-a-run-that-saved-nothing",
        ["train", "--resume", "done"],
        setup=_with_run(lambda run: [p.unlink() for p in run.glob("checkpoint-*")]),
        expect=("saved none before it stopped", "--overwrite"),
    ),
    Case("train-overwrite-foreign-folder", _train("--overwrite"), expect=("not a senet run's (notes.txt",)),
    Case(
        "train-resume-and-overwrite",
        ["train", "--resume", "done", "--overwrite"],
        setup=_with_run(),
        expect=("contradict",),
    ),
    Case(
        "train-resume-changed-epochs",
        ["train", "--resume", "done", "--epochs", "3"],
        setup=_with_run(),
        expect=("--extend-schedule",),
    ),
    Case(
        "train-resume-other-model",
        ["train", "--resume", "done", "--model", "resnet56_cifar"],
        setup=_with_run(),
        expect=("belongs to another run",),
    ),
    Case(
        "train-resume-into-other-output",
        ["train", "--resume", "done", "--output", "run"],
        setup=_with_run(),
        expect=("drop --output",),
    ),
    Case(
        "train-batch-larger-than-the-data",
        _train("--output", "new_run", "--batch-size", "5000"),
        expect=("no full batch of 5000",),
    ),
    Case(
        "train-resume-auto-without-output",
        ["train", "--resume", "auto", "--device", "cpu"],
        expect=("--resume auto needs --output",),
    ),
    Case(
        "train-resume-truncated-checkpoint",
        ["train", "--resume", "done", "--epochs", "2", "--extend-schedule"],
        setup=_with_run(_truncate("checkpoint-*.safetensors")),
        expect=("truncated",),
    ),
    Case(
        "eval-truncated-best-weights",
        ["eval", "--checkpoint", "done", "--weights", "best", "--device", "cpu"],
        setup=_with_run(_truncate("best.safetensors")),
        expect=("best.safetensors", "corrupt"),
    ),
    Case(
        "eval-damaged-checkpoint-json",
        ["eval", "--checkpoint", "done", "--device", "cpu"],
        setup=_with_run(
            lambda run: [
                p.write_text('{"format": "senet-checkpoint/2", "tensors": 3}')
                for p in run.glob("checkpoint-*.json")
            ]
        ),
        expect=("damaged",),
    ),
    # models
    Case("models-unknown-pattern", ["models", "no_such_model*"], expect=("no model matches",)),
    Case("models-bad-format", ["models", "--format", "xml"], expect=("--format", "invalid choice")),
    Case(
        "models-features-unknown",
        ["models", "se_resnt50", "--features"],
        expect=("unknown model", "se_resnet50"),
    ),
    Case("no-command", [], expect=("required",)),
    Case("unknown-command", ["frobnicate"], expect=("invalid choice",)),
    # train: names and model options
    Case(
        "train-unknown-model",
        _train("--model", "se_resnet5"),
        expect=("unknown model", "closest: se_resnet50"),
    ),
    Case("train-unknown-model-opt", _train("--model-opt", "nonsense=1"), expect=("no option 'nonsense'",)),
    Case("train-model-opt-no-equals", _train("--model-opt", "nonsense"), expect=("--model-opt", "KEY=VALUE")),
    Case(
        "train-model-opt-unreadable-value",
        _train("--model-opt", "se_stages=(1,2"),
        expect=("--model-opt", "Python literal"),
    ),
    Case(
        "train-model-opt-wrong-type",
        _train("--model-opt", "se_reduction=abc"),
        expect=("se_reduction='abc'",),
    ),
    Case(
        "train-model-opt-boolean-misspelled",
        _train("--model-opt", "se_bias=maybe"),
        expect=("se_bias='maybe'", "true/false, yes/no, on/off or 1/0"),
    ),
    Case(
        "train-model-opt-boolean-number",
        _train("--model-opt", "se_bias=2"),
        expect=("se_bias=2", "se_bias is true or false"),
    ),
    Case(
        "train-model-opt-twice",
        _train("--model-opt", "se_reduction=8", "--model-opt", "se_reduction=4"),
        expect=("given twice",),
    ),
    Case(
        "train-model-opt-set-by-data", _train("--model-opt", "num_classes=3"), expect=("set by the dataset",)
    ),
    # train: senet.add_se on torchvision:NAME models
    Case("train-add-se-on-an-se-model", _train("--add-se"), expect=("add_se", "has SE blocks already")),
    Case(
        "train-se-where-without-add-se",
        _train("--model", "torchvision:resnet18", "--se-where", "conv"),
        expect=("se_where given without add_se=True",),
    ),
    Case(
        "train-add-se-twice",
        _train("--model", "torchvision:resnet18", "--add-se", "--model-opt", "add_se=True"),
        expect=("add_se given as a flag and as --model-opt",),
    ),
    Case(
        "train-unknown-torchvision-model",
        _train("--model", "torchvision:resnet5"),
        expect=("unknown model", "closest: torchvision:resnet50"),
    ),
    Case(
        "train-add-se-nothing-found",
        "train --device cpu --epochs 1 --output run --model torchvision:vgg11 --add-se".split(),
        expect=("no residual addition", "where='conv'"),
    ),
    Case("train-unknown-preset", _train("--preset", "imagenet"), expect=("--preset", "invalid choice")),
    Case("train-unknown-schedule", _train("--schedule", "linear"), expect=("unknown schedule",)),
    Case("train-unknown-device", _train("--device", "tpu"), expect=("unknown device",)),
    # train: every numeric field out of its range, or not a number
    Case("train-label-smoothing-5", _train("--label-smoothing", "5"), expect=("label_smoothing", "[0, 1)")),
    Case("train-lr-negative", _train("--lr", "-1"), expect=("lr must be > 0",)),
    Case("train-lr-nan", _train("--lr", "nan"), expect=("lr must be a finite number",)),
    Case("train-lr-not-a-number", _train("--lr", "abc"), expect=("--lr", "invalid float value")),
    Case("train-epochs-0", _train("--epochs", "0"), expect=("epochs must be >= 1",)),
    Case("train-batch-size-0", _train("--batch-size", "0"), expect=("batch_size must be >= 1",)),
    Case("train-momentum-1", _train("--momentum", "1"), expect=("momentum", "[0, 1)")),
    Case(
        "train-weight-decay-negative",
        _train("--weight-decay", "-0.001"),
        expect=("weight_decay must be >= 0",),
    ),
    Case("train-gamma-0", _train("--gamma", "0"), expect=("gamma must be > 0",)),
    Case("train-warmup-negative", _train("--warmup-epochs", "-1"), expect=("warmup_epochs",)),
    Case("train-warmup-beyond-the-run", _train("--warmup-epochs", "2"), expect=("warmup_epochs", "epochs=1")),
    Case("train-step-epochs-0", _train("--step-epochs", "0"), expect=("step_epochs must be >= 1",)),
    Case("train-milestones-not-numbers", _train("--milestones", "a,b"), expect=("--milestones", "82,123")),
    Case(
        "train-milestones-decreasing",
        _train("--schedule", "multistep", "--milestones", "0.5,0.25"),
        expect=("milestones must be increasing",),
    ),
    Case(
        "train-milestones-beyond-the-run",
        _train("--schedule", "multistep", "--milestones", "0.5,3"),
        expect=("milestones must lie within (0, epochs=1]",),
    ),
    Case(
        "train-preset-milestones-beyond-epochs",
        _train("--preset", "cifar-paper", "--epochs", "10"),
        expect=("milestones", "epochs=10"),
    ),
    Case("train-workers-negative", _train("--workers", "-1"), expect=("workers must be >= 0",)),
    Case("train-log-interval-negative", _train("--log-interval", "-1"), expect=("log_interval",)),
    Case("train-cutout-negative", _train("--cutout", "-1"), expect=("cutout must be >= 0",)),
    Case("train-image-size-0", _train("--image-size", "0"), expect=("image_size must be >= 1",)),
    Case("train-eval-crop-0", _train("--eval-crop", "0"), expect=("eval_crop must be >= 1",)),
    Case("train-lr-reference-batch-0", _train("--lr-reference-batch", "0"), expect=("lr_reference_batch",)),
    Case("train-drop-rate-1", _train("--drop-rate", "1"), expect=("drop_rate", "[0, 1)")),
    Case("train-freeze-bn-beyond-the-run", _train("--freeze-bn-epochs", "2"), expect=("freeze_bn_epochs",)),
    Case("train-seed-negative", _train("--seed", "-1"), expect=("seed must be >= 0",)),
    Case("train-save-every-steps-negative", _train("--save-every-steps", "-1"), expect=("save_every_steps",)),
    Case(
        "train-save-every-minutes-negative",
        _train("--save-every-minutes", "-1"),
        expect=("save_every_minutes",),
    ),
    Case("train-keep-0", _train("--keep", "0"), expect=("keep must be >= 1",)),
    # eval
    Case(
        "eval-scales-not-numbers",
        ["eval", "--checkpoint", "run", "--scales", "abc"],
        expect=("--scales", "224,320"),
    ),
    Case("eval-scales-0", ["eval", "--checkpoint", "run", "--scales", "224,0"], expect=("--scales",)),
    Case(
        "eval-batch-size-0",
        ["eval", "--checkpoint", "run", "--batch-size", "0"],
        expect=("--batch-size", ">= 1"),
    ),
    Case(
        "eval-missing-checkpoint",
        ["eval", "--checkpoint", "no_such_run", "--per-class", "keep.txt"],
        expect=("no_such_run",),
    ),
    Case(
        "eval-checkpoint-without-one",
        ["eval", "--checkpoint", "run", "--per-class", "keep.txt"],
        expect=("no checkpoint",),
    ),
    Case(
        "eval-checkpoint-not-json",
        ["eval", "--checkpoint", _CHECKPOINT],
        setup=_checkpoint_json("{not json"),
        expect=(_CHECKPOINT,),
    ),
    Case(
        "eval-checkpoint-json-list",
        ["eval", "--checkpoint", _CHECKPOINT],
        setup=_checkpoint_json("[]"),
        expect=(_CHECKPOINT,),
    ),
    Case(
        "eval-checkpoint-json-without-tensors",
        ["eval", "--checkpoint", _CHECKPOINT],
        setup=_checkpoint_json(json.dumps({"format": FORMAT})),
        expect=(_CHECKPOINT,),
    ),
    Case(
        "eval-checkpoint-json-tensors-not-a-name",
        ["eval", "--checkpoint", _CHECKPOINT],
        setup=_checkpoint_json(json.dumps({"format": FORMAT, "tensors": 5})),
        expect=(_CHECKPOINT,),
    ),
    Case(
        "eval-unknown-device", ["eval", "--checkpoint", "run", "--device", "tpu"], expect=("unknown device",)
    ),
    # plot
    Case("plot-not-a-run", ["plot", "no_such_run", "--out", "keep.txt"], expect=("no_such_run",)),
    # bench
    Case("bench-batch-0", ["bench", "--batch", "0"], expect=("--batch", ">= 1")),
    Case("bench-batch-not-a-number", ["bench", "--batch", "a"], expect=("--batch", "1,8,32")),
    Case("bench-size-0", ["bench", "--size", "0"], expect=("--size", ">= 1")),
    Case(
        "bench-size-too-small-for-the-network",
        ["bench", "--models", "resnet18", "--size", "1", "--no-memory"],
        expect=("cannot take 1x1 inputs",),
    ),
    Case("bench-repeats-0", ["bench", "--repeats", "0"], expect=("--repeats",)),
    Case(
        "bench-optimize-in-train-mode",
        ["bench", "--mode", "train", "--optimize", "--size", "32", "--no-memory"],
        expect=("mode='infer'",),
    ),
    Case(
        "bench-unknown-model",
        ["bench", "--models", "se_resnet5", "--size", "32", "--no-memory"],
        expect=("unknown model", "closest: se_resnet50"),
    ),
    Case(
        "bench-unknown-model-option",
        ["bench", "--models", "se_resnet18@nonsense=1", "--size", "32", "--no-memory"],
        expect=("no option 'nonsense'",),
    ),
    # weights: converting, starting from, predicting with and exporting them
    Case(
        "convert-another-architecture",
        ["convert", "--from", "timm", "keep.txt", "--model", "resnet50d", "--out", "r.safetensors"],
        expect=("'resnet50d' is not one senet converts", "supported: seresnet50"),
    ),
    Case(
        "convert-not-a-weights-file",
        ["convert", "--from", "timm", "keep.txt", "--model", "seresnet50", "--out", "r.safetensors"],
        expect=("keep.txt cannot be read as weights", "weights_only=True"),
    ),
    Case(
        "convert-missing-source",
        ["convert", "--from", "torchvision", "r.pth", "--model", "resnet50", "--out", "r.safetensors"],
        expect=("r.pth is missing",),
    ),
    Case(
        "train-pretrained-foreign-pth",
        _train("--output", "new_run", "--pretrained", "resnet50.pth"),
        setup=lambda folder: (folder / "resnet50.pth").write_bytes(b"PK not really"),
        expect=("another project", "senet convert --from"),
    ),
    Case(
        "train-pretrained-of-another-model",
        _train("--output", "new_run", "--model", "se_resnet20_cifar", "--pretrained", "done"),
        setup=_with_run(),
        expect=("holds resnet20_cifar weights, not se_resnet20_cifar",),
    ),
    Case(
        "predict-missing-checkpoint",
        ["predict", "--checkpoint", "nowhere", "keep.txt"],
        expect=("no checkpoint",),
    ),
    Case(
        "export-missing-checkpoint",
        ["export", "--checkpoint", "nowhere", "--format", "onnx", "--out", "x.onnx"],
        expect=("no checkpoint",),
    ),
    Case(
        "eval-weights-file-without-data",
        ["eval", "--checkpoint", "w.safetensors"],
        setup=lambda folder: _weights_file(folder / "w.safetensors"),
        expect=("is a weights file", "--data"),
    ),
    # demo
    Case("demo-epochs-0", ["demo", "--epochs", "0", "--output", "run"], expect=("--epochs", ">= 1")),
    Case("demo-seeds-0", ["demo", "--seeds", "0", "--output", "run"], expect=("--seeds", ">= 1")),
    # ablate: the study and its output are checked before anything trains
    Case(
        "ablate-unknown-study",
        ["ablate", "--study", "width", "--output", "s"],
        expect=("--study", "reduction"),
    ),
    Case(
        "ablate-plain-model",
        ["ablate", "--study", "reduction", "--model", "resnet50", "--output", "s"],
        expect=("resnet50 has no SE blocks to study",),
    ),
    Case("ablate-no-output", ["ablate", "--study", "squeeze"], expect=("--output DIR",)),
    Case(
        "ablate-bad-grid",
        ["ablate", "--study", "squeeze", "--grid", "lr", "--output", "s"],
        expect=("KEY=V1,V2",),
    ),
    # data shapes: a data set already there (perhaps a real COCO copy) is never overwritten unasked
    Case(
        "data-shapes-over-a-data-set",
        ["data", "shapes", "coco"],
        setup=lambda folder: _write(folder / "coco" / "annotations" / "instances_val2017.json", "{}"),
        expect=("instances_val2017.json exists", "--overwrite"),
    ),
    Case("data-shapes-into-a-file", ["data", "shapes", "keep.txt"], expect=("keep.txt is a file",)),
    Case("data-shapes-size-8", ["data", "shapes", "out", "--size", "8"], expect=("--size", ">= 32")),
    # detect train: options, data and runs are all checked before anything is written
    Case(
        "detect-train-unknown-backbone", _detect("--backbone", "se_resnet5"), expect=("closest: se_resnet50",)
    ),
    Case(
        "detect-train-no-data", _detect("--output", "new_run"), expect=("no train annotations", "--data ROOT")
    ),
    Case(
        "detect-train-missing-data",
        _detect("--output", "new_run", "--data", "nowhere"),
        expect=("--data nowhere: no such directory",),
    ),
    Case(
        "detect-train-data-not-in-cocos-layout",
        _detect("--output", "new_run", "--data", "run"),
        expect=("annotations/instances_train2017.json: no such file", "--train-ann FILE"),
    ),
    Case(
        "detect-train-batch-larger-than-the-data",
        _detect("--output", "new_run", "--data", "shapes", "--batch-size", "8"),
        setup=_tiny_shapes,
        expect=("4 training images give no full batch of 8",),
    ),
    Case(
        "detect-train-schedule-and-epochs",
        _detect("--schedule", "2x"),
        expect=("one of --schedule and --epochs",),
    ),
    Case(
        "detect-train-unknown-schedule", _detect("--schedule", "3x"), expect=("--schedule", "invalid choice")
    ),
    Case(
        "detect-train-unknown-detector-opt",
        _detect("--detector-opt", "rpn_batch=3"),
        expect=("unknown FasterRCNN options rpn_batch",),
    ),
    Case(
        "detect-train-backbone-opt-of-a-flag",
        _detect("--backbone-opt", "norm=bn"),
        expect=("backbone option norm", "--norm"),
    ),
    Case("detect-train-unknown-backbone-opt", _detect("--backbone-opt", "nonsense=1"), expect=("nonsense",)),
    Case(
        "detect-train-out-indices-beyond-the-backbone",
        _detect("--out-indices", "2,9"),
        expect=("out_indices",),
    ),
    Case(
        "detect-train-max-size-below-min-size",
        _detect("--min-size", "128", "--max-size", "64"),
        expect=("max_size must be an integer >= every --min-size",),
    ),
    Case(
        "detect-train-warmup-negative", _detect("--warmup-iters", "-1"), expect=("warmup_iters must be >= 0",)
    ),
    Case("detect-train-lr-0", _detect("--lr", "0"), expect=("lr must be > 0",)),
    Case("detect-train-flip-prob-2", _detect("--flip-prob", "2"), expect=("flip_prob must be in [0, 1]",)),
    Case("detect-train-unknown-norm", _detect("--norm", "gn"), expect=("--norm", "invalid choice")),
    Case(
        "detect-train-existing-run",
        _detect("--output", "det"),
        setup=_with_detection_run,
        expect=("already holds a run",),
    ),
    Case(
        "detect-train-resume-other-backbone",
        ["detect", "train", "--resume", "det", "--backbone", "se_resnet20_cifar"],
        setup=_with_detection_run,
        expect=("belongs to another run", "backbone"),
    ),
    Case(
        "detect-train-resume-changed-epochs",
        ["detect", "train", "--resume", "det", "--epochs", "3"],
        setup=_with_detection_run,
        expect=("--extend-schedule",),
    ),
    Case(
        "detect-train-resume-a-classification-run",
        ["detect", "train", "--resume", "done"],
        setup=_with_run(),
        expect=("not a detection run's checkpoint",),
    ),
    # detect eval / predict, and the classification commands on a detection run
    Case(
        "detect-eval-a-classification-run",
        ["detect", "eval", "--checkpoint", "done", "--device", "cpu"],
        setup=_with_run(),
        expect=("not a detection run's checkpoint", "senet eval"),
    ),
    Case(
        "detect-eval-missing-checkpoint",
        ["detect", "eval", "--checkpoint", "nowhere"],
        expect=("no checkpoint in",),
    ),
    Case(
        "detect-eval-other-categories",
        [
            "detect",
            "eval",
            "--checkpoint",
            "det",
            "--val-ann",
            "other.json",
            "--val-images",
            "other",
            "--device",
            "cpu",
        ],
        setup=_other_categories,
        expect=("categories ['cat']", "the detector of"),
    ),
    Case(
        "eval-a-detection-run",
        ["eval", "--checkpoint", "det", "--device", "cpu"],
        setup=_with_detection_run,
        expect=("is a detection run", "senet detect eval"),
    ),
    Case(
        "detect-predict-score-threshold-2",
        ["detect", "predict", "--checkpoint", "det", "keep.txt", "--score-threshold", "2"],
        expect=("score_threshold must be a number in [0, 1]",),
    ),
    Case(
        "detect-predict-output-is-a-file",
        ["detect", "predict", "--checkpoint", "det", "keep.txt", "--output", "keep.txt"],
        expect=("keep.txt is a file",),
    ),
    Case(
        "detect-predict-max-detections-0",
        ["detect", "predict", "--checkpoint", "det", "keep.txt", "--max-detections", "0"],
        expect=("--max-detections", ">= 1"),
    ),
    Case(
        "plot-detection-run-without-the-metric",
        ["plot", "det", "--metric", "top1_err", "--out", "curves.png"],
        setup=_with_detection_run,
        expect=("records no 'top1_err'", "AP50"),
    ),
]


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under ``folder``: its kind, and for files their bytes and modification time."""
    state: dict[str, tuple] = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        state[str(path.relative_to(folder))] = (
            ("file", path.read_bytes(), stat.st_mtime_ns) if path.is_file() else ("dir", stat.st_mtime_ns)
        )
    return state


def _exit_status(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's errors: usage, one error line, status 2
        return exit.code


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line_and_exit_status_2_and_changes_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("written before the command\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("a run folder that existed before\n")
    if case.setup is not None:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)

    status = _exit_status(case.argv)

    out, err = capsys.readouterr()
    assert status == 2, f"exit status {status!r}; stderr: {err!r}"
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], err
    assert lines[-1].startswith("senet") and ": error: " in lines[-1], err
    usage = lines[:-1]  # argparse's usage, if any, comes before the error
    assert all(line.startswith(("usage:", " ")) for line in usage) and len(usage) <= 3, err
    for fragment in case.expect:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    assert _snapshot(tmp_path) == before, "a failed command changed files"


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
