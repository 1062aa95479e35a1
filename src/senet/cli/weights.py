"""``senet convert``: another project's published weights -> a senet weights file."""

from __future__ import annotations

import argparse
import typing

from senet.cli.flags import floats, positive_int


def add_convert(commands: typing.Any) -> None:
    convert = commands.add_parser(
        "convert", help="weights of timm, pretrained-models or torchvision -> a senet weights file"
    )
    convert.add_argument("source", metavar="SRC", help="the source's .pth/.pt/.bin/.safetensors file")
    convert.add_argument(
        "--from",
        dest="project",
        required=True,
        choices=("timm", "pretrainedmodels", "torchvision"),
        help="the project that published SRC (pretrainedmodels: Cadene's pretrained-models.pytorch)",
    )
    convert.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help="the source project's model name, e.g. seresnet50, legacy_senet154, se_resnet50, resnet50 "
        "(timm names may carry their pretrained tag: resnet50.a1_in1k)",
    )
    convert.add_argument("--out", required=True, metavar="FILE", help="the .safetensors file to write")
    convert.add_argument("--mean", type=floats, metavar="M1,M2,M3", help="override the recorded input mean")
    convert.add_argument("--std", type=floats, metavar="S1,S2,S3", help="override the recorded input std")
    convert.add_argument(
        "--input-size", type=positive_int, metavar="PIXELS", help="override the recorded test crop"
    )
    convert.add_argument(
        "--crop-fraction",
        type=float,
        metavar="F",
        help="override the recorded crop / resize ratio, in (0, 1]",
    )
    convert.add_argument(
        "--interpolation",
        choices=("bilinear", "bicubic", "nearest"),
        help="override the recorded resize filter",
    )
    convert.add_argument(
        "--labels", metavar="FILE", help="class names, one per line (default: ImageNet's for 1000 classes)"
    )
    convert.set_defaults(run=convert_command)


def convert_command(args: argparse.Namespace) -> int:
    from senet.deploy.predict import read_labels
    from senet.weights.convert import convert_file

    overrides = {
        key: getattr(args, key)
        for key in ("mean", "std", "input_size", "crop_fraction", "interpolation")
        if getattr(args, key) is not None
    }
    # The count is checked against the classifier once the source is read.
    labels = read_labels(args.labels, None) if args.labels else None
    info = convert_file(
        args.project, args.model, args.source, args.out, preprocessing=overrides, labels=labels
    )
    options = ", ".join(f"{k}={v!r}" for k, v in info.options.items()) or "its defaults"
    pre = info.preprocessing
    print(
        f"wrote {args.out}: {args.project} {args.model} -> senet {info.model} ({options}), "
        f"{info.num_classes} classes{', labelled' if info.labels else ''}; test input: resize {pre.resize}, "
        f"crop {pre.input_size}, {pre.interpolation}, mean {pre.mean}, std {pre.std}\n"
        f"load it with senet.load_pretrained({str(args.out)!r}) or --pretrained / --checkpoint {args.out}"
    )
    return 0
