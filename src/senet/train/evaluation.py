"""``senet eval``: evaluate trained runs, with the test-time fusion of the paper's ILSVRC 2017 entry.

Multi-crop (``ten_crop``), multi-scale (``scales``) and ensembles (several checkpoints) are all fused the
same way: by averaging softmax outputs over every (checkpoint, scale, crop) on the same validation images.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from senet.data import build_data, build_loader
from senet.train.checkpoint import BEST_NAME, load_checkpoint, load_weights_file, load_weights_into
from senet.train.config import TrainConfig
from senet.train.engine import build_model, predict_proba, resolve_device


@dataclass
class EvalResult:
    top1_err: float
    top5_err: float
    images: int
    per_class: list[dict[str, object]]


def topk_errors(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 error in % (top-k capped at the number of classes)."""
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices == targets[:, None]
    return 100 * (1 - top[:, 0].float().mean().item()), 100 * (1 - top.any(1).float().mean().item())


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
    """Top-1/top-5 error of one run or an ensemble of runs on ``data`` (default: the first run's data).

    ``weights="best"`` uses each run's best epoch instead of its last checkpoint.
    """
    if not checkpoints:
        raise ValueError("give at least one --checkpoint RUN_DIR")
    target_device = resolve_device(device)
    fused: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    classes: list[str] = []
    for path in checkpoints:
        checkpoint = load_checkpoint(path)
        config = TrainConfig.from_dict(checkpoint.meta["config"])
        source = data or config.data
        root = data_root if data is not None else config.data_root
        state = checkpoint.model_state()
        if weights == "best":
            state = load_weights_file(checkpoint.run_dir / BEST_NAME)
        for scale in scales or [None]:
            spec = build_data(
                source,
                root=root,
                image_size=config.image_size,
                eval_crop=scale,
                ten_crop=ten_crop,
                strict_data=config.strict_data,
            )
            if spec.num_classes != checkpoint.meta["num_classes"]:
                raise ValueError(
                    f"{path} was trained on {checkpoint.meta['num_classes']} classes; "
                    f"{source} has {spec.num_classes}"
                )
            model = build_model(config, spec)
            load_weights_into(model, state, str(path))
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
