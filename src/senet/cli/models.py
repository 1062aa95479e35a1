"""``senet models``: the registered networks with their counts beside the paper's, or a backbone's stages."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import typing

from senet.cli.flags import add_format_flag


def add_models(commands: typing.Any) -> None:
    models = commands.add_parser(
        "models", help="list registered models with params and GFLOPs beside the paper's"
    )
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'se_*'")
    add_format_flag(models, "table", "json", "csv")
    models.add_argument(
        "--features",
        action="store_true",
        help="each stage a backbone returns (features_only=True): index, module, channels, stride",
    )
    models.set_defaults(run=models_command)


def models_command(args: argparse.Namespace) -> int:
    if args.features:
        return _model_stages(args)
    from senet.analysis.complexity import complexity_table

    rows = complexity_table(args.pattern)
    if not rows:
        raise ValueError(f"no model matches {args.pattern!r}; see `senet models` for the list")
    if args.format != "table":
        _write_records([row.as_dict() for row in rows], args.format)
        return 0
    header = (
        "model",
        "input",
        "params (M)",
        "paper",
        "diff",
        "FLOPs",
        "paper",
        "diff",
        "data",
        "top-1 err",
        "top-5 err",
    )
    table = [header]
    for row in rows:
        table.append(
            (
                row.name,
                str(row.input_size),
                f"{row.params_m:.2f}",
                _fmt(row.paper_params, ".2f"),
                _percent(row.params_diff),
                _flops(row.gflops),
                _flops(row.paper_gflops),
                _percent(row.gflops_diff),
                row.dataset,
                _fmt(row.paper_top1_err, ".2f"),
                _fmt(row.paper_top5_err, ".2f"),
            )
        )
    _print_table(table, right_aligned=True)
    print(
        "\nparams: all learnable parameters. "
        "FLOPs: multiply-adds of one forward pass of one input x input image"
        "\n(convs and FC layers; G = 1e9, M = 1e6). paper: the SE paper's Tables 2-4, its released prototxts,"
        "\nor the original paper of a plain CIFAR net "
        "(each figure's source: senet.model_info(NAME).paper.source)."
        "\nerrors: the paper's single-crop top-1/top-5 on data."
    )
    return 0


def _model_stages(args: argparse.Namespace) -> int:
    """``senet models NAME --features``: the maps ``create_model(NAME, features_only=True)`` can return."""
    import torch

    from senet.models.registry import create_model, list_models, model_info

    wildcard = any(c in args.pattern for c in "*?[")
    names = list_models(args.pattern) if wildcard else [model_info(args.pattern).name]
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; see `senet models` for the list")
    rows = []
    for name in names:
        with torch.device("meta"):  # the layout alone: nothing is initialised
            model = create_model(name)
        if not hasattr(model, "feature_stages"):
            raise ValueError(f"{name} describes no stages: it cannot be a backbone (features_only=True)")
        for stage in model.feature_stages():
            runs = stage.modules if len(stage.modules) <= 3 else (stage.modules[0], "..", stage.modules[-1])
            row = dict(model=name, index=stage.index, module=stage.module, channels=stage.channels)
            rows.append({**row, "stride": stage.reduction, "runs": " ".join(runs)})
    if args.format != "table":
        _write_records(rows, args.format)
        return 0
    _print_table([tuple(rows[0])] + [tuple(str(v) for v in row.values()) for row in rows])
    print(
        "\nindex: out_indices of create_model(model, features_only=True); 0 is the stem's output. "
        "stride: input"
        "\nside / map side. runs: the modules that compute the stage (docs/backbones.md)."
    )
    return 0


def _write_records(rows: list[dict[str, typing.Any]], format: str) -> None:
    """``rows`` on standard output as indented JSON or as CSV with a header."""
    if format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _print_table(table: list[tuple[str, ...]], right_aligned: bool = False) -> None:
    """``table`` (a header, then rows) in columns, the header underlined; the columns after the first
    right-aligned if ``right_aligned``, else left-aligned."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for n, line in enumerate(table):
        cells = zip(line, widths, strict=True)
        print(
            "  ".join(
                c.rjust(w) if i and right_aligned else c.ljust(w) for i, (c, w) in enumerate(cells)
            ).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:+.2f}%"


def _flops(gflops: float | None) -> str:
    """GFLOPs as the paper prints them: MFLOPs below 1 G (the mobile networks of Table 3)."""
    if gflops is None:
        return "-"
    return f"{gflops * 1000:.0f}M" if gflops < 1 else f"{gflops:.2f}G"
