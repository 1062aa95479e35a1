"""``senet bench --report FILE`` (``make bench``): every performance figure of the project in one run.

Sections: the SE overhead (paper Sec. 4), peers (torchvision, timm), ``optimize_for_inference``, the
ImageNet-style input pipeline, and DDP scaling on CPU; on a CUDA machine the paper's GPU training step at
batch 256. Each table is produced by the same functions as ``senet bench`` and printed with its command.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from senet.analysis.benchmark import BenchSettings, benchmark, build_benchmark_model, format_results
from senet.data import build_data, build_loader

TV_LAYOUT = "@stride_in_1x1=False,stem_pool='torchvision'"


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"- CPU: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    ]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    lines.append(f"- Python {platform.python_version()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    return "\n".join(lines)


def _table(specs: list[str], settings: BenchSettings) -> tuple[str, list]:
    results = benchmark(specs, settings)
    flags = " ".join(
        f"--{k.replace('_', '-')}" for k in ("amp", "channels_last", "compile") if getattr(settings, k)
    )
    models = ",".join(s for s in specs if ":" not in s)
    vs = ",".join(s for s in specs if ":" in s)
    command = (
        f'senet bench --models "{models}"' + (f" --vs {vs}" if vs else "") + f" --batch {settings.batch} "
        f"--size {settings.size} --mode {settings.mode} --device {settings.device} "
        f"--repeats {settings.repeats}" + (f" {flags}" if flags else "")
    )
    return f"{format_results(results, settings)}\n\n`{command}`", results


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def loader_throughput(workers: int, images: int = 192, batch: int = 32) -> float:
    """Images/s of the ImageNet training pipeline (JPEG decode, random-size crop 224, flip, normalise)."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            for k in range(images if split == "train" else 4):  # every class in both splits
                path = Path(root, split, f"c{k % 4}", f"{k}.jpg")
                path.parent.mkdir(parents=True, exist_ok=True)
                # ImageNet's typical photo: about 500x375, smooth content compresses like real images
                pixels = (rng.random((47, 63, 3)) * 255).astype("uint8")
                Image.fromarray(pixels).resize((500, 375)).save(path, quality=90)
        spec = build_data(root)
        loader = build_loader(spec.train, batch_size=batch, train=True, workers=workers)
        for _ in loader:  # first pass: start workers, warm the page cache
            break
        start = time.perf_counter()
        count = sum(targets.numel() for _, targets, _ in loader)
        return count / (time.perf_counter() - start)


def ddp_throughput(
    world_size: int, model: str = "se_resnet50", batch: int = 16, steps: int = 4, size: int = 224
) -> float:
    """Training images/s of ``world_size`` CPU processes (gloo) sharing this machine's cores fairly."""
    threads = max(1, (os.cpu_count() or 1) // world_size)
    code = f"""
import os, time, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import senet
torch.set_num_threads({threads})
ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
if ddp:
    dist.init_process_group("gloo")
torch.manual_seed(0)
model = senet.create_model("{model}")
net = DistributedDataParallel(model) if ddp else model
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn({batch}, 3, {size}, {size}), torch.randint(0, 1000, ({batch},))
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
step()
start = time.perf_counter()
for _ in range({steps}):
    step()
elapsed = time.perf_counter() - start
if int(os.environ.get("RANK", "0")) == 0:
    print("IMAGES_PER_S", {batch} * {world_size} * {steps} / elapsed)
if ddp:
    dist.destroy_process_group()
"""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(code)
    command = [sys.executable, handle.name]
    if world_size > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise RuntimeError(f"DDP benchmark failed: {done.stderr[-500:]}")
    return float(
        next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("IMAGES_PER_S"))
    )


def saved_for_backward_mb(spec: str, batch: int = 4, size: int = 224) -> float:
    """MiB of tensors autograd keeps for the backward of one training forward (weights counted once).

    Deterministic, unlike peak RSS: the memory an SE block adds in training is what its backward needs."""
    model = build_benchmark_model(spec).train()
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.randn(batch, 3, size, size))
    return total / 2**20


