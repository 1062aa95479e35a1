"""Issue 12's figures: the loader alone, the training step alone and `senet train` end to end, per loader.

    PYTHONPATH=src python benchmarks/input_pipeline.py --device cuda            # on a GPU machine, ~4 minutes
    PYTHONPATH=src python benchmarks/input_pipeline.py --device cpu --images 16 --batch 4 --size 32 \
        --workers 1 --epochs 1 --no-amp --models resnet18 --shards              # a smoke run of this script

It writes a folder of ImageNet-sized JPEGs (500x375, smooth content that compresses like photos) in a
temporary directory, then prints one Markdown table with images/s: the loader alone (decode and augment, CPU
workers vs the device pipeline; with --shards also from a packed copy of the folder), `senet bench`'s training
step on random tensors, and `senet train` end to end (the last epoch of a short run, so that workers, cuDNN's
autotuning and the page cache are warm), with the machine. On CUDA the CPU loader sends uint8 batches (a
quarter of float32's bytes) that the device converts and normalises.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_folder(root: Path, images: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("val", classes * 4)):
        for k in range(count):
            path = root / split / f"c{k % classes}" / f"{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (rng.random((47, 63, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).resize((500, 375)).save(path, quality=90)


def loader_alone(root: Path, loader: str, args: argparse.Namespace) -> float:
    """Images/s of one epoch of the training loader of ``root`` (an image folder or a shard index), images
    ready on the device."""
    from senet.runtime import Dist
    from senet.train.config import TrainConfig
    from senet.train.engine import build_loaders, build_run_data

    config = TrainConfig(data=str(root), image_size=args.size, workers=args.workers, loader=loader,
                         channels_last=True, batch_size=args.batch)  # fmt: skip
    device = torch.device(args.device)
    train_loader, _ = build_loaders(config, Dist(), device, build_run_data(config), args.batch)
    train_loader.sampler.set_epoch(0)
    for _ in train_loader:  # start the workers
        break
    train_loader.sampler.set_epoch(1)
    start, count = time.perf_counter(), 0
    for images, targets, _ in train_loader:
        images = images.to(device, non_blocking=True)
        count += targets.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def step_alone(model: str, args: argparse.Namespace) -> float:
    command = [sys.executable, "-m", "senet", "bench", "--models", model, "--batch", str(args.batch),
               "--size", str(args.size), "--mode", "train", "--device", args.device, "--repeats", "10",
               "--no-memory", "--format", "json",
               *(["--amp", "--channels-last"] if args.amp else [])]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = json.loads(result.stdout)
    row = rows[0] if isinstance(rows, list) else rows
    return float(row["images_per_s"])


def end_to_end(root: Path, model: str, loader: str, args: argparse.Namespace) -> float:
    from senet.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as output:
        config = TrainConfig(model=model, data=str(root), image_size=args.size, batch_size=args.batch,
                             epochs=args.epochs, workers=args.workers, loader=loader, amp=args.amp,
                             channels_last=args.amp, device=args.device, output=output, log_interval=0,
                             lr=0.1, schedule="cosine")  # fmt: skip
        result = train(config)
    return float(result.history[-1]["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--models", default="resnet50,se_resnet50")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32, no channels_last")
    parser.add_argument("--shards", action="store_true", help="also time the loaders reading a packed copy")
    args = parser.parse_args()
    loaders = ("cpu", "gpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        started = time.perf_counter()
        write_folder(root, args.images)
        print(f"wrote {args.images} JPEGs (500x375) in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        sources = {"": root}
        if args.shards:
            from senet.data import pack_folder

            sources[", shards"] = pack_folder(
                root, Path(tmp) / "shards", images_per_shard=max(1, args.images // 4)
            )
        alone = {
            (loader, name): loader_alone(path, loader, args)
            for name, path in sources.items()
            for loader in loaders
        }
        rows = []
        for model in args.models.split(","):
            step = step_alone(model, args)
            trained = {loader: end_to_end(root, model, loader, args) for loader in loaders}
            rows.append((model, step, trained))
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    print(f"\n{gpu}, {os.cpu_count()} CPU cores, {args.workers} loader workers, torch {torch.__version__}, "
          f"batch {args.batch} at {args.size}{', AMP + channels_last' if args.amp else ''}, "
          f"{args.images} training images, epoch {args.epochs} of {args.epochs}\n")  # fmt: skip
    print("| images/s | " + " | ".join(f"{m}" for m, _, _ in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    print("| training step alone (`senet bench`) | " + " | ".join(f"{s:,.0f}" for _, s, _ in rows) + " |")
    for loader in loaders:
        cells = " | ".join(f"{t[loader]:,.0f} ({100 * t[loader] / s:.0f} %)" for _, s, t in rows)
        print(f"| `senet train --loader {loader}` end to end | {cells} |")
    for (loader, name), rate in alone.items():
        print(f"| the {loader} loader alone{name} | {rate:,.0f} |" + " |" * (len(rows) - 1))


if __name__ == "__main__":
    main()
