"""The ``senet`` command. Each sub-command is a thin layer over a Python function of the package."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
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
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        table = [tuple(rows[0])] + [tuple(str(v) for v in row.values()) for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for n, line in enumerate(table):
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
        print(
            "\nindex: out_indices of create_model(model, features_only=True); 0 is the stem's output. stride: input"
            "\nside / map side. runs: the modules that compute the stage (docs/backbones.md)."
        )
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.features:
        return _model_stages(args)
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
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        for n, line in enumerate(table):
            print(
                "  ".join(
                    cell.ljust(w) if i == 0 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(line, widths))
                )
            )
            if n == 0:
                print("  ".join("-" * w for w in widths))
        print(
            "\nparams: all learnable parameters. FLOPs: multiply-adds of one forward pass of one input x input image"
            "\n(convs and FC layers; G = 1e9, M = 1e6). paper: the SE paper's Tables 2-4, its released prototxts,"
            "\nor the original paper of a plain CIFAR net (each figure's source: senet.model_info(NAME).paper.source)."
            "\nerrors: the paper's single-crop top-1/top-5 on data."
        )
    return 0


def _config_overrides(args: argparse.Namespace) -> dict:
    from senet.train.config import TrainConfig, parse_model_options

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
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


def _train(args: argparse.Namespace) -> int:
    from senet.train.checkpoint import list_checkpoints
    from senet.train.config import TrainConfig, resolve_config
    from senet.train.engine import train
    from senet.train.rundir import checkpoint_to_resume

    overrides = _config_overrides(args)
    resume = args.resume
    if resume == "auto":  # the run in --output if it saved anything, else a new one there
        output = overrides.get("output")
        resume = output if output and list_checkpoints(output) else "auto"
    if resume is not None and resume != "auto":
        resume = checkpoint_to_resume(resume)  # loaded once: train() continues from this very checkpoint
        # A resumed run keeps its saved config; flags given now override it (and are checked by train()). A
        # run directory may have been moved since it was saved: it continues where it is now.
        config = TrainConfig.from_dict({**resume.meta["config"], "output": str(resume.run_dir), **overrides})
    else:
        config = resolve_config(args.preset, **overrides)
    result = train(config, resume=resume, overwrite=args.overwrite, extend_schedule=args.extend_schedule)
    if result.best:
        print(
            f"best val top-1 error {result.best['val_top1_err']:.2f}% (epoch {result.best['epoch']}); "
            f"run: {result.run_dir}"
        )
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from senet.analysis.ablation import parse_grid, run_ablation
    from senet.train.config import resolve_config

    overrides = _config_overrides(args)
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


def _eval(args: argparse.Namespace) -> int:
    from senet.train.evaluation import evaluate_runs, write_per_class

    result = evaluate_runs(
        args.checkpoint,
        args.data,
        data_root=args.data_root,
        scales=args.scales,
        ten_crop=args.ten_crop,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        weights=args.weights,
    )
    if args.per_class:
        write_per_class(result, args.per_class)
    if args.format == "json":
        print(json.dumps({"top1_err": result.top1_err, "top5_err": result.top5_err, "images": result.images}))
    else:
        print(
            f"top-1 error {result.top1_err:.2f}%  top-5 error {result.top5_err:.2f}%  ({result.images} images)"
        )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from senet.deploy.predict import predict

    predictions = predict(
        args.checkpoint,
        args.inputs,
        topk=args.topk,
        labels=args.labels,
        batch_size=args.batch_size,
        device=args.device,
        weights=args.weights,
    )
    done = failed = 0
    for prediction in predictions:
        if prediction.error is not None:
            failed += 1
            tqdm.write(f"senet predict: skipped {prediction.path}: {prediction.error}", file=sys.stderr)
        else:
            done += 1
        if args.format == "jsonl":
            text = json.dumps(prediction.as_dict())
        else:
            lines = [f"  skipped: {prediction.error}"] if prediction.error is not None else []
            lines += [f"  {100 * score.prob:5.2f}%  {score.label}" for score in prediction.top]
            text = "\n".join([prediction.path, *lines])
        # tqdm.write: on a terminal, results and messages go above the progress bar (stderr) instead of into it.
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()  # each image's result as soon as it is known, also through a pipe
    if not done:
        raise ValueError(f"none of the {failed} inputs could be predicted (each is named above)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from senet.deploy.predict import read_labels
    from senet.weights.convert import convert_file

    overrides = {
        key: value
        for key, value in (
            ("mean", args.mean),
            ("std", args.std),
            ("input_size", args.input_size),
            ("crop_fraction", args.crop_fraction),
            ("interpolation", args.interpolation),
        )
        if value is not None
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


def _plot(args: argparse.Namespace) -> int:
    from senet.train.plot import plot_runs

    print(plot_runs(args.runs, args.out, metric=args.metric))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from senet.analysis.demo import format_demo, run_demo

    overrides = {k: v for k, v in {"epochs": args.epochs, "device": args.device}.items() if v is not None}
    print(format_demo(run_demo(output=args.output, overwrite=args.overwrite, seeds=args.seeds, **overrides)))
    return 0


def _export(args: argparse.Namespace) -> int:
    from senet.deploy.export import export_model

    report = export_model(
        args.checkpoint,
        args.out,
        args.format,
        weights=args.weights,
        dynamic_batch=args.dynamic_batch,
        opset=args.opset,
        fp16=args.fp16,
        batch=args.batch,
        device=args.device,
    )
    print(report.summary())
    return 0


def _bench(args: argparse.Namespace) -> int:
    from senet.analysis.benchmark import BenchSettings, benchmark, format_results

    if args.report:
        from senet.analysis.report import write_report

        print(f"wrote {write_report(args.report, device=args.device, quick=args.quick)}")
        return 0
    from senet.analysis.benchmark import onnxruntime_specs, split_specs

    specs = split_specs(args.models) + split_specs(args.vs or "")
    if args.onnx:  # each model of --models once more, exported and run by onnxruntime
        specs += [spec for spec in onnxruntime_specs(split_specs(args.models)) if spec not in specs]
    documents, records = [], []
    for batch in args.batch:
        settings = BenchSettings(
            batch=batch,
            size=args.size,
            mode=args.mode,
            device=args.device,
            amp=args.amp,
            channels_last=args.channels_last,
            compile=args.compile,
            optimize=args.optimize,
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            memory=not args.no_memory,
        )
        results = benchmark(specs, settings)
        documents.append(format_results(results, settings))
        records += [
            {
                **r.as_dict(),
                **{
                    k: getattr(settings, k)
                    for k in ("mode", "size", "device", "amp", "channels_last", "compile", "optimize")
                },
            }
            for r in results
        ]
    print(json.dumps(records, indent=1) if args.format == "json" else "\n\n".join(documents))
    return 0


def _data_pack(args: argparse.Namespace) -> int:
    from senet.data.shards import pack_folder, read_counts

    def progress(name: str, count: int) -> None:
        print(f"wrote {name} ({count} images)", file=sys.stderr)

    index = pack_folder(
        args.folder,
        args.out,
        images_per_shard=args.images_per_shard,
        seed=args.seed,
        overwrite=args.overwrite,
        on_shard=progress,
    )
    classes, counts = read_counts(str(index))
    splits = ", ".join(
        f"{split} {images} images in {shards} shards" for split, (images, shards) in counts.items()
    )
    print(f"wrote {index}: {classes} classes; {splits}")
    return 0


def _data_verify(args: argparse.Namespace) -> int:
    from senet.data.shards import verify_shards

    def progress(report: typing.Any) -> None:
        print(f"ok {report.name} ({report.samples} images)", file=sys.stderr)

    reports = verify_shards(args.index, on_shard=progress)
    images = sum(report.samples for report in reports)
    print(f"{args.index}: all {len(reports)} shards match the index ({images} images)")
    return 0


def _data_shapes(args: argparse.Namespace) -> int:
    from senet.detection.shapes import make_shapes

    root = make_shapes(
        args.out,
        train=args.train,
        val=args.val,
        size=args.size,
        seed=args.seed,
        image_format=args.format,
        overwrite=args.overwrite,
    )
    print(f"wrote {root}: {args.train} train and {args.val} val images ({args.size} px), COCO's layout")
    return 0


def _detect_overrides(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The DetectionConfig fields given as flags (``--backbone-opt`` / ``--detector-opt`` as dicts)."""
    from senet.detection.engine import DetectionConfig
    from senet.train.config import parse_model_options

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(DetectionConfig)
        if getattr(args, f.name, None) is not None
    }
    for flag, name in (("backbone_opt", "backbone_options"), ("detector_opt", "detector_options")):
        if getattr(args, flag):
            pairs = parse_model_options(getattr(args, flag))
            overrides[name] = pairs
    return overrides


