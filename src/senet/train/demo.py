"""The main job for a newcomer: an SE network and its plain twin trained on the embedded digits."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from senet.analysis.complexity import count_params
from senet.train.config import resolve_config
from senet.train.engine import train
from senet.train.rundir import prepare_run_dir


@dataclass
class DemoRow:
    model: str
    params: int
    val_top1_err: float
    best_val_top1_err: float
    train_time_s: float
    run_dir: Path


def run_demo(
    models: tuple[str, ...] = ("se_resnet20_cifar", "resnet20_cifar"),
    output: str | Path = "runs/demo",
    overwrite: bool = False,
    **overrides,
) -> list[DemoRow]:
    """Train each model with the ``demo`` preset (same seed, same data order) and return their results.

    ``overwrite`` replaces the runs of an earlier demo in ``output``; without it they are refused, before
    either model trains.
    """
    configs = [
        resolve_config("demo", model=model, output=str(Path(output) / model), **overrides) for model in models
    ]
    for config in configs:
        prepare_run_dir(config, None, overwrite)
    rows = []
    for config in configs:
        started = time.perf_counter()
        result = train(config, overwrite=overwrite)
        rows.append(
            DemoRow(
                config.model,
                count_params(result.model),
                result.history[-1]["val_top1_err"],
                result.best["val_top1_err"],
                time.perf_counter() - started,
                result.run_dir,
            )
        )
    return rows


def format_demo(rows: list[DemoRow]) -> str:
    lines = [f"{'model':<20} {'params':>8} {'val top-1 err':>14} {'best':>7} {'train time':>11}"]
    for row in rows:
        lines.append(
            f"{row.model:<20} {row.params / 1e6:>7.3f}M {row.val_top1_err:>13.2f}% {row.best_val_top1_err:>6.2f}%"
            f" {row.train_time_s:>10.1f}s"
        )
    return "\n".join(lines)
