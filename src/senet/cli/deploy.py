"""``senet predict`` and ``senet export``: a trained network put to use."""

from __future__ import annotations

import argparse
import json
import sys
import typing

from senet.cli.flags import (
    RUN_OR_WEIGHTS,
    add_device_flag,
    add_format_flag,
    add_inputs_argument,
    add_weights_flag,
    flag_values,
    int_at_least,
    positive_int,
)


def add_predict(commands: typing.Any) -> None:
    predict = commands.add_parser(
        "predict", help="top-k classes of image files, preprocessed as recorded with the weights"
    )
    predict.add_argument("--checkpoint", required=True, metavar="RUN_DIR|FILE", help=RUN_OR_WEIGHTS)
    add_inputs_argument(predict)
    predict.add_argument(
        "--topk", type=positive_int, default=5, metavar="K", help="classes per image (at most all of them)"
    )
    predict.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per line (default: the labels recorded with the weights, else class indices)",
    )
    add_format_flag(predict, "table", "jsonl")
    predict.add_argument(
        "--batch-size", type=positive_int, default=32, metavar="N", help="images per forward pass"
    )
    add_device_flag(predict)
    add_weights_flag(predict)
    predict.set_defaults(run=predict_command)


def predict_command(args: argparse.Namespace) -> int:
    from senet.deploy.predict import predict

    options = flag_values(args, "topk", "labels", "batch_size", "device", "weights")

    def text(prediction: typing.Any) -> str:
        if args.format == "jsonl":
            return json.dumps(prediction.as_dict())
        lines = [f"  skipped: {prediction.error}"] if prediction.error is not None else []
        lines += [f"  {100 * score.prob:5.2f}%  {score.label}" for score in prediction.top]
        return "\n".join([prediction.path, *lines])

    print_results(predict(args.checkpoint, args.inputs, **options), "senet predict", text, "predicted")
    return 0


def print_results(
    results: typing.Iterable[typing.Any],
    command: str,
    text: typing.Callable[[typing.Any], str | None],
    done_as: str,
) -> int:
    """Each result of a prediction (``.path``, ``.error``) on standard output as ``text(result)`` says (None:
    nothing) as soon as it is known, also through a pipe; each input that could not be read named on standard
    error by ``command``; returns how many were. If none was: one error, ``none of the N inputs could be
    {done_as}``."""
    from tqdm import tqdm

    done = failed = 0
    for result in results:
        if result.error is not None:
            failed += 1
            tqdm.write(f"{command}: skipped {result.path}: {result.error}", file=sys.stderr)
        else:
            done += 1
        if (lines := text(result)) is not None:
            # tqdm.write: on a terminal, results and messages go above the progress bar (stderr), not into it.
            tqdm.write(lines, file=sys.stdout)
        sys.stdout.flush()  # each image's result as soon as it is known, also through a pipe
    if not done:
        raise ValueError(f"none of the {failed} inputs could be {done_as} (each is named above)")
    return done


def add_export(commands: typing.Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a network as ONNX, TorchScript or an ExportedProgram (BN folded), "
        "checked against PyTorch",
    )
    export.add_argument("--checkpoint", required=True, metavar="RUN_DIR|FILE", help=RUN_OR_WEIGHTS)
    export.add_argument(
        "--format",
        choices=("onnx", "torchscript", "exported-program"),
        default="onnx",
        help="onnx (needs senet[onnx]), torchscript (torch.jit) or exported-program (torch.export, .pt2)",
    )
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write (.onnx, .pt, .pt2)")
    export.add_argument(
        "--dynamic-batch", action="store_true", help="accept any batch size (default: --batch images only)"
    )
    export.add_argument(
        "--opset", type=int_at_least(7), metavar="N", help="ONNX opset (default: the exporter's)"
    )
    export.add_argument(
        "--fp16",
        action="store_true",
        help="weights, input and output in float16; checked to 1e-2 x max(1, max |logit|) instead of "
        "1e-4 (float16 rounds each layer to ~5e-4 relative)",
    )
    export.add_argument(
        "--batch", type=positive_int, default=2, metavar="N", help="images per random input of the check"
    )
    add_weights_flag(export)
    export.add_argument("--device", default="cpu", help="where to trace the network: cpu, cuda or cuda:N")
    export.set_defaults(run=export_command)


def export_command(args: argparse.Namespace) -> int:
    from senet.deploy.export import export_model

    options = flag_values(args, "weights", "dynamic_batch", "opset", "fp16", "batch", "device")
    report = export_model(args.checkpoint, args.out, args.format, **options)
    print(report.summary())
    return 0
