"""Evaluating classifiers: :func:`evaluate` (what training validates with) and :func:`predict_proba`, and
``senet eval``, with the test-time fusion of the paper's ILSVRC 2017 entry.

Multi-crop (``ten_crop``), multi-scale (``scales``) and ensembles (several checkpoints) are all fused the
same way: by averaging softmax outputs over every (checkpoint, scale, crop) on the same validation images.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from senet.data import build_data, build_loader
from senet.runtime import ONE_PROCESS, Dist, autocast, progress_bar, resolve_device
from senet.train.config import TrainConfig
from senet.train.control import RunControl, stoppable
from senet.train.feed import to_device
from senet.train.meters import TopkMeter, topk_hits
from senet.weights.pretrained import load_pretrained


def _scores(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    amp: bool,
    channels_last: bool,
) -> tuple[torch.Tensor, bool, torch.Tensor]:
    """The batch's logits, or for multi-crop batches (N, K, C, H, W) the mean softmax over the K crops (then
    True), and its targets, on ``device``."""
    images, targets = to_device(images, targets, device, channels_last)
    with autocast(device, amp):
        if images.dim() == 5:
            n, k = images.shape[:2]
            logits = model(images.flatten(0, 1)).float()
            return logits.softmax(-1).view(n, k, -1).mean(1), True, targets
        return model(images).float(), False, targets


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    ctx: Dist = ONE_PROCESS,
    prefix: str = "val",
    log_interval: int = 0,
    control: RunControl | None = None,
) -> dict[str, float]:
    """Loss and top-1/top-5 error (in %) over ``loader``, summed over all processes of a distributed run.

    ``amp``: autocast the forward pass (faster on GPUs, but low-precision logits can tie, so a run validates
    in float32 whatever its ``amp``). With ``control``, a stop signal ends evaluation early
    (:class:`senet.train.control.StopRequested`) on every rank.
    """
    model.eval()
    meter = TopkMeter(device)
    batches = progress_bar(loader, f"{prefix}", log_interval, ctx.is_main)
    for images, targets, skipped in stoppable(batches, len(loader), control):
        meter.skipped += skipped
        if targets.numel() == 0:
            continue
        scores, are_probs, targets = _scores(model, images, targets, device, amp, channels_last)
        if are_probs:
            loss = nn.functional.nll_loss(scores.clamp_min(1e-12).log(), targets)
        else:
            loss = nn.functional.cross_entropy(scores, targets)
        meter.add(loss, scores, targets)
    return meter.result(ctx, prefix)


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax outputs (averaged over crops for multi-crop batches) and targets of a whole loader, on CPU."""
    model.eval()
    probs, labels = [], []
    for images, targets, _ in progress_bar(loader, "predict", 0, True):
        if targets.numel() == 0:
            continue
        scores, are_probs, targets = _scores(model, images, targets, device, amp, channels_last)
        probs.append((scores if are_probs else scores.softmax(-1)).cpu())
        labels.append(targets.cpu())
    return torch.cat(probs), torch.cat(labels)


@dataclass
class EvalResult:
    top1_err: float
    top5_err: float
    images: int
    per_class: list[dict[str, object]]


def topk_errors(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 error in % (top-k capped at the number of classes)."""
    # training's hit counts, then one division in Python floats: what training logs, to the last bit
    count = len(targets)
    if count == 0:
        return math.nan, math.nan
    top1, top5 = topk_hits(probs, targets)
    return 100 * (1 - int(top1) / count), 100 * (1 - int(top5) / count)


def load_with_data_source(
    path: str | Path, data: str | None, data_root: str | None, weights: str
) -> tuple[torch.nn.Module, str, str | None, dict, TrainConfig | None]:
    """A trained network (eval mode) and what to evaluate it on, as ``senet eval`` decides it: a run directory
    (or one of its checkpoint JSONs) on its own data unless ``data`` is given, with its data's transform; a
    weights file only on given ``data``, with its recorded preprocessing.

    Returns the model, the data source and root, ``build_data`` options (all but the crop) and the run's
    config (None for a weights file)."""
    is_run = Path(path).is_dir() or Path(path).suffix == ".json"
    model = load_pretrained(path, weights=weights if is_run else "last").eval()
    info = model.pretrained_info
    if is_run:
        config = TrainConfig.from_dict(info.source["config"])
        source, root = data or config.data, data_root if data is not None else config.data_root
        return model, source, root, dict(image_size=config.image_size, strict_data=config.strict_data), config
    if data is None:
        raise ValueError(f"{path} is a weights file: give the data to evaluate it on (--data IMAGE_FOLDER)")
    options = dict(image_size=None, strict_data=False, preprocessing=info.preprocessing)
    return model, data, data_root, options, None


def evaluate_runs(
    checkpoints: Sequence[str | Path],
    data: str | None = None,
    *,
    data_root: str | None = None,
    scales: Sequence[int] | None = None,
    ten_crop: bool = False,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    weights: str = "last",
) -> EvalResult:
    """Top-1/top-5 error of one network or an ensemble on ``data`` (default: the first run's data).

    Each checkpoint is a run directory of ``senet train`` (``weights="best"``: its best epoch instead of its
    last checkpoint) or a senet weights file (``senet convert``), loaded through
    :func:`senet.load_pretrained`.
    A weights file is evaluated on an image folder with its own recorded preprocessing (converted timm weights
    as timm evaluates them); a run with its data's evaluation transform at the run's own crop (``eval_crop``:
    the figure its validation logged), unless ``scales`` names others.
    """

    if not checkpoints:
        raise ValueError("give at least one --checkpoint RUN_DIR|FILE")
    target_device = resolve_device(device)
    fused: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    classes: list[str] = []
    for path in checkpoints:
        model, source, root, options, config = load_with_data_source(path, data, data_root, weights)
        info = model.pretrained_info
        for scale in scales or [config.eval_crop if config is not None else None]:
            spec = build_data(source, root=root, eval_crop=scale, ten_crop=ten_crop, **options)
            if spec.num_classes != info.num_classes:
                raise ValueError(
                    f"{path} predicts {info.num_classes} classes; {source} has {spec.num_classes}"
                )
            loader = build_loader(
                spec.val,
                batch_size=batch_size,
                train=False,
                workers=workers,
                pin_memory=target_device.type == "cuda",
            )
            probs, labels = predict_proba(model.to(target_device), loader, target_device)
            if targets is not None and not torch.equal(labels, targets):
                raise ValueError(f"{path} at scale {scale} saw other validation images; cannot fuse")
            fused = probs if fused is None else fused + probs
            targets, classes = labels, spec.classes
    assert fused is not None and targets is not None
    top1, top5 = topk_errors(fused, targets)
    per_class = []
    for index, name in enumerate(classes):
        mask = targets == index
        if mask.any():
            c1, c5 = topk_errors(fused[mask], targets[mask])
            per_class.append({"class": name, "images": int(mask.sum()), "top1_err": c1, "top5_err": c5})
    return EvalResult(top1, top5, int(targets.numel()), per_class)


def write_per_class(result: EvalResult, path: str | Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["class", "images", "top1_err", "top5_err"])
        writer.writeheader()
        writer.writerows(result.per_class)
