"""Training curves of several runs on one chart: the paper's Fig. 4 (SE network vs its baseline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def read_history(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run (``metrics.jsonl``)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; is it a run directory of `senet train`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, metric: str = "top1_err") -> Path:
    """Draw train (dashed) and val (solid) ``metric`` against epochs for every run; save to ``out``."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'senet[plot]' (or matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        history = read_history(run_dir)
        config_path = Path(run_dir) / "config.json"
        label = json.loads(config_path.read_text())["model"] if config_path.is_file() else Path(run_dir).name
        epochs = [r["epoch"] for r in history]
        (line,) = axes.plot(epochs, [r[f"val_{metric}"] for r in history], label=f"{label} val")
        axes.plot(
            epochs,
            [r[f"train_{metric}"] for r in history],
            "--",
            color=line.get_color(),
            label=f"{label} train",
        )
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric.replace("_", " ").replace("err", "error (%)"))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
