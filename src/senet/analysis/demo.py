"""The main job for a newcomer: the smallest SE-vs-plain study, on the embedded digits, with its pictures.

``se_resnet20_cifar`` and its plain twin ``resnet20_cifar`` are trained with the ``demo`` recipe (16 x 16
digits, closer to their native 8 x 8, until both networks have converged) and three seeds each by the study
runner of ``senet ablate``, so that the printed comparison carries its seed-to-seed spread and a significance
test instead of one run's luck: on 360 validation images one image is 0.28 %. Then it checks that every run
converged, draws both networks' validation curves (mean and spread over the seeds) and what the SE network's
gates learned (the paper's Fig. 6 on the digits' classes, through ``senet analyze excitation``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senet.analysis.ablation import SIGNIFICANCE, Setting, mean_std, run_dir, run_settings, welch_p
from senet.analysis.excitation import analyze_excitation
from senet.train.config import resolve_config
from senet.train.plot import plot_seed_curves, read_history
from senet.train.rundir import lock_output_dir

DEMO_SEEDS = 3
DEMO_MODELS = ("se_resnet20_cifar", "resnet20_cifar")
# What "converged" means for the demo's verdict: the last epoch fits the training set, and validation has
# settled.
CONVERGED_TRAIN_ERR = 1.0  # %, the last epoch's training error
SETTLED_VAL_MOVE = 1.0  # points of validation error between the last two epochs


@dataclass
class DemoRow:
    model: str
    params: int
    val_top1_err: list[float]  # final epoch, one per seed
    run_dirs: list[Path]


@dataclass
class DemoResult:
    rows: list[DemoRow]
    unconverged: list[str]  # "run: why", for runs that did not converge
    curves: Path | None  # None without matplotlib
    excitation_run: Path
    excitation_files: list[Path]
    specificity: list[dict[str, Any]]  # the first and the last stage's block (senet analyze excitation)


def run_demo(
    models: tuple[str, ...] = DEMO_MODELS,
    output: str | Path = "runs/demo",
    overwrite: bool = False,
    seeds: int = DEMO_SEEDS,
    **overrides: Any,
) -> DemoResult:
    """Train each model ``seeds`` times (seeds 0..seeds-1, the same data order per seed) with the ``demo``
    preset, then draw the pictures into ``output``; finished runs in ``output`` are reused, unless
    ``overwrite`` trains them again."""
    output = Path(output)
    base = resolve_config("demo", **{**overrides, "model": models[0], "output": str(output)})
    settings = [Setting(model, model, {}) for model in models]
    with lock_output_dir(output, "senet demo"):  # one demo writes a folder at a time
        outcomes = run_settings(settings, base, seeds, output, overwrite=overwrite)
        rows = []
        for setting in settings:
            top1, _, params, _ = outcomes[setting.slug]
            run_dirs = [run_dir(output, setting.slug, base.seed + k) for k in range(seeds)]
            rows.append(DemoRow(setting.model, params, top1, run_dirs))
        plots = importlib.util.find_spec("matplotlib") is not None
        curves = None
        if plots:
            curves = plot_seed_curves({row.model: row.run_dirs for row in rows}, output / "curves.png")
        se_run = next((row.run_dirs[0] for row in rows if row.model.startswith("se_")), rows[0].run_dirs[0])
        stats, written = analyze_excitation(
            se_run, None, output / "excitation", max_images=None, device=base.device, figures=plots
        )
    blocks = stats.specificity()
    return DemoResult(rows, _unconverged(rows), curves, se_run, written, [blocks[0], blocks[-1]])


def _unconverged(rows: list[DemoRow]) -> list[str]:
    problems = []
    for row in rows:
        for directory in row.run_dirs:
            history = read_history(directory)
            last = history[-1]
            if last["train_top1_err"] > CONVERGED_TRAIN_ERR:
                problems.append(f"{directory.name}: last epoch's train error {last['train_top1_err']:.2f} %")
            if len(history) > 1:
                move = abs(last["val_top1_err"] - history[-2]["val_top1_err"])
                if move > SETTLED_VAL_MOVE:
                    problems.append(f"{directory.name}: val error moved {move:.2f} points in the last epoch")
    return problems


def format_demo(result: DemoResult) -> str:
    rows = result.rows
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
    if result.unconverged:
        lines.append(
            "not converged, so read the comparison with care (more --epochs): "
            f"{'; '.join(result.unconverged)}"
        )
    else:
        lines.append(
            f"converged: every run ended with train error <= {CONVERGED_TRAIN_ERR:g} % and its val error "
            f"moved <= {SETTLED_VAL_MOVE:g} point in its last epoch."
        )
    lines.append("")
    if result.curves is not None:
        lines.append(
            f"curves:     {result.curves} (val top-1 error per epoch, mean and spread over {seeds} seeds)"
        )
        figure = next((p for p in result.excitation_files if p.name == "excitation-classes.png"), None)
        lines.append(
            f"excitation: {figure} (gates per digit class, the paper's Fig. 6; {result.excitation_run.name})"
        )
    else:
        lines.append(
            "pictures: matplotlib is not installed; pip install 'senet[plot]' and run senet demo again "
            "(it reuses the trained runs) for the curves and the excitation figures"
        )
    for label, block in zip(("first stage", "last stage"), result.specificity, strict=True):
        lines.append(
            f"class specificity, {label} ({block['block']}, {block['channels']} channels): eta² "
            f"{block['eta_squared']:.3f} (chance {block['eta_squared_chance']:.3f}), mean |class - all| "
            f"{block['l1_specificity']:.3f}, gates {block['gate_mean']:.2f} ± {block['gate_std']:.2f}"
        )
    return "\n".join(lines)
