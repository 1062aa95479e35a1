"""``senet analyze excitation|remove-se``: what the SE blocks of a trained network learn, and removing
them."""

from __future__ import annotations

import argparse
import typing

from senet.cli.flags import (
    RUN_OR_WEIGHTS,
    add_command_group,
    add_loading_flags,
    add_weights_flag,
    flag_values,
    nonnegative_int,
    positive_int,
)

_BLOCK_NAMES = (
    "SE_s_b: block b (1-based) of stage s, stages counted as the paper's conv{s}_x with the stem as stage 1 "
    "(SE-ResNet-50: SE_2_3 = layer1's 3rd block, SE_5_* = layer4; CIFAR ResNets: "
    "layer1..3 = SE_2_*..SE_4_*); "
    "families without stages: module paths (blocks.3.se); wildcards such as SE_5_* accepted"
)


def add_analyze(commands: typing.Any) -> None:
    summary = "what the SE blocks of a trained network learn (paper Figs. 6-7), and removing them"
    analyze_commands = add_command_group(commands, "analyze", "excitation|remove-se", summary)
    excitation = analyze_commands.add_parser(
        "excitation",
        help="per-class gate statistics of chosen SE blocks: figures, class specificity, CSV and NPZ",
    )
    remove = analyze_commands.add_parser(
        "remove-se", help="top-1/top-5 error with chosen SE blocks replaced by identity (gates 1)"
    )
    for sub in (excitation, remove):
        sub.add_argument("--checkpoint", required=True, metavar="RUN_DIR|FILE", help=RUN_OR_WEIGHTS)
        sub.add_argument("--data", help="dataset; its validation split is used (default: the run's own data)")
        sub.add_argument("--data-root", help="folder holding the CIFAR files (default: the run's own)")
        add_weights_flag(sub)
        sub.add_argument(
            "--seed", type=nonnegative_int, default=0, metavar="S", help="seed of the image sample"
        )
        add_loading_flags(sub, batch_size=64)
    excitation.add_argument("--output", required=True, metavar="DIR", help="folder for figures and tables")
    excitation.add_argument(
        "--blocks",
        action="append",
        metavar="NAMES",
        help=f"comma-separated SE blocks, repeatable (default: the last block of each stage). {_BLOCK_NAMES}",
    )
    excitation.add_argument(
        "--classes",
        action="append",
        metavar="NAMES",
        help="comma-separated class names (or ids) to plot, repeatable (default: up to 4, evenly spread)",
    )
    _add_max_images_flag(excitation, 10000)
    excitation.add_argument(
        "--channels", type=positive_int, default=50, metavar="N", help="evenly spaced channels per plot"
    )
    excitation.set_defaults(run=analyze_excitation_command)
    remove.add_argument(
        "--blocks",
        action="append",
        metavar="NAMES",
        help="one choice: comma-separated SE blocks removed together; repeat for more rows (default: each "
        f"stage's blocks, then all blocks; the full model is always the first row). {_BLOCK_NAMES}",
    )
    _add_max_images_flag(remove, 0)
    remove.add_argument("--output", metavar="FILE", help="also write the table: .csv, else Markdown")
    remove.set_defaults(run=analyze_remove_se_command)


def _add_max_images_flag(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--max-images",
        type=nonnegative_int,
        default=default,
        metavar="N",
        help="a sample of at most N validation images, stratified by class (0: all)",
    )


def _analysis_options(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The loading and sampling flags both ``senet analyze`` commands share."""
    names = ("seed", "data_root", "weights", "batch_size", "workers", "device")
    return {"max_images": args.max_images or None, **flag_values(args, *names)}


def analyze_excitation_command(args: argparse.Namespace) -> int:
    from senet.analysis.excitation import analyze_excitation

    options = {**flag_values(args, "blocks", "classes", "channels"), **_analysis_options(args)}
    stats, written = analyze_excitation(args.checkpoint, args.data, args.output, **options)
    print(f"{stats.model}: gates of {', '.join(b.name for b in stats.blocks)} on {stats.images} images")
    print("block      l1_specificity  eta_squared  (chance)  gate mean")
    for row in stats.specificity():
        print(
            f"{row['block']:<10} {row['l1_specificity']:14.4f} {row['eta_squared']:12.4f} "
            f"{row['eta_squared_chance']:9.4f} {row['gate_mean']:10.4f}"
        )
    print(f"wrote {len(written)} files to {args.output}: {', '.join(p.name for p in written)}")
    return 0


def analyze_remove_se_command(args: argparse.Namespace) -> int:
    from senet.analysis.excitation import analyze_se_removal, format_removal_table, write_removal_table

    results, inputs = analyze_se_removal(
        args.checkpoint, args.data, choices=args.blocks, **_analysis_options(args)
    )
    model = inputs.model.pretrained_info.model
    print(f"{model} on {inputs.source}, {results[0].images} validation images; SE blocks removed = gates 1\n")
    print(format_removal_table(results))
    if args.output:
        print(f"\nwrote {write_removal_table(results, args.output)}")
    return 0
