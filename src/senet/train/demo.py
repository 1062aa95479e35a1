"""The main job for a newcomer: the smallest SE-vs-plain study, on the embedded digits.

``se_resnet20_cifar`` and its plain twin ``resnet20_cifar`` are trained with the ``demo`` recipe and three seeds
each by the study runner of ``senet ablate`` (senet.analysis.ablation), so that the printed comparison carries
its seed-to-seed spread and a significance test instead of one run's luck: on 360 validation images one image
is 0.28 %, and single runs of the two networks land in either order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from senet.analysis.ablation import SIGNIFICANCE, Setting, mean_std, run_settings, welch_p
from senet.train.config import resolve_config
from senet.train.rundir import lock_output_dir

DEMO_SEEDS = 3
DEMO_EPOCHS = 4  # 2 networks x 3 seeds in about the time one 8-epoch pair took


@dataclass
class DemoRow:
    model: str
    params: int
    val_top1_err: list[float]  # final epoch, one per seed
    run_dirs: list[Path]


def run_demo(
    models: tuple[str, ...] = ("se_resnet20_cifar", "resnet20_cifar"),
    output: str | Path = "runs/demo",
    overwrite: bool = False,
    seeds: int = DEMO_SEEDS,
    **overrides,
) -> list[DemoRow]:
    """Train each model ``seeds`` times (seeds 0..seeds-1, the same data order per seed) with the ``demo``
    preset; finished runs in ``output`` are reused, unless ``overwrite`` trains them again."""
    base = resolve_config("demo", **{"epochs": DEMO_EPOCHS, **overrides, "output": str(output)})
    settings = [Setting(model, model, {}) for model in models]
    with lock_output_dir(output, "senet demo"):  # one demo writes a folder at a time
        outcomes = run_settings(settings, base, seeds, Path(output), overwrite=overwrite)
    rows = []
    for setting in settings:
        top1, _, params, _ = outcomes[setting.slug]
        run_dirs = [Path(output) / "runs" / f"{setting.slug}-seed{base.seed + k}" for k in range(seeds)]
        rows.append(DemoRow(setting.model, params, top1, run_dirs))
    return rows


def format_demo(rows: list[DemoRow]) -> str:
    seeds = len(rows[0].val_top1_err)
    lines = [f"{'model':<20} {'params':>8}  {'val top-1 err, mean ± std':>26}  per seed"]
    for row in rows:
        mean, spread = mean_std(row.val_top1_err)
        per_seed = " ".join(f"{v:.2f}" for v in row.val_top1_err)
        lines.append(
            f"{row.model:<20} {row.params / 1e6:>7.3f}M  {mean:>14.2f}% ± {spread:.2f}%{'':>6}{per_seed}"
        )
    if len(rows) == 2:
        (a, b), p = rows, welch_p(rows[0].val_top1_err, rows[1].val_top1_err)
        delta = mean_std(a.val_top1_err)[0] - mean_std(b.val_top1_err)[0]
        if p is None:
            verdict = (
                f"with {seeds} seed(s) per network no test is possible: run more seeds before reading it"
            )
        elif p < SIGNIFICANCE:
            verdict = f"Welch's t-test p = {p:.3f}: beyond seed-to-seed noise"
        else:
            verdict = f"Welch's t-test p = {p:.3f}: within seed-to-seed noise, so no winner on this data"
        lines.append(f"\n{a.model} - {b.model}: {delta:+.2f} points of top-1 error; {verdict}.")
    return "\n".join(lines)
