"""Where a training step's time goes: the top kernels of resnet50 and se_resnet50, side by side.

    PYTHONPATH=src python benchmarks/gpu_profile.py --device cuda            # AMP + channels_last, batch 256
    PYTHONPATH=src python benchmarks/gpu_profile.py --device cpu --size 32 --batch 4   # a smoke run

``senet bench --mode train``'s step (``senet.analysis.benchmark.prepare_step``; AMP and channels_last on
CUDA, as gpu_proof.sh benches it) under torch.profiler over a few steps after warm-up; prints one Markdown
table per model (device time per step of its top kernels, and the total), which is what
docs/benchmarks-gpu.md cites where a target is missed.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from senet.analysis.benchmark import BenchSettings, prepare_step


def profile_step(name: str, args: argparse.Namespace) -> list[tuple[str, float, int]]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    # senet bench's training step, as gpu_proof.sh times it (--amp --channels-last on CUDA)
    settings = BenchSettings(
        batch=args.batch, size=args.size, mode="train", device=args.device, amp=cuda, channels_last=cuda
    )
    step = prepare_step(name, settings)
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        total = event.device_time_total if cuda else event.self_cpu_time_total
        if total > 0 and (cuda or event.key.startswith("aten::") or event.key.startswith("senet::")):
            rows.append((event.key, total / args.steps / 1000, event.count // args.steps))
    return sorted(rows, key=lambda row: -row[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="resnet50,se_resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    what = "device" if args.device.startswith("cuda") else "CPU (self)"
    for name in args.models.split(","):
        rows = profile_step(name, args)
        print(
            f"\n**{name}: {what} time per training step, batch {args.batch} at {args.size}, "
            f"top {args.top}**\n"
        )
        print("| kernel | ms per step | calls per step |\n|---|---:|---:|")
        for key, ms, calls in rows[: args.top]:
            print(f"| `{key[:90]}` | {ms:.2f} | {calls} |")
        print(f"| all {len(rows)} kernels | {sum(ms for _, ms, _ in rows):.2f} | |")


if __name__ == "__main__":
    main()