def _detect_train(args: argparse.Namespace) -> int:
    from senet.detection.engine import DetectionConfig, detection_checkpoint, train
    from senet.train.checkpoint import list_checkpoints
    from senet.train.rundir import checkpoint_to_resume

    overrides = _detect_overrides(args)
    resume = args.resume
    if resume == "auto":  # the run in --output if it saved anything, else a new one there
        output = overrides.get("output")
        resume = output if output and list_checkpoints(output) else "auto"
    if resume is not None and resume != "auto":
        resume = detection_checkpoint(checkpoint_to_resume(resume))
        saved = dict(resume.meta["config"])
        if "epochs" in overrides or "schedule" in overrides:  # the one given now replaces both
            saved.pop("epochs", None)
            saved.pop("schedule", None)
        config = DetectionConfig.from_dict({**saved, "output": str(resume.run_dir), **overrides})
    else:
        config = DetectionConfig(**overrides)
    result = train(config, resume=resume, overwrite=args.overwrite, extend_schedule=args.extend_schedule)
    if result.best:
        print(
            f"best val AP {result.best['val_AP']:.4f} (AP50 {result.best['val_AP50']:.4f}, epoch "
            f"{result.best['epoch']}); run: {result.run_dir}"
        )
    return 0


def _detect_eval(args: argparse.Namespace) -> int:
    from senet.detection.engine import evaluate_run
    from senet.detection.metrics import METRICS

    result = evaluate_run(
        args.checkpoint,
        data=args.data,
        val_ann=args.val_ann,
        val_images=args.val_images,
        weights=args.weights,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        strict_data=args.strict_data,
    )
    if args.format == "json":
        print(json.dumps(result))
    else:
        print(
            "  ".join(f"{name} {result[name]:.4f}" for name in METRICS[:6]) + f"  ({result['images']} images)"
        )
        print("  ".join(f"{name} {result[name]:.4f}" for name in METRICS[6:]))
    return 0


