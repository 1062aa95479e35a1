"""``senet ablate`` and ``senet demo``: studies of many runs, beside the paper's figures or seed noise."""

from __future__ import annotations

import argparse
import sys
import typing

from senet.analysis.paper_ablations import STUDIES  # figures only: no torch import at start-up
from senet.cli.flags import positive_int
from senet.cli.train import PRESET_NAMES, add_train_config_flags, train_overrides
from senet.train.config import resolve_config


def add_ablate(commands: typing.Any) -> None:
    ablate = commands.add_parser(
        "ablate",
        help="rerun the paper's ablations (Tables 10-16) on any data: one run per setting and seed, a table "
        "with the paper's figures beside ours, significance over seeds, a chart",
    )
    ablate.add_argument(
        "--study",
        required=True,
        choices=(*STUDIES, "all"),
        help="which study (all: every one, shared runs once)",
    )
    ablate.add_argument(
        "--seeds", type=positive_int, default=1, metavar="N", help="seeds per setting (>= 3 for any claim)"
    )
    ablate.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="also sweep a build or training option, e.g. lr=0.05,0.1 or se_bias=off,on; repeatable",
    )
    ablate.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="demo",
        help="the recipe every run uses (default: demo); every field can still be overridden",
    )
    add_train_config_flags(ablate)
    ablate.set_defaults(run=ablate_command)


def ablate_command(args: argparse.Namespace) -> int:
    from senet.analysis.ablation import parse_grid, run_ablation

    overrides = train_overrides(args)
    if "output" not in overrides:
        raise ValueError("senet ablate needs --output DIR: every run of the study is kept there, to resume")
    config = resolve_config(args.preset, **overrides)
    command = "senet " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["ablate"] else ""
    reports, written = run_ablation(
        args.study, config, config.output, seeds=args.seeds, grid=parse_grid(args.grid), command=command
    )
    if written:
        print(written[0].read_text())
        print("wrote " + ", ".join(str(path) for path in written))
    return 0


def add_demo(commands: typing.Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="train se_resnet20_cifar and resnet20_cifar on the embedded digits, 3 seeds each, and say "
        "whether their difference is beyond seed noise",
    )
    demo.add_argument("--output", default="runs/demo", help="folder for the runs and the pictures")
    demo.add_argument(
        "--epochs", type=positive_int, metavar="N", help="epochs per model (default: the demo preset's)"
    )
    demo.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="train again instead of reusing the finished runs in --output",
    )
    demo.add_argument(
        "--seeds", type=positive_int, default=3, metavar="N", help="seeds per network (default: 3)"
    )
    demo.set_defaults(run=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from senet.analysis.demo import format_demo, run_demo

    overrides = {k: v for k, v in {"epochs": args.epochs, "device": args.device}.items() if v is not None}
    print(format_demo(run_demo(output=args.output, overwrite=args.overwrite, seeds=args.seeds, **overrides)))
    return 0
