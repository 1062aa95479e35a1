"""The ``senet`` command. Each sub-command is a thin layer over a Python function of the package."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Sequence


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _models(args: argparse.Namespace) -> int:
    from senet.analysis.complexity import complexity_table

    rows = complexity_table(args.pattern)
    if not rows:
        raise ValueError(f"no model matches {args.pattern!r}; see `senet models` for the list")
    if args.format == "json":
        json.dump([row.as_dict() for row in rows], sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        fields = list(rows[0].as_dict())
        writer = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)
    else:
        header = ("model", "params (M)", "paper", "diff", "GFLOPs", "paper", "diff", "top-1 err", "top-5 err")
        table = [header]
        for row in rows:
            table.append((
                row.name + ("" if row.input_size == 224 else f" @{row.input_size}"),
                f"{row.params_m:.2f}",
                _fmt(row.paper_params, ".2f"),
                _fmt(None if row.params_diff is None else 100 * row.params_diff, "+.2f") + ("%" if row.params_diff is not None else ""),
                f"{row.gflops:.2f}",
                _fmt(row.paper_gflops, ".2f"),
                _fmt(None if row.gflops_diff is None else 100 * row.gflops_diff, "+.2f") + ("%" if row.gflops_diff is not None else ""),
                _fmt(row.paper_top1_err, ".2f"),
                _fmt(row.paper_top5_err, ".2f"),
            ))
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for n, line in enumerate(table):
            print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
            if n == 0:
                print("  ".join("-" * w for w in widths))
        print(
            "\nparams: all learnable parameters; GFLOPs: multiply-adds of one forward pass at 224x224 (convs and"
            "\nFC layers); paper columns: ../shared/paper (Table 2, released prototxts); errors: paper, single crop."
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="senet", description="Squeeze-and-Excitation Networks: build, count, train, measure.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list registered models with params and GFLOPs beside the paper's")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'se_*'")
    models.add_argument("--format", choices=("table", "json", "csv"), default="table")
    models.set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        # Users get one line naming the problem; the traceback is for bugs, not for bad input.
        print(f"senet {args.command}: error: {error}", file=sys.stderr)
        return 2