def write_report(
    path: str | Path, *, device: str = "cpu", quick: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Run the benchmarks of ``device`` (cpu: overhead, peers, optimized inference, loader, DDP; cuda: the
    paper's GPU training step) and write the Markdown report to ``path``."""
    repeats = 3 if quick else 10
    sections = [
        f"# Benchmarks\n\nWritten by `make bench` (`senet bench --report {path}`). "
        f"Machine:\n\n{_machine()}\n",
        "Ratios are to the first row of each table; every table's models were timed interleaved in one "
        "process (median over repetitions after warm-up). Peak memory: growth of the peak RSS of a fresh "
        "process building and running the model (CPU) or CUDA's max allocated bytes.\n",
    ]

    def add(title: str, body: str) -> None:
        log(f"== {title}")
        sections.append(f"## {title}\n\n{body}\n")
        _write(path, sections)  # as it goes: a later failure keeps what was measured

    pairs = ["resnet50", "se_resnet50"]
    if device.startswith("cuda"):
        gpu = BenchSettings(device=device, mode="train", batch=256, repeats=repeats, warmup=5)
        tables = [
            _table(pairs, gpu)[0],
            _table(pairs, replace(gpu, amp=True, channels_last=True))[0],
            _table(pairs, replace(gpu, mode="infer", batch=1, repeats=5 * repeats, memory=False))[0],
            _table(pairs, replace(gpu, mode="infer", amp=True, channels_last=True, memory=False))[0],
        ]
        add(
            f"GPU ({torch.cuda.get_device_name()})",
            "The paper: forward+backward at batch 256 took 190 vs "
            "209 ms on 8 Titan X (ratio 1.10).\n\n" + "\n\n".join(tables),
        )
        return _write(path, sections)

    cpu = BenchSettings(device="cpu", repeats=repeats)
    overhead = [
        _table(pairs, replace(cpu, batch=b, repeats=repeats if b == 1 else max(3, repeats // 2)))[0]
        for b in (1, 32)
    ]
    overhead.append(_table(pairs, replace(cpu, mode="train", batch=32, repeats=max(3, repeats // 2)))[0])
    plain_saved, se_saved = (saved_for_backward_mb(spec) for spec in pairs)
    overhead.append(
        f"Tensors saved for the backward of one training forward, batch 4 at 224 "
        f"(`senet.analysis.report.saved_for_backward_mb`): resnet50 {plain_saved:.0f} MiB, se_resnet50 "
        f"{se_saved:.0f} MiB, ratio {se_saved / plain_saved:.3f}."
    )
    add(
        "SE overhead on CPU (fp32)",
        "The paper (Sec. 4): 164 vs 167 ms per image on CPU (ratio 1.018); targets: "
        "inference <= 1.02, training step <= 1.06, peak training memory <= 1.05.\n\n" + "\n\n".join(overhead),
    )

    peers = [
        _table(["resnet50" + TV_LAYOUT, "torchvision:resnet50"], replace(cpu, batch=b, memory=False))[0]
        for b in (1, 32)
    ]
    if _have("timm"):
        peers += [
            _table(["se_resnet50" + TV_LAYOUT, "timm:seresnet50"], replace(cpu, batch=b, memory=False))[0]
            for b in (1, 32)
        ]
    else:
        peers.append(
            "timm is not installed here (`pip install timm`), so the SE-ResNet-50 comparison was skipped."
        )
    add("Against torchvision and timm (eager fp32, same stride layout)", "\n\n".join(peers))

    optimized = [
        _table(
            ["se_resnet50", "se_resnet50+optimized"],
            replace(cpu, batch=b, memory=False, repeats=repeats if b == 1 else max(3, repeats // 2)),
        )[0]
        for b in (1, 32)
    ]
    add(
        "optimize_for_inference (BN folded, channels_last, compiled with freezing)",
        "Target: >= 1.5x faster than eager for se_resnet50 (latency ratio <= 0.67).\n\n"
        + "\n\n".join(optimized),
    )

    rows = ["| loader workers | images/s | images/s per worker |", "|---:|---:|---:|"]
    for workers in (1, 2):
        rate = loader_throughput(workers)
        rows.append(f"| {workers} | {rate:.0f} | {rate / workers:.0f} |")
    add(
        "ImageNet-style input pipeline",
        "JPEG decode (500x375), random-size crop 224, flip, normalise; "
        "`senet.analysis.report.loader_throughput(workers)`. Compare with the training throughput of "
        "se_resnet50 above (images/s of the train table).\n\n" + "\n".join(rows),
    )

    one, two = ddp_throughput(1), ddp_throughput(2)
    add(
        "DDP scaling on CPU (gloo)",
        f"se_resnet50 training, batch 16 per process, threads split evenly "
        "(`senet.analysis.report.ddp_throughput(N)`):\n\n"
        "| processes | images/s | speed-up |\n|---:|---:|---:|\n"
        f"| 1 | {one:.1f} | 1.00 |\n| 2 | {two:.1f} | {two / one:.2f} |",
    )

    return _write(path, sections)


def _write(path: str | Path, sections: list[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sections))
    return out