def _detect_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from senet.detection.predict import predict

    results = predict(
        args.checkpoint,
        args.inputs,
        output=args.output,
        score_threshold=args.score_threshold,
        nms_threshold=args.nms_threshold,
        max_detections=args.max_detections,
        device=args.device,
        weights=args.weights,
    )
    done = failed = 0
    for result in results:
        if result.error is not None:
            failed += 1
            tqdm.write(f"senet detect predict: skipped {result.path}: {result.error}", file=sys.stderr)
            continue
        done += 1
        for record in result.records():
            print(json.dumps(record))
        sys.stdout.flush()  # each image's detections as soon as they are known, also through a pipe
    if not done:
        raise ValueError(f"none of the {failed} inputs could be read (each is named above)")
    if args.output:
        print(f"drew {done} image(s) into {args.output}", file=sys.stderr)
    return 0


def _analysis_options(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The loading and sampling flags both ``senet analyze`` commands share."""
    names = ("seed", "data_root", "weights", "batch_size", "workers", "device")
    return {"max_images": args.max_images or None, **{name: getattr(args, name) for name in names}}


def _analyze_excitation(args: argparse.Namespace) -> int:
    from senet.analysis.excitation import analyze_excitation

    stats, written = analyze_excitation(
        args.checkpoint,
        args.data,
        args.output,
        blocks=args.blocks,
        classes=args.classes,
        channels=args.channels,
        **_analysis_options(args),
    )
    print(f"{stats.model}: gates of {', '.join(b.name for b in stats.blocks)} on {stats.images} images")
    print("block      l1_specificity  eta_squared  (chance)  gate mean")
    for row in stats.specificity():
        print(
            f"{row['block']:<10} {row['l1_specificity']:14.4f} {row['eta_squared']:12.4f} "
            f"{row['eta_squared_chance']:9.4f} {row['gate_mean']:10.4f}"
        )
    print(f"wrote {len(written)} files to {args.output}: {', '.join(p.name for p in written)}")
    return 0


def _analyze_remove_se(args: argparse.Namespace) -> int:
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


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("senet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from senet import __version__

        return __version__


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default, unless its help already names it or it is a plain on/off switch."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = "default" in text or action.default is argparse.SUPPRESS or action.nargs == 0
        if shown or not (action.option_strings or action.nargs in ("?", "*")):
            return text
        return text + (" (default: none)" if action.default is None else " (default: %(default)s)")


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose error is one line after a short usage (``senet train`` has ~50 flags)."""

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        usage = self.format_usage()
        if usage.count("\n") > 2:
            usage = f"usage: {self.prog} [options]  (see {self.prog} --help)\n"
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")


# argparse ``type=`` functions: each names what it expects, and argparse prefixes the flag to the message.
def _int_at_least(low: int) -> typing.Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _positive_ints(example: str) -> typing.Callable[[str], list[int]]:
    """A parser of ``"224,320"`` -> ``[224, 320]``; ``example`` shows the format in its error."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(p.strip()) for p in text.split(",")]
        except ValueError:
            values = []
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= 1 such as {example}; got {text!r}"
            )
        return values

    return parse


def _floats(text: str) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` -> ``(0.5, 0.5, 0.5)``."""
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.5,0.5,0.5; got {text!r}"
        ) from None


def _epoch_list(text: str) -> tuple[float, ...]:
    """``"82,123"`` -> ``(82.0, 123.0)``; ``""`` clears the list."""
    try:
        return tuple(float(p) for p in (p.strip() for p in text.split(",")) if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated epochs such as 82,123 or 0.5,1.5; got {text!r}"
        ) from None


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


_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def _is_boolean(hint: typing.Any) -> bool:
    """``bool`` or ``bool | None`` (an option whose None means "automatic")."""
    return hint is bool or set(typing.get_args(hint)) == {bool, type(None)}


@functools.cache
def _boolean_model_options() -> frozenset[str]:
    """Build options that every place declaring them types as a boolean: the families' constructors (each
    registered builder's return type), the SE options (``se_`` + :class:`senet.layers.SEConfig` fields), the
    backbone options and ``torchvision:NAME``'s own (add_se)."""
    from senet.layers.squeeze_excite import SEConfig
    from senet.models.add_se import build_torchvision
    from senet.models.features import apply_backbone_options
    from senet.models.registry import list_models, model_info

    declared: dict[str, list[typing.Any]] = {}
    families = {typing.get_type_hints(model_info(name).builder).get("return") for name in list_models()}
    functions = [f.__init__ for f in families if f is not None] + [apply_backbone_options, build_torchvision]
    for function in functions:
        for key, hint in typing.get_type_hints(function).items():
            declared.setdefault(key, []).append(hint)
    for key, hint in typing.get_type_hints(SEConfig).items():
        declared.setdefault(f"se_{key}", []).append(hint)
    return frozenset(key for key, hints in declared.items() if all(_is_boolean(h) for h in hints))


