"""``senet bench``: latency, throughput and peak memory of models, interleaved."""

from __future__ import annotations

import argparse
import json
import typing

from senet.cli.flags import add_format_flag, flag_values, nonnegative_int, positive_int, positive_ints


def add_bench(commands: typing.Any) -> None:
    bench = commands.add_parser(
        "bench", help="latency, throughput and peak memory, models interleaved; ratios to the first"
    )
    bench.add_argument(
        "--models", default="resnet50,se_resnet50", help="comma-separated; NAME@opt=value,... for options"
    )
    bench.add_argument("--vs", help="other projects' models, e.g. timm:seresnet50,torchvision:resnet50")
    bench.add_argument(
        "--batch",
        default="1",
        type=positive_ints("1,8,32"),
        metavar="B1,B2",
        help="comma-separated batch sizes",
    )
    bench.add_argument(
        "--size", type=positive_int, default=224, metavar="PIXELS", help="input height and width"
    )
    bench.add_argument(
        "--mode",
        choices=("infer", "train"),
        default="infer",
        help="forward without autograd, or a whole SGD step",
    )
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    bench.add_argument("--amp", action="store_true", help="mixed precision: bf16 on CPU, fp16 on CUDA")
    bench.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    bench.add_argument("--compile", action="store_true", help="torch.compile the models")
    bench.add_argument(
        "--optimize", action="store_true", help="time senet.optimize_for_inference(model) (infer mode)"
    )
    bench.add_argument(
        "--onnx",
        action="store_true",
        help="also time each model of --models exported to ONNX (BN folded, float32) in onnxruntime's CPU "
        "provider, as NAME+onnxruntime (infer mode, cpu; needs senet[onnx])",
    )
    bench.add_argument(
        "--threads", type=positive_int, metavar="N", help="CPU threads (default: torch's choice)"
    )
    bench.add_argument(
        "--warmup", type=nonnegative_int, default=3, metavar="N", help="untimed iterations per model"
    )
    bench.add_argument(
        "--repeats", type=positive_int, default=10, metavar="N", help="timed iterations per model"
    )
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    add_format_flag(bench, "table", "json")
    bench.add_argument(
        "--report", metavar="FILE", help="run the whole benchmark suite and write it as Markdown (make bench)"
    )
    bench.add_argument("--quick", action="store_true", help="with --report: fewer repetitions")
    bench.set_defaults(run=bench_command)


# The flags that are BenchSettings fields, and those of them recorded beside each result of --format json.
_SETTINGS = (
    "size",
    "mode",
    "device",
    "amp",
    "channels_last",
    "compile",
    "optimize",
    "threads",
    "warmup",
    "repeats",
)
_RECORDED = ("mode", "size", "device", "amp", "channels_last", "compile", "optimize")


def bench_command(args: argparse.Namespace) -> int:
    from senet.analysis.benchmark import (
        BenchSettings,
        benchmark,
        format_results,
        onnxruntime_specs,
        split_specs,
    )

    if args.report:
        from senet.analysis.report import write_report

        print(f"wrote {write_report(args.report, device=args.device, quick=args.quick)}")
        return 0
    specs = split_specs(args.models) + split_specs(args.vs or "")
    if args.onnx:  # each model of --models once more, exported and run by onnxruntime
        specs += [spec for spec in onnxruntime_specs(split_specs(args.models)) if spec not in specs]
    documents, records = [], []
    for batch in args.batch:
        settings = BenchSettings(batch=batch, memory=not args.no_memory, **flag_values(args, *_SETTINGS))
        results = benchmark(specs, settings)
        documents.append(format_results(results, settings))
        records += [{**r.as_dict(), **{k: getattr(settings, k) for k in _RECORDED}} for r in results]
    print(json.dumps(records, indent=1) if args.format == "json" else "\n\n".join(documents))
    return 0
