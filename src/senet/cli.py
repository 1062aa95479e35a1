"""The ``senet`` command. Each sub-command is a thin layer over a Python function of the package."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import typing
from typing import Sequence


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:+.2f}%"


def _flops(gflops: float | None) -> str:
    """GFLOPs as the paper prints them: MFLOPs below 1 G (the mobile networks of Table 3)."""
    if gflops is None:
        return "-"
    return f"{gflops * 1000:.0f}M" if gflops < 1 else f"{gflops:.2f}G"


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
        header = ("model", "input", "params (M)", "paper", "diff", "FLOPs", "paper", "diff", "data", "top-1 err", "top-5 err")
        table = [header]
        for row in rows:
            table.append((
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
            ))
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for n, line in enumerate(table):
            print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
            if n == 0:
                print("  ".join("-" * w for w in widths))
        print(
            "\nparams: all learnable parameters. FLOPs: multiply-adds of one forward pass of one input x input image"
            "\n(convs and FC layers; G = 1e9, M = 1e6). paper: ../shared/paper/reference.md (Tables 2-4, released"
            "\nprototxts, original papers for plain CIFAR nets). errors: the paper's single-crop top-1/top-5 on data."
        )
    return 0


def _config_overrides(args: argparse.Namespace) -> dict:
    from senet.train.config import TrainConfig, parse_model_options

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.model_opt:
        overrides["model_options"] = parse_model_options(args.model_opt)
    return overrides


def _train(args: argparse.Namespace) -> int:
    from senet.train.checkpoint import load_checkpoint
    from senet.train.config import TrainConfig, resolve_config
    from senet.train.engine import train

    overrides = _config_overrides(args)
    if args.resume:
        saved = load_checkpoint(args.resume).meta["config"]
        config = TrainConfig.from_dict({**saved, **overrides})
    else:
        config = resolve_config(args.preset, **overrides)
    result = train(config, resume=args.resume)
    if result.best:
        print(f"best val top-1 error {result.best['val_top1_err']:.2f}% (epoch {result.best['epoch']}); run: {result.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from senet.train.evaluation import evaluate_runs, write_per_class

    scales = [int(s) for s in args.scales.split(",")] if args.scales else None
    result = evaluate_runs(args.checkpoint, args.data, data_root=args.data_root, scales=scales, ten_crop=args.ten_crop,
                           batch_size=args.batch_size, workers=args.workers, device=args.device, weights=args.weights)
    if args.per_class:
        write_per_class(result, args.per_class)
    if args.format == "json":
        print(json.dumps({"top1_err": result.top1_err, "top5_err": result.top5_err, "images": result.images}))
    else:
        print(f"top-1 error {result.top1_err:.2f}%  top-5 error {result.top5_err:.2f}%  ({result.images} images)")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from senet.train.plot import plot_runs

    print(plot_runs(args.runs, args.out, metric=args.metric))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from senet.train.demo import format_demo, run_demo

    overrides = {k: v for k, v in {"epochs": args.epochs, "device": args.device}.items() if v is not None}
    print(format_demo(run_demo(output=args.output, **overrides)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from senet.analysis.benchmark import BenchSettings, benchmark, format_results

    if args.report:
        from senet.analysis.report import write_report

        print(f"wrote {write_report(args.report, device=args.device, quick=args.quick)}")
        return 0
    from senet.analysis.benchmark import split_specs

    specs = split_specs(args.models) + split_specs(args.vs or "")
    documents, records = [], []
    for batch in (int(b) for b in args.batch.split(",")):
        settings = BenchSettings(batch=batch, size=args.size, mode=args.mode, device=args.device, amp=args.amp,
                                 channels_last=args.channels_last, compile=args.compile, optimize=args.optimize,
                                 threads=args.threads, warmup=args.warmup, repeats=args.repeats, memory=not args.no_memory)
        results = benchmark(specs, settings)
        documents.append(format_results(results, settings))
        records += [{**r.as_dict(), **{k: getattr(settings, k) for k in ("mode", "size", "device", "amp", "channels_last", "compile", "optimize")}} for r in results]
    print(json.dumps(records, indent=1) if args.format == "json" else "\n\n".join(documents))
    return 0


_FIELD_HELP = {
    "model": "registered model name (senet models)",
    "data": "digits (default), cifar10, cifar100, or an image folder ROOT with train/ and val/",
    "data_root": "folder holding the CIFAR files",
    "download": "download CIFAR into --data-root when the network allows",
    "image_size": "training crop (default 32 for digits/CIFAR, 224 for folders)",
    "eval_crop": "evaluation crop (e.g. 320: resize 366, centre crop 320)",
    "cutout": "Cutout square size in pixels (0: off)",
    "balanced_sampling": "class-balanced minibatches (the CVPR paper's data balancing)",
    "strict_data": "stop at the first unreadable image instead of skipping it",
    "batch_size": "global batch size, split over the processes of a torchrun job",
    "lr": "learning rate (at --lr-reference-batch when that is set)",
    "lr_reference_batch": "batch size at which --lr is given; the rate scales linearly from it",
    "schedule": "step, multistep or cosine",
    "freeze_bn_epochs": "freeze BatchNorm for the last N epochs (SENet-154)",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "mixed precision: bf16 on CPU, fp16 with a gradient scaler on CUDA",
    "output": "run directory (default: runs/<time>-<model>)",
    "log_interval": "plain progress line every N batches when not on a terminal (0: none)",
}


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field, so every field of a preset can be overridden."""
    from senet.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_options":
            continue
        kind = hints[f.name]
        args = typing.get_args(kind)
        if type(None) in args:
            kind = next(a for a in args if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        help_text = _FIELD_HELP.get(f.name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=lambda text: tuple(float(x) for x in text.split(",") if x), default=None,
                                metavar="E1,E2", help="comma-separated epochs")
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)
    parser.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                        help="model build option, e.g. se_reduction=8 or se_stages=(1,2); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="senet", description="Squeeze-and-Excitation Networks: build, count, train, measure.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list registered models with params and GFLOPs beside the paper's")
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'se_*'")
    models.add_argument("--format", choices=("table", "json", "csv"), default="table")
    models.set_defaults(run=_models)

    train = commands.add_parser("train", help="train a model (torchrun --nproc_per_node=N -m senet train ... for DDP)")
    train.add_argument("--preset", choices=("demo", "imagenet-paper", "cifar-paper"), default=None,
                       help="a recipe of the paper; every field can still be overridden")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    _add_config_arguments(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="top-1/top-5 error of trained runs, with multi-crop/scale fusion and ensembles")
    evaluate.add_argument("--checkpoint", action="append", required=True, metavar="RUN_DIR",
                          help="a run directory; repeat to average the softmax of an ensemble")
    evaluate.add_argument("--data", help="dataset (default: the run's own)")
    evaluate.add_argument("--data-root")
    evaluate.add_argument("--scales", metavar="S1,S2", help="evaluation crop sizes to fuse, e.g. 224,320")
    evaluate.add_argument("--ten-crop", action="store_true", help="average over 10 crops (corners, centre, flips)")
    evaluate.add_argument("--weights", choices=("last", "best"), default="last")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--workers", type=int, default=0)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--per-class", metavar="CSV", help="write per-class errors to this CSV file")
    evaluate.add_argument("--format", choices=("text", "json"), default="text")
    evaluate.set_defaults(run=_eval)

    plot = commands.add_parser("plot", help="train/val error curves of runs on one chart (paper Fig. 4)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", default="curves.png")
    plot.add_argument("--metric", choices=("top1_err", "top5_err", "loss"), default="top1_err")
    plot.set_defaults(run=_plot)

    bench = commands.add_parser("bench", help="latency, throughput and peak memory, models interleaved; ratios to the first")
    bench.add_argument("--models", default="resnet50,se_resnet50", help="comma-separated; NAME@opt=value,... for options")
    bench.add_argument("--vs", help="other projects' models, e.g. timm:seresnet50,torchvision:resnet50")
    bench.add_argument("--batch", default="1", help="comma-separated batch sizes")
    bench.add_argument("--size", type=int, default=224)
    bench.add_argument("--mode", choices=("infer", "train"), default="infer")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--amp", action="store_true")
    bench.add_argument("--channels-last", action="store_true")
    bench.add_argument("--compile", action="store_true")
    bench.add_argument("--optimize", action="store_true", help="time senet.optimize_for_inference(model) (infer mode)")
    bench.add_argument("--threads", type=int)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    bench.add_argument("--format", choices=("table", "json"), default="table")
    bench.add_argument("--report", metavar="FILE", help="run the whole benchmark suite and write it as Markdown (make bench)")
    bench.add_argument("--quick", action="store_true", help="with --report: fewer repetitions")
    bench.set_defaults(run=_bench)

    demo = commands.add_parser("demo", help="train se_resnet20_cifar and resnet20_cifar on the embedded digits")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--epochs", type=int)
    demo.add_argument("--device")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from senet.train.engine import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        # Users get one line naming the problem; the traceback is for bugs, not for bad input. An error raised
        # in a DataLoader worker arrives wrapped in its traceback: its last line is the message.
        message = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        print(f"senet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"senet {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"senet {args.command}: interrupted", file=sys.stderr)
        return 130
