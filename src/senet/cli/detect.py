"""``senet detect train|eval|predict``: Faster R-CNN + FPN on senet's backbones, on COCO-format data."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import typing

from senet.cli.deploy import print_results
from senet.cli.flags import (
    add_command_group,
    add_config_flags,
    add_device_flag,
    add_format_flag,
    add_inputs_argument,
    add_loading_flags,
    add_weights_flag,
    config_overrides,
    detector_option,
    flag_values,
    ints,
    model_option,
    positive_int,
)
from senet.cli.runs import add_run_flags, train_run
from senet.detection.config import DetectionConfig
from senet.train.config import parse_model_options

_DETECTION_RUN = "a run directory of `senet detect train`"


def add_detect(commands: typing.Any) -> None:
    summary = (
        "object detection: Faster R-CNN + FPN on our backbones, COCO data and metrics (train, eval, predict)"
    )
    detect_commands = add_command_group(commands, "detect", "train|eval|predict", summary)
    _add_detect_train(detect_commands)
    _add_detect_eval(detect_commands)
    _add_detect_predict(detect_commands)


def _add_detect_train(commands: typing.Any) -> None:
    train = commands.add_parser(
        "train",
        help="train a detector on COCO-format data "
        "(torchrun --nproc_per_node=N -m senet detect train ... for DDP)",
    )
    add_run_flags(
        train,
        "",
        "with --resume: allow a changed schedule, epochs, lr or batch size, recomputed from where the run "
        "stands",
    )
    add_config_flags(train, DetectionConfig, tuples=ints)
    train.add_argument(
        "--backbone-opt",
        action="append",
        metavar="KEY=VALUE",
        type=model_option,
        help="build option of the backbone network, e.g. se_reduction=8, widths=(8,16,32) or se_bias=no; "
        "repeatable",
    )
    train.add_argument(
        "--detector-opt",
        action="append",
        metavar="KEY=VALUE",
        type=detector_option,
        help="option of torchvision's FasterRCNN, e.g. rpn_batch_size_per_image=64 or "
        "box_batch_size_per_image=128; repeatable",
    )
    train.set_defaults(run=detect_train_command)


def detect_train_command(args: argparse.Namespace) -> int:
    from senet.detection.engine import detection_checkpoint, train

    overrides = config_overrides(args, DetectionConfig)
    for flag, name in (("backbone_opt", "backbone_options"), ("detector_opt", "detector_options")):
        if getattr(args, flag):
            overrides[name] = parse_model_options(getattr(args, flag))
    new = functools.partial(DetectionConfig, **overrides)
    linked = ("epochs", "schedule")  # the one given now replaces both
    return train_run(
        args, train, DetectionConfig, overrides, new, _best_epoch, checked=detection_checkpoint, linked=linked
    )


def _best_epoch(best: dict[str, typing.Any]) -> str:
    return f"best val AP {best['val_AP']:.4f} (AP50 {best['val_AP50']:.4f}, epoch {best['epoch']})"


def _add_detect_eval(commands: typing.Any) -> None:
    evaluate = commands.add_parser(
        "eval", help="COCO's AP, AP50, AP75, APs/m/l and ARs of a trained detector (pycocotools)"
    )
    evaluate.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help=_DETECTION_RUN)
    evaluate.add_argument("--data", help="COCO's layout ROOT; its val2017 split (default: the run's own)")
    evaluate.add_argument("--val-ann", metavar="FILE", help="validation annotations, instead of --data's")
    evaluate.add_argument("--val-images", metavar="DIR", help="validation images, instead of --data's")
    add_weights_flag(evaluate, of_a_run=False)
    add_loading_flags(evaluate, batch_size=2, batch_help="images per forward pass (per process)")
    evaluate.add_argument("--amp", action="store_true", help="mixed precision: bf16 on CPU, fp16 on CUDA")
    evaluate.add_argument(
        "--strict-data",
        action="store_true",
        help="stop at the first malformed annotation or unreadable image",
    )
    add_format_flag(evaluate, "text", "json")
    evaluate.set_defaults(run=detect_eval_command)


def detect_eval_command(args: argparse.Namespace) -> int:
    from senet.detection.engine import evaluate_run
    from senet.detection.metrics import METRICS

    data = flag_values(args, "data", "val_ann", "val_images", "strict_data")
    running = flag_values(args, "weights", "batch_size", "workers", "device", "amp")
    result = evaluate_run(args.checkpoint, **data, **running)
    if args.format == "json":
        print(json.dumps(result))
    else:
        print(
            "  ".join(f"{name} {result[name]:.4f}" for name in METRICS[:6]) + f"  ({result['images']} images)"
        )
        print("  ".join(f"{name} {result[name]:.4f}" for name in METRICS[6:]))
    return 0


def _add_detect_predict(commands: typing.Any) -> None:
    predict = commands.add_parser(
        "predict",
        help="boxes, categories and scores in image files: JSON lines, and the boxes drawn on PNG copies",
    )
    predict.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help=_DETECTION_RUN)
    add_inputs_argument(predict)
    predict.add_argument(
        "--output", default="detections", metavar="DIR", help="folder for the drawn images (<image stem>.png)"
    )
    predict.add_argument(
        "--score-threshold", type=float, default=0.5, metavar="S", help="keep detections scoring at least S"
    )
    predict.add_argument(
        "--nms-threshold", type=float, default=0.5, metavar="IOU", help="per-category NMS at this IoU"
    )
    predict.add_argument(
        "--max-detections",
        type=positive_int,
        default=100,
        metavar="N",
        help="at most N detections per image",
    )
    add_device_flag(predict)
    add_weights_flag(predict, of_a_run=False)
    predict.set_defaults(run=detect_predict_command)


def detect_predict_command(args: argparse.Namespace) -> int:
    from senet.detection.predict import predict

    options = flag_values(
        args, "output", "score_threshold", "nms_threshold", "max_detections", "device", "weights"
    )

    def text(result: typing.Any) -> str | None:
        """One JSON line per detection; nothing for a skipped image or one without detections."""
        if result.error is not None:
            return None
        return "\n".join(json.dumps(record) for record in result.records()) or None

    done = print_results(
        predict(args.checkpoint, args.inputs, **options), "senet detect predict", text, "read"
    )
    if args.output:
        print(f"drew {done} image(s) into {args.output}", file=sys.stderr)
    return 0
