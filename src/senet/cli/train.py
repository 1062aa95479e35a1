"""``senet train``, ``senet eval`` and ``senet plot``: classification runs, their errors and their curves."""

from __future__ import annotations

import argparse
import functools
import json
import typing

from senet.cli.flags import (
    add_config_flags,
    add_format_flag,
    add_loading_flags,
    add_weights_flag,
    config_overrides,
    epoch_list,
    flag_values,
    model_option,
    positive_ints,
)
from senet.cli.runs import add_run_flags, train_run
from senet.train.config import PRESETS, TrainConfig, parse_model_options, resolve_config
from senet.train.plot import METRICS as PLOT_METRICS
from senet.train.plot import plot_runs

PRESET_NAMES = tuple(PRESETS)


def add_train(commands: typing.Any) -> None:
    train = commands.add_parser(
        "train", help="train a model (torchrun --nproc_per_node=N -m senet train ... for DDP)"
    )
    train.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default=None,
        help="a recipe of the paper; every field can still be overridden",
    )
    add_run_flags(
        train,
        " (for requeued cluster jobs)",
        "with --resume: allow changed epochs, lr, batch size or schedule, and recompute the learning-rate "
        "schedule for them from where the run stands",
    )
    add_train_config_flags(train)
    train.set_defaults(run=train_command)


def add_train_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field, so every field of a preset can be overridden, and the model's
    build options (``--model-opt``, ``--add-se`` ...).

    Their argparse default is None ("from the preset, else the dataclass"); the help shows the dataclass's."""
    add_config_flags(parser, TrainConfig, tuples=epoch_list, note=", or the preset's")
    parser.add_argument(
        "--model-opt",
        action="append",
        metavar="KEY=VALUE",
        type=model_option,
        help="model build option, e.g. se_reduction=8, se_stages=(1,2) or se_bias=false (booleans: "
        "true/false, yes/no, on/off, 1/0); repeatable",
    )
    parser.add_argument(
        "--add-se",
        action="store_true",
        default=None,
        help="insert SE blocks into another project's model (--model torchvision:NAME; senet.add_se), "
        "with --model-opt se_reduction=R (default 16)",
    )
    parser.add_argument(
        "--se-where",
        type=_se_where,
        metavar="residual|conv|NAMES",
        help="with --add-se: on each residual branch before the sum (residual, default), after each conv "
        "block of a plain network (conv), or after the comma-separated modules NAMES",
    )
    parser.add_argument(
        "--se-init",
        choices=("paper", "identity"),
        help="with --add-se: the paper's blocks (paper, default), or blocks that start as the identity "
        "(2 * sigmoid gate, last FC zero) to fine-tune a trained plain network from its exact outputs",
    )


def _se_where(text: str) -> str | list[str]:
    """``residual`` / ``conv``, or comma-separated module names -> a list of them."""
    if text in ("residual", "conv"):
        return text
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"expected residual, conv or module names such as layer1.0,layer2.0; got {text!r}"
        )
    return names


def train_overrides(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The TrainConfig fields given as flags; ``--model-opt`` and the ``--add-se`` flags as model options."""
    overrides = config_overrides(args, TrainConfig)
    if args.model_opt:
        overrides["model_options"] = parse_model_options(args.model_opt)
    se_flags = {key: getattr(args, key, None) for key in ("add_se", "se_where", "se_init")}
    se_flags = {key: value for key, value in se_flags.items() if value is not None}
    if se_flags:  # senet.add_se's options (torchvision:NAME models), saved with the other build options
        options = overrides.setdefault("model_options", {})
        twice = sorted(set(se_flags) & set(options))
        if twice:
            raise ValueError(f"{', '.join(twice)} given as a flag and as --model-opt; give it once")
        options.update(se_flags)
    return overrides


def train_command(args: argparse.Namespace) -> int:
    from senet.train.engine import train

    overrides = train_overrides(args)
    new = functools.partial(resolve_config, args.preset, **overrides)
    return train_run(args, train, TrainConfig, overrides, new, _best_epoch)


def _best_epoch(best: dict[str, typing.Any]) -> str:
    return f"best val top-1 error {best['val_top1_err']:.2f}% (epoch {best['epoch']})"


def add_eval(commands: typing.Any) -> None:
    evaluate = commands.add_parser(
        "eval", help="top-1/top-5 error of trained runs, with multi-crop/scale fusion and ensembles"
    )
    evaluate.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="RUN_DIR",
        help="a run directory; repeat to average the softmax of an ensemble",
    )
    evaluate.add_argument("--data", help="dataset (default: the run's own)")
    evaluate.add_argument(
        "--data-root", help="folder holding the CIFAR files (default: the run's own with its data)"
    )
    evaluate.add_argument(
        "--scales",
        metavar="S1,S2",
        type=positive_ints("224,320"),
        help="evaluation crop sizes to fuse, e.g. 224,320 (default: the run's own crop)",
    )
    evaluate.add_argument(
        "--ten-crop", action="store_true", help="average over 10 crops (corners, centre, flips)"
    )
    add_weights_flag(evaluate, of_a_run=False)
    add_loading_flags(evaluate, batch_size=64)
    evaluate.add_argument("--per-class", metavar="CSV", help="write per-class errors to this CSV file")
    add_format_flag(evaluate, "text", "json")
    evaluate.set_defaults(run=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    from senet.train.evaluation import evaluate_runs, write_per_class

    options = flag_values(
        args, "data_root", "scales", "ten_crop", "batch_size", "workers", "device", "weights"
    )
    result = evaluate_runs(args.checkpoint, args.data, **options)
    if args.per_class:
        write_per_class(result, args.per_class)
    if args.format == "json":
        print(json.dumps({"top1_err": result.top1_err, "top5_err": result.top5_err, "images": result.images}))
    else:
        print(
            f"top-1 error {result.top1_err:.2f}%  top-5 error {result.top5_err:.2f}%  "
            f"({result.images} images)"
        )
    return 0


def add_plot(commands: typing.Any) -> None:
    plot = commands.add_parser("plot", help="train/val error curves of runs on one chart (paper Fig. 4)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of `senet train`")
    plot.add_argument("--out", default="curves.png", help="image file to write")
    plot.add_argument(
        "--metric",
        choices=PLOT_METRICS,
        default=None,
        help="what to plot (default: top1_err for runs of senet train, AP for runs of senet detect train)",
    )
    plot.set_defaults(run=plot_command)


def plot_command(args: argparse.Namespace) -> int:
    print(plot_runs(args.runs, args.out, metric=args.metric))
    return 0