@functools.cache
def _boolean_detector_options() -> frozenset[str]:
    """torchvision FasterRCNN's keywords whose default is a boolean (none in torchvision 0.29)."""
    import inspect

    from torchvision.models.detection import FasterRCNN

    from senet.detection.model import DETECTOR_OPTIONS

    parameters = inspect.signature(FasterRCNN.__init__).parameters
    return frozenset(key for key in DETECTOR_OPTIONS if isinstance(parameters[key].default, bool))


def _options_flag(booleans: typing.Callable[[], frozenset[str]]) -> typing.Callable[[str], str]:
    """An argparse type for ``KEY=VALUE`` build options: checked now (one line), and a boolean option, decided
    by its declared type (``booleans()``), written as people write it (true/false, yes/no, on/off, 1/0, any
    case) becomes ``KEY=True`` / ``KEY=False``; every other value is left as given (``se_reduction=1`` is 1)."""

    def parse(text: str) -> str:
        from senet.train.config import parse_model_options

        try:
            ((key, value),) = parse_model_options([text]).items()
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("--model-opt ")) from None
        if key not in booleans() or value is None or isinstance(value, bool):
            return text  # None ("automatic", where the option allows it) is the family's to check
        word = str(value).lower() if isinstance(value, (str, int)) else None
        if word not in _TRUE_WORDS + _FALSE_WORDS:
            raise argparse.ArgumentTypeError(
                f"{key}={value!r}: {key} is true or false; write true/false, yes/no, on/off or 1/0 (any case)"
            )
        return f"{key}={word in _TRUE_WORDS}"

    return parse


_model_opt = _options_flag(_boolean_model_options)


# Every TrainConfig field, in words. A field's default (the dataclass's) is appended unless the text names it.
_FIELD_HELP = {
    "model": "registered model name (senet models)",
    "pretrained": "start from these weights: a senet weights file (senet convert) or a run directory; "
    "a new classifier where the data has another class count (default: none, random initialisation)",
    "data": "digits, cifar10, cifar100, an image folder ROOT with train/ and val/, or the index.json of "
    "its shards (senet data pack; a path or fsspec URL)",
    "data_root": "folder holding the CIFAR files (default: none)",
    "download": "download CIFAR into --data-root when the network allows",
    "image_size": "training crop (default: 32 for digits/CIFAR, 224 for folders, or the preset's)",
    "eval_crop": "evaluation crop, e.g. 320: resize 366, centre crop 320 (default: the training crop)",
    "cutout": "Cutout square size in pixels (0: off)",
    "balanced_sampling": "class-balanced minibatches (the CVPR paper's data balancing)",
    "strict_data": "stop at the first unreadable image instead of skipping it",
    "workers": "DataLoader worker processes (0: load in the training process)",
    "loader": "where JPEGs are decoded and augmented: cpu (in the workers), gpu (workers read the bytes and "
    "draw the crops; the device decodes with nvJPEG and augments), auto (gpu on CUDA for image folders)",
    "epochs": "epochs to train",
    "batch_size": "global batch size, split over the processes of a torchrun job",
    "lr": "learning rate (at --lr-reference-batch when that is set)",
    "lr_reference_batch": "batch size at which --lr is given; the rate scales linearly from it "
    "(default: none, --lr as is, or the preset's)",
    "momentum": "SGD momentum, in [0, 1)",
    "nesterov": "Nesterov momentum",
    "weight_decay": "L2 weight decay",
    "schedule": "learning-rate schedule: step, multistep or cosine",
    "step_epochs": "with --schedule step: multiply the rate by --gamma every N epochs",
    "milestones": "with --schedule multistep: epochs (fractions allowed) where the rate is multiplied by "
    "--gamma (default: none, or the preset's)",
    "gamma": "factor of each step/multistep decay",
    "warmup_epochs": "linear warm-up from 0 over this many epochs (fractions allowed)",
    "label_smoothing": "label smoothing of the cross-entropy, in [0, 1)",
    "drop_rate": "dropout before the classifier, in [0, 1) (default: the model's own, or the preset's)",
    "freeze_bn_epochs": "freeze BatchNorm for the last N epochs (SENet-154)",
    "seed": "random seed of weights, data order and augmentation",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "mixed precision: bf16 on CPU, fp16 with a gradient scaler on CUDA",
    "channels_last": "channels-last memory format for the model and its inputs",
    "compile": "torch.compile the model",
    "output": "run directory (default: runs/<time>-<model>)",
    "log_interval": "plain progress line every N batches when not on a terminal (0: none)",
    "save_every_steps": "also checkpoint every N optimizer steps (0: at epoch ends only)",
    "save_every_minutes": "also checkpoint when this many minutes passed since the last save (0: off)",
    "keep": "checkpoints kept in the run directory: the newest N",
}


