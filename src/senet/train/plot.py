"""Training curves of several runs on one chart: the paper's Fig. 4 (SE network vs its baseline).

Classification runs (``senet train``) record ``train_`` and ``val_`` loss and top-1/top-5 errors; detection
runs (``senet detect train``) the training losses and the validation COCO metrics (``val_AP``, ``val_AP50``,
...). Each metric is drawn for whichever of the two splits a run records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def read_history(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run (``metrics.jsonl``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; is it a run directory of `senet train`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# What `senet plot --metric` offers: classification's errors and loss, detection's COCO metrics.
METRICS = ("top1_err", "top5_err", "loss", "AP", "AP50", "AP75", "APs", "APm", "APl")


def require_matplotlib():
    """matplotlib, or a one-line error naming the install (it is an optional dependency)."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'senet[plot]' (or matplotlib)") from None
    return matplotlib


def pyplot():
    """matplotlib's pyplot on the Agg backend (no screen needed), or a one-line error naming the install."""
    require_matplotlib().use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_seed_curves(groups: Mapping[str, Sequence[str | Path]], out: str | Path) -> Path:
    """One line per group of runs (e.g. one network trained with several seeds): the mean validation top-1
    error per epoch, with a band of +-1 standard deviation over the runs, and the mean training error dashed.
    The error axis is logarithmic above 1 %, so the first epochs' and the last epochs' errors both show."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for label, run_dirs in groups.items():
        histories = [read_history(run_dir) for run_dir in run_dirs]
        epochs = min(len(history) for history in histories)
        x = np.arange(1, epochs + 1)
        val = np.array([[r["val_top1_err"] for r in history[:epochs]] for history in histories])
        train = np.array([[r["train_top1_err"] for r in history[:epochs]] for history in histories])
        mean, std = val.mean(0), val.std(0, ddof=1) if len(histories) > 1 else np.zeros(epochs)
        (line,) = axes.plot(x, mean, "-o", markersize=3, label=f"{label} val (mean of {len(histories)})")
        axes.fill_between(x, np.maximum(mean - std, 0), mean + std, color=line.get_color(), alpha=0.2)
        axes.plot(x, train.mean(0), "--", color=line.get_color(), alpha=0.7, label=f"{label} train")
    axes.set_yscale("symlog", linthresh=1.0)
    ticks = [0, 0.5, 1, 2, 5, 10, 20, 50, 100]
    axes.set_yticks(ticks, [f"{t:g}" for t in ticks])
    axes.set_xlabel("epoch")
    axes.set_ylabel("top-1 error (%)")
    axes.set_title("Top-1 error per epoch\nvalidation: mean and ±1 std over seeds; training: dashed, mean")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    return save_figure(figure, out)


def save_figure(figure, out: str | Path) -> Path:
    """Write ``figure`` to ``out`` (its folder made) and close it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    pyplot().close(figure)
    return out


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, metric: str | None = None) -> Path:
    """Draw train (dashed) and val (solid) ``metric`` against epochs for every run; save to ``out``.

    ``metric`` None: ``top1_err`` for classification runs, ``AP`` for detection runs (by the first run). A run
    that records ``metric`` for neither split is a one-line ``ValueError``."""
    plt = pyplot()
    histories = [(run_dir, read_history(run_dir)) for run_dir in run_dirs]
    if metric is None:
        first = histories[0][1][0] if histories and histories[0][1] else {}
        metric = "top1_err" if "val_top1_err" in first or not first else "AP"
    figure, axes = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for run_dir, history in histories:
        label = _label(Path(run_dir))
        epochs = [r["epoch"] for r in history]
        splits = [s for s in ("val", "train") if all(f"{s}_{metric}" in r for r in history)]
        if history and not splits:
            recorded = sorted(
                {k.split("_", 1)[1] for r in history for k in r if k.startswith(("train_", "val_"))}
            )
            raise ValueError(
                f"{run_dir} records no {metric!r} (it has {', '.join(recorded)}); choose another --metric"
            )
        color = None
        for split in splits:
            (line,) = axes.plot(
                epochs,
                [r[f"{split}_{metric}"] for r in history],
                "-" if split == "val" else "--",
                color=color,
                label=f"{label} {split}",
            )
            color = line.get_color()
    axes.set_xlabel("epoch")
    axes.set_ylabel(
        metric.replace("_", " ").replace("err", "error (%)")
        if "err" in metric or metric == "loss"
        else f"COCO {metric}"
    )
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, out)


def _label(run_dir: Path) -> str:
    """A run's model (classification) or ``faster_rcnn_<backbone>`` (detection), else its folder's name."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return run_dir.name
    config = json.loads(config_path.read_text())
    if "backbone" in config:
        return f"faster_rcnn_{config['backbone']}"
    return str(config.get("model", run_dir.name))
