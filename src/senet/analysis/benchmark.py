"""``senet bench``: latency, throughput and peak memory of models, measured the same way for each of them.

The paper's cost claim (Sec. 4: 164 vs 167 ms CPU inference, 190 vs 209 ms GPU training step for ResNet-50
vs SE-ResNet-50) is a ratio, so models are timed *interleaved* in one process: every repetition runs each
model once, in turn, so that noise (other processes, frequency changes) hits all of them alike. Peak memory
is measured per model in a fresh process (CPU: peak RSS growth) or with CUDA's allocator statistics.

Other projects' models (``timm:seresnet50``, ``torchvision:resnet50``) are timed when those packages are
installed; senet does not depend on them. ``NAME+optimized`` times ``senet.optimize_for_inference(NAME)``, and
``NAME+onnxruntime`` NAME exported to ONNX (:func:`senet.deploy.export.export_module`: BN folded, float32,
checked against eager PyTorch) and run by onnxruntime's CPU provider with torch's thread count.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from senet.deploy.export import INPUT_NAME, export_module, onnx_session, require_onnx
from senet.deploy.optimize import optimize_for_inference
from senet.models.registry import create_model
from senet.train.config import parse_model_options


@dataclass
class BenchSettings:
    batch: int = 1
    size: int = 224
    mode: str = (
        "infer"  # "infer": forward in eval mode without autograd; "train": forward + backward + SGD step
    )
    device: str = "cpu"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    optimize: bool = False  # senet.optimize_for_inference (infer mode only)
    threads: int | None = None
    warmup: int = 3
    repeats: int = 10
    memory: bool = True

    def __post_init__(self) -> None:
        """Refuse settings that cannot be timed, naming the field and what it must be."""
        for name, low in (("batch", 1), ("size", 1), ("warmup", 0), ("repeats", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is None and name == "threads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.mode not in ("infer", "train"):
            raise ValueError(f"unknown mode {self.mode!r}; use infer or train")
        if self.optimize and self.mode != "infer":
            raise ValueError("optimize times senet.optimize_for_inference: it needs mode='infer'")


@dataclass
class BenchResult:
    model: str
    batch: int
    latency_ms: float  # median time of one iteration (one batch)
    p90_ms: float
    images_per_s: float
    peak_memory_mb: float | None
    ratios: dict[str, float] = field(default_factory=dict)  # each figure divided by the first model's

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ONNXRUNTIME_SUFFIX = "+onnxruntime"


def _base_spec(spec: str) -> str:
    """The model of a spec, without the ``+optimized`` / ``+onnxruntime`` that says how it is run."""
    return spec.removesuffix(ONNXRUNTIME_SUFFIX).removesuffix("+optimized")


def onnxruntime_specs(specs: Sequence[str]) -> list[str]:
    """``NAME+onnxruntime`` for each distinct model of ``specs`` (``NAME+optimized`` is model NAME too)."""
    return list(dict.fromkeys(_base_spec(spec) + ONNXRUNTIME_SUFFIX for spec in specs))


def split_specs(text: str) -> list[str]:
    """Split ``"resnet50@stride_in_1x1=False,stem_pool='torchvision',se_resnet50"`` into model specs: a piece
    holding ``=`` but no ``@`` is one more option of the spec before it."""
    specs: list[str] = []
    for piece in filter(None, (p.strip() for p in text.split(","))):
        if specs and "=" in piece and "@" not in piece and ":" not in piece.split("=")[0]:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def build_benchmark_model(spec: str, num_classes: int = 1000) -> nn.Module:
    """``se_resnet50`` (ours; ``NAME@key=value,...`` passes build options), ``timm:NAME`` or
    ``torchvision:NAME``."""
    source, _, name = spec.partition(":") if ":" in spec else ("senet", "", spec)
    if source == "senet":
        name, _, opts = spec.partition("@")  # e.g. resnet50@stride_in_1x1=False,stem_pool=torchvision
        return create_model(
            name, num_classes=num_classes, **parse_model_options(opts.split(",") if opts else [])
        )
    if source == "timm":
        try:
            import timm
        except ImportError:
            raise ValueError("timm is not installed; `pip install timm` to compare against it") from None
        return timm.create_model(name, num_classes=num_classes)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(f"unknown model source {source!r} in {spec!r}; use NAME, timm:NAME or torchvision:NAME")


def check_input_size(spec: str, size: int) -> None:
    """Fail in one line when ``spec`` (one of ours) cannot take ``size`` x ``size`` inputs (a ResNet at 1 px),
    found by a forward pass on the meta device: shapes only, no memory, no arithmetic."""
    if ":" in spec:
        return  # other projects' models may not support the meta device; their own run reports the error
    with torch.device("meta"):
        model = build_benchmark_model(_base_spec(spec)).eval()
        try:
            with torch.no_grad():
                model(torch.empty(1, 3, size, size))
        except RuntimeError as error:
            if "size" not in str(error).lower():
                return  # not a shape problem: the real run shows it
            reason = str(error).strip().splitlines()[-1]
            raise ValueError(f"{spec} cannot take {size}x{size} inputs: {reason}") from None


def prepare_step(spec: str, settings: BenchSettings, onnx_file: Path | None = None) -> Callable[[], None]:
    """A closure running one iteration of ``spec`` under ``settings`` (``onnx_file``: its export, for
    ``NAME+onnxruntime``): what ``senet bench`` times, and what ``benchmarks/gpu_profile.py`` profiles."""
    if spec.endswith(ONNXRUNTIME_SUFFIX):
        return _prepare_onnxruntime(spec, settings, onnx_file)
    device = torch.device(settings.device)
    optimize = settings.optimize or spec.endswith(
        "+optimized"
    )  # "NAME+optimized": optimize_for_inference(NAME)
    model = build_benchmark_model(spec.removesuffix("+optimized")).to(device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(settings.batch, 3, settings.size, settings.size, device=device).contiguous(
        memory_format=memory_format
    )
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = (
        (lambda: torch.autocast(device.type, dtype=amp_dtype)) if settings.amp else contextlib.nullcontext
    )

    if settings.mode == "infer":
        model.eval()
        if optimize:
            model = optimize_for_inference(model, example=x)
        elif settings.compile:
            model = torch.compile(model)

        def step() -> None:
            with torch.inference_mode(), autocast():
                model(x)
    elif settings.mode == "train":
        model.train()
        target = torch.randint(0, 1000, (settings.batch,), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=settings.amp and device.type == "cuda")
        run = torch.compile(model) if settings.compile else model

        def step() -> None:
            with autocast():
                loss = nn.functional.cross_entropy(run(x), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    else:
        raise ValueError(f"unknown mode {settings.mode!r}; use infer or train")
    return step


def _check_onnxruntime(specs: Sequence[str], settings: BenchSettings) -> None:
    """Refuse settings an onnxruntime row would not honour, rather than time something else under their
    name."""
    named = [spec for spec in specs if spec.endswith(ONNXRUNTIME_SUFFIX)]
    if named and (settings.mode != "infer" or settings.device != "cpu" or settings.amp):
        raise ValueError(
            f"{named[0]} times float32 inference in onnxruntime's CPU provider: it needs mode infer, "
            f"device cpu and no amp (got mode {settings.mode}, device {settings.device}"
            f"{', amp' if settings.amp else ''})"
        )
    if named:
        require_onnx()


def _export_onnx(spec: str, settings: BenchSettings, path: Path) -> Path:
    """``spec``'s model (random weights) as ONNX at the benchmark's batch and size, checked against eager."""

    model = build_benchmark_model(_base_spec(spec))
    export_module(model, path, "onnx", input_shape=(3, settings.size, settings.size), batch=settings.batch)
    return path


def _prepare_onnxruntime(spec: str, settings: BenchSettings, onnx_file: Path | None) -> Callable[[], None]:
    """A closure running ``onnx_file`` (the export of ``spec``) once in onnxruntime."""

    if onnx_file is None:
        raise ValueError(f"{spec}: no ONNX file to time; benchmark() exports it")
    session = onnx_session(onnx_file)  # as many threads as torch uses, so that the rows compare
    x = {INPUT_NAME: torch.randn(settings.batch, 3, settings.size, settings.size).numpy()}

    def step() -> None:
        session.run(None, x)

    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def _peak_memory_child(spec: str, settings: BenchSettings, queue: Any, onnx_file: Path | None = None) -> None:
    try:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        baseline = _status_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak (VmHWM) to the current RSS: import-time peaks do not count
        step = prepare_step(spec, settings, onnx_file)
        for _ in range(2):
            step()
        queue.put(_status_mb("VmHWM") - baseline)
    except BaseException as error:  # report, don't hang the parent
        queue.put(error)


def peak_memory_mb(spec: str, settings: BenchSettings, onnx_file: Path | None = None) -> float:
    """Peak memory of building and running ``spec``: CUDA max allocated, or CPU RSS growth in a fresh
    process."""
    if settings.device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step = prepare_step(spec, settings)
        for _ in range(2):
            step()
        _sync(settings.device)
        peak = torch.cuda.max_memory_allocated() - base
        del step
        return peak / 2**20
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_memory_child, args=(spec, settings, queue, onnx_file))
    process.start()
    value = queue.get()
    process.join()
    if isinstance(value, BaseException):
        raise value
    return float(value)


def benchmark(specs: Sequence[str], settings: BenchSettings) -> list[BenchResult]:
    """Time every model of ``specs`` interleaved; ratios are relative to the first."""
    if not specs:
        raise ValueError("give at least one model")
    for spec in specs:
        check_input_size(spec, settings.size)
    _check_onnxruntime(specs, settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory(prefix="senet-bench-") as folder:  # the ONNX files of +onnxruntime rows
        onnx_files = {
            spec: _export_onnx(spec, settings, Path(folder) / f"{n}.onnx")
            for n, spec in enumerate(specs)
            if spec.endswith(ONNXRUNTIME_SUFFIX)
        }
        return _time(specs, settings, onnx_files)


def _time(specs: Sequence[str], settings: BenchSettings, onnx_files: dict[str, Path]) -> list[BenchResult]:
    """:func:`benchmark`'s measurements, once the models can be built."""
    steps = [prepare_step(spec, settings, onnx_files.get(spec)) for spec in specs]
    for step in steps:  # warm-up: allocator, oneDNN primitive caches, compilation
        for _ in range(settings.warmup):
            step()
    _sync(settings.device)
    times: list[list[float]] = [[] for _ in specs]
    for _ in range(settings.repeats):
        for index, step in enumerate(steps):
            _sync(settings.device)
            start = time.perf_counter()
            step()
            _sync(settings.device)
            times[index].append(time.perf_counter() - start)
    del steps
    gc.collect()
    results = []
    for spec, samples in zip(specs, times, strict=True):
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else median
        memory = peak_memory_mb(spec, settings, onnx_files.get(spec)) if settings.memory else None
        results.append(
            BenchResult(spec, settings.batch, median * 1e3, p90 * 1e3, settings.batch / median, memory)
        )
    first = results[0]
    for result in results:
        result.ratios = {
            "latency": result.latency_ms / first.latency_ms,
            "p90": result.p90_ms / first.p90_ms,
            "images_per_s": result.images_per_s / first.images_per_s,
        }
        if result.peak_memory_mb is not None and first.peak_memory_mb:
            result.ratios["memory"] = result.peak_memory_mb / first.peak_memory_mb
    return results


def format_results(results: list[BenchResult], settings: BenchSettings) -> str:
    """A Markdown table (renders in docs, reads in a terminal)."""
    flags = [f for f in ("amp", "channels_last", "compile", "optimize") if getattr(settings, f)]
    title = (
        f"{settings.mode}, batch {settings.batch}, {settings.size}x{settings.size}, {settings.device}"
        f"{', ' + ', '.join(flags) if flags else ''}, "
        f"{torch.get_num_threads() if settings.device == 'cpu' else ''}"
        f"{' threads' if settings.device == 'cpu' else ''}, median of {settings.repeats}"
    )
    lines = [
        f"**{title.replace(', ,', ',')}**",
        "",
        "| model | latency ms | p90 ms | images/s | peak MB | latency ratio | memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        memory = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        memory_ratio = f"{r.ratios['memory']:.3f}" if "memory" in r.ratios else "-"
        lines.append(
            f"| {r.model} | {r.latency_ms:.1f} | {r.p90_ms:.1f} | {r.images_per_s:.1f} | {memory} | "
            f"{r.ratios['latency']:.3f} | {memory_ratio} |"
        )
    return "\n".join(lines)