def _add_field_flags(
    parser: argparse.ArgumentParser,
    config: type,
    field_help: dict[str, str],
    *,
    skip: set[str],
    tuples: tuple[typing.Callable[[str], tuple], str],
    choices: dict[str, tuple[str, ...]] | None = None,
    metavars: dict[str, str] | None = None,
    note: str = "",
) -> None:
    """One ``--flag`` per field of the dataclass ``config`` (but ``skip``), so every field can be set from the
    command line. Their argparse default is None ("not given"); the help shows the dataclass's default.
    ``tuples``: the parser and metavar of tuple fields; ``choices`` and ``metavars`` per field name."""
    choices, metavars = choices or {}, metavars or {}
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        kind = hints[f.name]
        args = typing.get_args(kind)
        if type(None) in args:
            kind = next(a for a in args if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        help_text = field_help.get(f.name, f.name.replace("_", " "))
        if "default" not in help_text:
            help_text += f" (default: {_describe_default(f)}{note})"
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=tuples[0], default=None, metavar=tuples[1], help=help_text)
        elif f.name in choices:
            parser.add_argument(flag, choices=choices[f.name], default=None, help=help_text)
        else:
            metavar = "N" if kind is int else "X" if kind is float else metavars.get(f.name)
            parser.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)


def _describe_default(field: dataclasses.Field) -> str:
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None:
        return "none"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    if isinstance(default, float):
        return f"{default:.4g}"
    return str(default)


def _add_run_flags(parser: argparse.ArgumentParser, resume_help: str, extend_help: str) -> None:
    """``--resume``, ``--overwrite`` and ``--extend-schedule``: what every training command does with its run
    directory (senet.train.rundir)."""
    parser.add_argument("--resume", metavar="RUN_DIR|auto", help=resume_help)
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    parser.add_argument("--extend-schedule", action="store_true", help=extend_help)


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field, so every field of a preset can be overridden.

    Their argparse default is None ("from the preset, else the dataclass"); the help shows the dataclass's."""
    from senet.train.config import TrainConfig

    _add_field_flags(
        parser,
        TrainConfig,
        _FIELD_HELP,
        skip={"model_options"},
        tuples=(_epoch_list, "E1,E2"),
        note=", or the preset's",
    )
    parser.add_argument(
        "--model-opt",
        action="append",
        metavar="KEY=VALUE",
        type=_model_opt,
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


def build_parser() -> argparse.ArgumentParser:
    from senet.analysis.paper_ablations import STUDIES  # figures only: no torch import at start-up
    from senet.train.plot import METRICS as PLOT_METRICS

    parser = _Parser(
        prog="senet", description="Squeeze-and-Excitation Networks: build, count, train, measure."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="one of these; `senet COMMAND --help` describes its flags",
    )

    models = commands.add_parser(
        "models", help="list registered models with params and GFLOPs beside the paper's"
    )
    models.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. 'se_*'")
    models.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    models.add_argument(
        "--features",
        action="store_true",
        help="each stage a backbone returns (features_only=True): index, module, channels, stride",
    )
    models.set_defaults(run=_models)

    train = commands.add_parser(
        "train", help="train a model (torchrun --nproc_per_node=N -m senet train ... for DDP)"
    )
    train.add_argument(
        "--preset",
        choices=("demo", "imagenet-paper", "cifar-paper"),
        default=None,
        help="a recipe of the paper; every field can still be overridden",
    )
    _add_run_flags(
        train,
        "continue a run from its newest complete checkpoint; auto: the run in --output if it has one, else "
        "start it there (for requeued cluster jobs)",
        "with --resume: allow changed epochs, lr, batch size or schedule, and recompute the learning-rate "
        "schedule for them from where the run stands",
    )
    _add_config_arguments(train)
    train.set_defaults(run=_train)

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
        "--seeds", type=_positive_int, default=1, metavar="N", help="seeds per setting (>= 3 for any claim)"
    )
    ablate.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="also sweep a build or training option, e.g. lr=0.05,0.1 or se_bias=True,False; repeatable",
    )
    ablate.add_argument(
        "--preset",
        choices=("demo", "imagenet-paper", "cifar-paper"),
        default="demo",
        help="the recipe every run uses (default: demo); every field can still be overridden",
    )
    _add_config_arguments(ablate)
    ablate.set_defaults(run=_ablate)

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
        type=_positive_ints("224,320"),
        help="evaluation crop sizes to fuse, e.g. 224,320 (default: the run's own crop)",
    )
    evaluate.add_argument(
        "--ten-crop", action="store_true", help="average over 10 crops (corners, centre, flips)"
    )
    evaluate.add_argument(
        "--weights",
        choices=("last", "best"),
        default="last",
        help="the last checkpoint or the best epoch's weights",
    )
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=64, metavar="N", help="images per batch"
    )
    evaluate.add_argument(
        "--workers", type=_nonnegative_int, default=0, metavar="N", help="DataLoader worker processes"
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--per-class", metavar="CSV", help="write per-class errors to this CSV file")
    evaluate.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser(
        "predict", help="top-k classes of image files, preprocessed as recorded with the weights"
    )
    predict.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_DIR|FILE",
        help="a run directory of `senet train`, one of its checkpoint-*.json, or a senet weights file",
    )
    predict.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, and folders searched recursively"
    )
    predict.add_argument(
        "--topk", type=_positive_int, default=5, metavar="K", help="classes per image (at most all of them)"
    )
    predict.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per line (default: the labels recorded with the weights, else class indices)",
    )
    predict.add_argument("--format", choices=("table", "jsonl"), default="table", help="output format")
    predict.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="N", help="images per forward pass"
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--weights",
        choices=("last", "best"),
        default="last",
        help="of a run directory: the last checkpoint or the best epoch's weights",
    )
    predict.set_defaults(run=_predict)

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
    convert.add_argument("--mean", type=_floats, metavar="M1,M2,M3", help="override the recorded input mean")
    convert.add_argument("--std", type=_floats, metavar="S1,S2,S3", help="override the recorded input std")
    convert.add_argument(
        "--input-size", type=_positive_int, metavar="PIXELS", help="override the recorded test crop"
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
    convert.set_defaults(run=_convert)

    plot = commands.add_parser("plot", help="train/val error curves of runs on one chart (paper Fig. 4)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of `senet train`")
    plot.add_argument("--out", default="curves.png", help="image file to write")
    plot.add_argument(
        "--metric",
        choices=PLOT_METRICS,
        default=None,
        help="what to plot (default: top1_err for runs of senet train, AP for runs of senet detect train)",
    )
    plot.set_defaults(run=_plot)

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
        type=_positive_ints("1,8,32"),
        metavar="B1,B2",
        help="comma-separated batch sizes",
    )
    bench.add_argument(
        "--size", type=_positive_int, default=224, metavar="PIXELS", help="input height and width"
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
        "--threads", type=_positive_int, metavar="N", help="CPU threads (default: torch's choice)"
    )
    bench.add_argument(
        "--warmup", type=_nonnegative_int, default=3, metavar="N", help="untimed iterations per model"
    )
    bench.add_argument(
        "--repeats", type=_positive_int, default=10, metavar="N", help="timed iterations per model"
    )
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    bench.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    bench.add_argument(
        "--report", metavar="FILE", help="run the whole benchmark suite and write it as Markdown (make bench)"
    )
    bench.add_argument("--quick", action="store_true", help="with --report: fewer repetitions")
    bench.set_defaults(run=_bench)

    export = commands.add_parser(
        "export",
        help="write a network as ONNX, TorchScript or an ExportedProgram (BN folded), checked against PyTorch",
    )
    export.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_DIR|FILE",
        help="a run directory of `senet train`, one of its checkpoint-*.json, or a senet weights file",
    )
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
        "--opset", type=_int_at_least(7), metavar="N", help="ONNX opset (default: the exporter's)"
    )
    export.add_argument(
        "--fp16",
        action="store_true",
        help="weights, input and output in float16; checked to 1e-2 x max(1, max |logit|) instead of "
        "1e-4 (float16 rounds each layer to ~5e-4 relative)",
    )
    export.add_argument(
        "--batch", type=_positive_int, default=2, metavar="N", help="images per random input of the check"
    )
    export.add_argument(
        "--weights",
        choices=("last", "best"),
        default="last",
        help="of a run directory: the last checkpoint or the best epoch's weights",
    )
    export.add_argument("--device", default="cpu", help="where to trace the network: cpu, cuda or cuda:N")
    export.set_defaults(run=_export)

    demo = commands.add_parser(
        "demo",
        help="train se_resnet20_cifar and resnet20_cifar on the embedded digits, 3 seeds each, and say "
        "whether their difference is beyond seed noise",
    )
    demo.add_argument("--output", default="runs/demo", help="folder for the runs and the pictures")
    demo.add_argument(
        "--epochs", type=_positive_int, metavar="N", help="epochs per model (default: the demo preset's)"
    )
    demo.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="train again instead of reusing the finished runs in --output",
    )
    demo.add_argument(
        "--seeds", type=_positive_int, default=3, metavar="N", help="seeds per network (default: 3)"
    )
    demo.set_defaults(run=_demo)

    data = commands.add_parser(
        "data",
        help="pack an image folder into tar shards (to train from), verify them; make the shapes data set",
    )
    data_commands = data.add_subparsers(
        dest="data_command",
        required=True,
        metavar="pack|verify|shapes",
        help="`senet data pack|verify|shapes --help` describes its flags",
    )
    pack = data_commands.add_parser(
        "pack", help="ROOT/{train,val}/CLASS/* -> WebDataset-style tar shards and index.json"
    )
    pack.add_argument("folder", metavar="FOLDER", help="image folder ROOT with train/ and val/")
    pack.add_argument("--out", required=True, metavar="DIR", help="folder for the shards and index.json")
    pack.add_argument(
        "--images-per-shard", type=_positive_int, default=5000, metavar="N", help="at most N images a shard"
    )
    pack.add_argument(
        "--seed", type=_nonnegative_int, default=0, metavar="S", help="the one shuffle before sharding"
    )
    pack.add_argument("--overwrite", action="store_true", help="replace the shards and index in --out")
    pack.set_defaults(run=_data_pack)
    verify = data_commands.add_parser(
        "verify", help="read every shard: SHA-256, size, members and labels against the index"
    )
    verify.add_argument("index", metavar="INDEX", help="index.json (or its folder); a path or fsspec URL")
    verify.set_defaults(run=_data_verify)
    shapes = data_commands.add_parser(
        "shapes",
        help="write a small COCO-format detection data set of drawn shapes (to try senet's detection offline)",
    )
    shapes.add_argument(
        "out", metavar="OUT", help="folder: OUT/annotations/instances_{train,val}2017.json, ..."
    )
    shapes.add_argument("--train", type=_positive_int, default=64, metavar="N", help="training images")
    shapes.add_argument("--val", type=_positive_int, default=16, metavar="M", help="validation images")
    shapes.add_argument("--size", type=_int_at_least(32), default=128, metavar="PX", help="image side")
    shapes.add_argument("--seed", type=_nonnegative_int, default=0, metavar="S", help="same seed, same files")
    shapes.add_argument("--format", choices=("png", "jpg"), default="png", help="image files (default: png)")
    shapes.add_argument("--overwrite", action="store_true", help="replace a data set already in OUT")
    shapes.set_defaults(run=_data_shapes)
    _add_analyze_parser(commands)
    _add_detect_parser(commands)
    return parser


_BLOCK_NAMES = (
    "SE_s_b: block b (1-based) of stage s, stages counted as the paper's conv{s}_x with the stem as stage 1 "
    "(SE-ResNet-50: SE_2_3 = layer1's 3rd block, SE_5_* = layer4; CIFAR ResNets: layer1..3 = SE_2_*..SE_4_*); "
    "families without stages: module paths (blocks.3.se); wildcards such as SE_5_* accepted"
)


def _ints(text: str) -> tuple[int, ...]:
    """``"2,3"`` -> ``(2, 3)``."""
    try:
        return tuple(int(p) for p in (p.strip() for p in text.split(",")) if p)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 2,3; got {text!r}"
        ) from None


def _add_detect_parser(commands: typing.Any) -> None:
    from senet.detection.engine import FIELD_HELP, DetectionConfig

    detect = commands.add_parser(
        "detect",
        help="object detection: Faster R-CNN + FPN on our backbones, COCO data and metrics (train, eval, predict)",
    )
    detect_commands = detect.add_subparsers(
        dest="detect_command",
        required=True,
        metavar="train|eval|predict",
        help="`senet detect COMMAND --help` describes its flags",
    )
    train = detect_commands.add_parser(
        "train",
        help="train a detector on COCO-format data (torchrun --nproc_per_node=N -m senet detect train ... for DDP)",
    )
    _add_run_flags(
        train,
        "continue a run from its newest complete checkpoint; auto: the run in --output if it has one, else "
        "start it there",
        "with --resume: allow a changed schedule, epochs, lr or batch size, recomputed from where the run stands",
    )
    paths = {"pretrained": "W", "data": "ROOT", "train_ann": "FILE", "val_ann": "FILE", "output": "RUN_DIR"}
    _add_field_flags(
        train,
        DetectionConfig,
        FIELD_HELP,
        skip={"backbone_options", "detector_options"},
        tuples=(_ints, "N1,N2"),
        choices={"schedule": ("1x", "2x"), "norm": ("bn", "frozen_bn")},
        metavars={**paths, "train_images": "DIR", "val_images": "DIR"},
    )
    train.add_argument(
        "--backbone-opt",
        action="append",
        metavar="KEY=VALUE",
        type=_model_opt,
        help="build option of the backbone network, e.g. se_reduction=8, widths=(8,16,32) or se_bias=no; "
        "repeatable",
    )
    train.add_argument(
        "--detector-opt",
        action="append",
        metavar="KEY=VALUE",
        type=_options_flag(_boolean_detector_options),
        help="option of torchvision's FasterRCNN, e.g. rpn_batch_size_per_image=64 or "
        "box_batch_size_per_image=128; repeatable",
    )
    train.set_defaults(run=_detect_train)

    evaluate = detect_commands.add_parser(
        "eval", help="COCO's AP, AP50, AP75, APs/m/l and ARs of a trained detector (pycocotools)"
    )
    evaluate.add_argument(
        "--checkpoint", required=True, metavar="RUN_DIR", help="a run directory of `senet detect train`"
    )
    evaluate.add_argument("--data", help="COCO's layout ROOT; its val2017 split (default: the run's own)")
    evaluate.add_argument("--val-ann", metavar="FILE", help="validation annotations, instead of --data's")
    evaluate.add_argument("--val-images", metavar="DIR", help="validation images, instead of --data's")
    evaluate.add_argument(
        "--weights",
        choices=("last", "best"),
        default="last",
        help="the last checkpoint or the best epoch's weights",
    )
    evaluate.add_argument(
        "--batch-size",
        type=_positive_int,
        default=2,
        metavar="N",
        help="images per forward pass (per process)",
    )
    evaluate.add_argument(
        "--workers", type=_nonnegative_int, default=0, metavar="N", help="DataLoader worker processes"
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--amp", action="store_true", help="mixed precision: bf16 on CPU, fp16 on CUDA")
    evaluate.add_argument(
        "--strict-data",
        action="store_true",
        help="stop at the first malformed annotation or unreadable image",
    )
    evaluate.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    evaluate.set_defaults(run=_detect_eval)

    predict = detect_commands.add_parser(
        "predict",
        help="boxes, categories and scores in image files: JSON lines, and the boxes drawn on PNG copies",
    )
    predict.add_argument(
        "--checkpoint", required=True, metavar="RUN_DIR", help="a run directory of `senet detect train`"
    )
    predict.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, and folders searched recursively"
    )
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
        type=_positive_int,
        default=100,
        metavar="N",
        help="at most N detections per image",
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--weights",
        choices=("last", "best"),
        default="last",
        help="the last checkpoint or the best epoch's weights",
    )
    predict.set_defaults(run=_detect_predict)


def _add_analyze_parser(commands: typing.Any) -> None:
    analyze = commands.add_parser(
        "analyze", help="what the SE blocks of a trained network learn (paper Figs. 6-7), and removing them"
    )
    analyze_commands = analyze.add_subparsers(
        dest="analyze_command",
        required=True,
        metavar="excitation|remove-se",
        help="`senet analyze COMMAND --help` describes its flags",
    )
    excitation = analyze_commands.add_parser(
        "excitation",
        help="per-class gate statistics of chosen SE blocks: figures, class specificity, CSV and NPZ",
    )
    remove = analyze_commands.add_parser(
        "remove-se", help="top-1/top-5 error with chosen SE blocks replaced by identity (gates 1)"
    )
    for sub in (excitation, remove):
        sub.add_argument(
            "--checkpoint",
            required=True,
            metavar="RUN_DIR|FILE",
            help="a run directory of `senet train`, one of its checkpoint-*.json, or a senet weights file",
        )
        sub.add_argument("--data", help="dataset; its validation split is used (default: the run's own data)")
        sub.add_argument("--data-root", help="folder holding the CIFAR files (default: the run's own)")
        sub.add_argument(
            "--weights",
            choices=("last", "best"),
            default="last",
            help="of a run directory: the last checkpoint or the best epoch's weights",
        )
        sub.add_argument(
            "--seed", type=_nonnegative_int, default=0, metavar="S", help="seed of the image sample"
        )
        sub.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="images per batch")
        sub.add_argument(
            "--workers", type=_nonnegative_int, default=0, metavar="N", help="DataLoader worker processes"
        )
        sub.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
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
    excitation.add_argument(
        "--max-images",
        type=_nonnegative_int,
        default=10000,
        metavar="N",
        help="a sample of at most N validation images, stratified by class (0: all)",
    )
    excitation.add_argument(
        "--channels", type=_positive_int, default=50, metavar="N", help="evenly spaced channels per plot"
    )
    excitation.set_defaults(run=_analyze_excitation)
    remove.add_argument(
        "--blocks",
        action="append",
        metavar="NAMES",
        help="one choice: comma-separated SE blocks removed together; repeat for more rows (default: each "
        f"stage's blocks, then all blocks; the full model is always the first row). {_BLOCK_NAMES}",
    )
    remove.add_argument(
        "--max-images",
        type=_nonnegative_int,
        default=0,
        metavar="N",
        help="a sample of at most N validation images, stratified by class (0: all)",
    )
    remove.add_argument("--output", metavar="FILE", help="also write the table: .csv, else Markdown")
    remove.set_defaults(run=_analyze_remove_se)


class _Terminated(BaseException):
    """SIGTERM as an exception: ``finally`` and ``except BaseException`` blocks run, so a file half written
    (senet convert, export) leaves no temporary file behind. ``senet train`` installs its own handlers."""


@contextlib.contextmanager
def _terminate_by_exception() -> typing.Iterator[None]:
    def terminate(signum: int, frame: object) -> None:
        raise _Terminated

    own = threading.current_thread() is threading.main_thread()
    own = own and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # never replace a caller's handler
    previous = signal.signal(signal.SIGTERM, terminate) if own else None
    try:
        yield
    finally:
        if own:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns its exit status: 0, 2 for bad input (one line on stderr), or another non-zero
    status for a run that diverged or was stopped.
    Errors argparse finds itself (a flag's value, a missing argument) exit with status 2 too, by raising
    SystemExit after printing the usage and one error line, as do ``--help`` and ``--version`` with 0.
    A standard output closed by its reader (``senet models | head -1``) ends any command quietly with status
    141, as SIGPIPE ends a Unix tool (128 + SIGPIPE; Python itself ignores the signal and raises instead)."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # what is still buffered goes now, where a closed pipe is caught, not at exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # Python flushes stdout again at exit: give it somewhere to write, or it prints the error after all.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _stdout_closed() -> bool:
    """Whether standard output is a pipe (or socket) whose reading end is gone: a BrokenPipeError from
    anything else (a worker's pipe) is an error like any other."""
    import select

    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file (pytest's capture)
        return False
    if not hasattr(select, "poll"):  # no poll (Windows): stdout is the likely pipe
        return True
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _run(argv: Sequence[str] | None) -> int:
    """:func:`main` but for a closed standard output."""
    from senet.ops import SEKernelError
    from senet.train.control import TrainingInterrupted
    from senet.train.engine import TrainingDiverged

    args = build_parser().parse_args(argv)
    try:
        with _terminate_by_exception():
            return args.run(args)
    except _Terminated:  # what a file write had under way was removed on the way out (atomic_write)
        print(f"senet {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (ValueError, OSError) as error:
        if isinstance(error, BrokenPipeError) and _stdout_closed():
            raise  # the reader of our output is gone: main ends quietly
        # Users get one line naming the problem; the traceback is for bugs, not for bad input (ValueError)
        # or a file that is missing, unreadable or in the way (OSError). An error raised in a DataLoader
        # worker arrives wrapped in its traceback: its last line is the message.
        message = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        print(f"senet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (TrainingDiverged, SEKernelError) as error:  # SEKernelError: a Triton kernel failed on this GPU
        print(f"senet {args.command}: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stopped:  # a stop signal, after a checkpoint: 128 + its number
        print(f"senet {args.command}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print(f"senet {args.command}: interrupted", file=sys.stderr)
        return 130
