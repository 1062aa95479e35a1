"""Rerun the paper's ablations (Sec. 6, Tables 10-16) on any data: ``senet ablate``.

A study is a list of settings (build options of one SE network, or its plain twin); every setting is trained
with every seed under the same recipe and data, each run in its own run directory under ``OUTPUT/runs``. A
finished run is not trained again and a killed one continues where it stopped (``train(resume="auto")``), so
rerunning the same command resumes a study. The report puts the paper's own figures beside ours and, with
three or more seeds, says which differences from the study's reference setting are beyond seed noise
(Welch's t-test, p < 0.05) rather than letting single runs be over-read.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from senet.analysis.complexity import count_macs, count_params
from senet.analysis.paper_ablations import STUDIES, PaperRow
from senet.models.registry import create_model, list_models, model_info
from senet.train.config import TrainConfig, boolean_fields, boolean_model_options, parse_model_options
from senet.train.engine import build_run_data
from senet.train.engine import train as train_run
from senet.train.plot import pyplot, save_figure
from senet.train.rundir import lock_output_dir

STUDY_NAMES: tuple[str, ...] = (*STUDIES, "all")
SIGNIFICANCE = 0.05
MIN_SEEDS_FOR_CLAIMS = 3
# The ResNet ablations remove the excitation's FC biases (Sec. 6); a study uses that unless told otherwise.
PAPER_BASE_OPTIONS: dict[str, Any] = {"se_bias": False}


@dataclass(frozen=True)
class Setting:
    """One configuration of a study: which model with which build options (and training overrides)."""

    name: str  # the paper's row label, e.g. "r = 16"
    model: str
    options: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    paper: PaperRow | None = None
    cell: str = ""  # the --grid values it was crossed with, e.g. "lr=0.05"

    @property
    def label(self) -> str:
        return f"{self.name} [{self.cell}]" if self.cell else self.name

    @property
    def slug(self) -> str:
        """A folder name for its runs: the options spelled out, so a changed study never reuses a run."""
        parts = [self.model] + [f"{k}={_spell(v)}" for k, v in sorted({**self.options, **self.train}.items())]
        return re.sub(r"[^A-Za-z0-9_.=,+-]", "", "-".join(parts))


@dataclass
class SettingResult:
    setting: Setting
    top1: list[float]
    top5: list[float]
    params: int
    gflops: float
    p_value: float | None = None  # Welch's t-test against the reference setting (None: not computed)


@dataclass
class StudyReport:
    study: str
    table: str
    reference: str
    results: list[SettingResult]
    notes: list[str]


def _spell(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def plain_twin(model: str) -> str | None:
    """``se_resnet50`` -> ``resnet50``: the same network without SE blocks, where one is registered."""
    name = model_info(model).name
    twin = name[3:] if name.startswith("se_") else None
    return twin if twin in list_models() else None


def _stage_rows(model: str, paper: tuple[PaperRow, ...]) -> tuple[PaperRow, ...]:
    """Table 13's rows for ResNet-50's family; for another family, one row per stage it has, plus all."""
    if _accepts(model, {"se_stages": ("conv2_x",)}):
        return paper
    stages = [s for s in range(1, 7) if _accepts(model, {"se_stages": (s,)})]
    plain = [row for row in paper if row.plain]
    alone = [PaperRow(f"SE stage {s}", {"se_stages": (s,)}, math.nan, math.nan) for s in stages]
    return (*plain, *alone, next(row for row in paper if row.label == "SE All"))


def _accepts(model: str, options: dict[str, Any]) -> bool:
    import torch

    try:
        with torch.device("meta"):
            create_model(model, **options)
    except (ValueError, TypeError):
        return False
    return True


def study_settings(
    model: str,
    study: str,
    base_options: dict[str, Any] | None = None,
    grid: Sequence[tuple[str, Sequence[Any], bool]] = (),
) -> tuple[dict[str, list[Setting]], list[str]]:
    """The settings of ``study`` (or of every study, ``"all"``) for ``model``, keyed by study name, and notes
    on rows left out (a setting the family does not define, a plain twin that is not registered).

    ``base_options`` apply to every SE setting (default: the paper's, SE without biases); ``grid`` is
    ``(key, values, is_build_option)``: every setting is crossed with every combination of values.
    """
    if study not in STUDY_NAMES:
        raise ValueError(f"unknown study {study!r}; choose one of {', '.join(STUDY_NAMES)}")
    info = model_info(model)
    if not _accepts(info.name, {"se_reduction": 16}):
        raise ValueError(f"{info.name} has no SE blocks to study; give an SE network, e.g. se_{info.name}")
    base = {**PAPER_BASE_OPTIONS, **(base_options or {})}
    twin = plain_twin(info.name)
    notes: list[str] = []
    studies: dict[str, list[Setting]] = {}
    for name in STUDIES if study == "all" else (study,):
        paper = STUDIES[name]
        rows = _stage_rows(info.name, paper.rows) if name == "stages" else paper.rows
        settings = []
        for row in rows:
            if row.plain:
                if twin is None:
                    notes.append(f"{paper.table} {row.label}: {info.name} has no registered plain twin")
                    continue
                setting = Setting(f"no SE ({row.label} in the paper)", twin, {}, paper=row)
            else:
                setting = Setting(row.label, info.name, {**base, **row.options}, paper=row)
                if not _accepts(setting.model, setting.options):
                    notes.append(f"{paper.table} {row.label}: not defined for {info.name}, left out")
                    continue
            settings.append(setting)
        studies[name] = [crossed for setting in settings for crossed in _cross(setting, grid)]
    return studies, notes


def _cross(setting: Setting, grid: Sequence[tuple[str, Sequence[Any], bool]]) -> list[Setting]:
    if not grid:
        return [setting]
    crossed = []
    for values in itertools.product(*(values for _, values, _ in grid)):
        options, train = dict(setting.options), dict(setting.train)
        for (key, _, build), value in zip(grid, values, strict=True):
            if build and setting.paper is not None and setting.paper.plain and key.startswith("se_"):
                continue  # an SE option means nothing to the plain twin
            (options if build else train)[key] = value
        cell = ", ".join(f"{k}={_spell(v)}" for (k, _, _), v in zip(grid, values, strict=True))
        crossed.append(replace(setting, cell=cell, options=options, train=train))
    return crossed


def run_dir(output: Path, slug: str, seed: int) -> Path:
    """Where :func:`run_settings` trains setting ``slug`` with ``seed``."""
    return Path(output) / "runs" / f"{slug}-seed{seed}"


def run_settings(
    settings: Sequence[Setting],
    base_config: Any,
    seeds: int,
    output: Path,
    train: Callable[..., Any] | None = None,
    overwrite: bool = False,
) -> dict[str, tuple[list[float], list[float], int, float]]:
    """Train every setting with seeds ``base.seed + k`` (k < ``seeds``); returns per slug the final-epoch
    top-1 and top-5 errors per seed, the parameter count and GFLOPs (at the data's image size).

    Each run lives in ``output/runs/<slug>-seed<seed>`` (:func:`run_dir`): a finished one is read back, a
    killed one resumed, unless ``overwrite`` trains every run afresh."""
    train = train or train_run
    spec = build_run_data(base_config)  # the image size and channels the FLOPs are counted at
    outcomes: dict[str, tuple[list[float], list[float], int, float]] = {}
    for setting in settings:  # a setting shared by studies ("all") trains once: same slug
        if setting.slug in outcomes:
            continue
        top1, top5, params, gflops = [], [], 0, math.nan
        for k in range(seeds):
            values = {**base_config.to_dict(), **setting.train}
            values.update(
                model=setting.model,
                model_options={**base_config.model_options, **setting.options},
                seed=base_config.seed + k,
                output=str(run_dir(output, setting.slug, base_config.seed + k)),
            )
            config = TrainConfig.from_dict(values)
            result = train(config, resume=None, overwrite=True) if overwrite else train(config, resume="auto")
            final = result.history[-1]
            top1.append(float(final["val_top1_err"]))
            top5.append(float(final["val_top5_err"]))
            params = count_params(result.model)
            gflops = count_macs(result.model, spec.image_size, spec.in_chans) / 1e9
        outcomes[setting.slug] = (top1, top5, params, gflops)
    return outcomes


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances); None with fewer than 2 values on a side, and
    1.0 when both sides are constant and equal (no evidence of a difference)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    if max(a) == min(a) and max(b) == min(b):
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def summarize(
    studies: dict[str, list[Setting]], outcomes: dict[str, tuple[list[float], list[float], int, float]], notes
) -> list[StudyReport]:
    reports = []
    for name, settings in studies.items():
        paper = STUDIES[name]
        results = [SettingResult(s, *outcomes[s.slug]) for s in settings]
        for reference in (r for r in results if r.setting.name == paper.reference):
            for result in results:  # each setting against the reference of its own grid cell
                if result is not reference and result.setting.cell == reference.setting.cell:
                    result.p_value = welch_p(result.top1, reference.top1)
        reports.append(StudyReport(name, paper.table, paper.reference, results, notes))
    return reports


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, spread


def _error_cell(values: Sequence[float]) -> str:
    mean, spread = mean_std(values)
    return f"{mean:.2f} ± {spread:.2f}" if len(values) > 1 else f"{mean:.2f}"


def _verdict(result: SettingResult, reference: SettingResult | None, seeds: int) -> str:
    if reference is None or result is reference:
        return "reference" if result is reference else ""
    delta = mean_std(result.top1)[0] - mean_std(reference.top1)[0]
    if seeds < MIN_SEEDS_FOR_CLAIMS or result.p_value is None:
        return f"{delta:+.2f} ({seeds} seed(s), fewer than {MIN_SEEDS_FOR_CLAIMS}: no claim)"
    beyond = result.p_value < SIGNIFICANCE
    return f"{delta:+.2f}, p = {result.p_value:.3f}: {'beyond seed noise' if beyond else 'within seed noise'}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


COLUMNS = ("setting", "model", "top-1 err", "top-5 err", "params", "GFLOPs", "vs reference",
           "paper top-1", "paper top-5", "paper params (M)", "paper GFLOPs")  # fmt: skip


def table_rows(report: StudyReport, seeds: int) -> list[list[str]]:
    references = {r.setting.cell: r for r in report.results if r.setting.name == report.reference}
    rows = []
    for result in report.results:
        reference = references.get(result.setting.cell)
        paper = result.setting.paper
        rows.append(
            [
                result.setting.label,
                result.setting.model,
                _error_cell(result.top1),
                _error_cell(result.top5),
                f"{result.params:,}",
                _fmt(result.gflops, ".4f"),
                _verdict(result, reference, seeds),
                _fmt(paper.top1 if paper else None, ".2f"),
                _fmt(paper.top5 if paper else None, ".2f"),
                _fmt(paper.params_m if paper else None, ".1f"),
                _fmt(paper.gflops if paper else None, ".2f"),
            ]
        )
    return rows


def write_report(reports: list[StudyReport], output: Path, seeds: int, header: str) -> list[Path]:
    """``OUTPUT/<study>.md``, ``.csv`` and ``.png`` per study, and ``OUTPUT/ablation.md`` with them all."""
    written = []
    sections = [header]
    for report in reports:
        rows = table_rows(report, seeds)
        lines = [f"## {report.study} ({report.table}; reference: {report.reference})", ""]
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        markdown = "\n".join(lines) + "\n"
        sections.append(markdown)
        (output / f"{report.study}.md").write_text(header + "\n" + markdown)
        with open(output / f"{report.study}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*COLUMNS, "top-1 per seed", "p-value"])
            for row, result in zip(rows, report.results, strict=True):
                writer.writerow(
                    [*row, " ".join(f"{v:.2f}" for v in result.top1), _fmt(result.p_value, ".4f")]
                )
        written += [output / f"{report.study}.md", output / f"{report.study}.csv", _plot(report, output)]
    notes = sorted(set(note for report in reports for note in report.notes))
    if notes:
        sections.append("Left out: " + "; ".join(notes) + ".\n")
    (output / "ablation.md").write_text("\n".join(sections))
    return [output / "ablation.md", *written]


def _plot(report: StudyReport, output: Path) -> Path:
    """Per setting, our mean top-1 error (whiskers: std over seeds) and, beside it on its own axis, the
    paper's figure for that setting; the reference setting's bar is orange."""
    plt = pyplot()
    labels = [r.setting.label for r in report.results]
    means, spreads = zip(*(mean_std(r.top1) for r in report.results), strict=True)
    papers = [r.setting.paper.top1 if r.setting.paper else None for r in report.results]
    seeds = max(len(r.top1) for r in report.results)
    x, width = list(range(len(labels))), 0.38
    colours = ["tab:orange" if r.setting.name == report.reference else "tab:blue" for r in report.results]
    figure, ours = plt.subplots(figsize=(max(6.0, 1.8 + 1.2 * len(labels)), 4.4), layout="constrained")
    bars = ours.bar([i - width / 2 for i in x], means, width, yerr=spreads, capsize=4, color=colours)
    ours.set_ylabel("ours: val top-1 error (%)")
    handles, names = [bars], [f"ours: mean ± std of {seeds} seed(s); orange: the reference"]
    if any(value is not None for value in papers):
        paper_axis = ours.twinx()
        shown = [(i, value) for i, value in zip(x, papers, strict=True) if value is not None]
        paper_bars = paper_axis.bar(
            [i + width / 2 for i, _ in shown], [v for _, v in shown], width, color="0.75", hatch="//",
            edgecolor="0.35",
        )  # fmt: skip
        paper_axis.set_ylabel("paper: top-1 error (%)")
        handles.append(paper_bars)
        names.append(f"paper ({report.table}, SE-ResNet-50 on ImageNet)")
    ours.set_ylim(bottom=0)
    ours.set_xticks(x, labels, rotation=30, ha="right")
    figure.suptitle(f"{report.study}: ours beside the paper's {report.table}")
    figure.legend(handles, names, loc="outside lower center", fontsize="small")
    return save_figure(figure, output / f"{report.study}.png")


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[Any], bool]]:
    """``KEY=V1,V2`` -> (key, values, is_build_option): a TrainConfig field is a training option, anything
    else a build option of the model (values parsed as Python literals where they are ones, a boolean's as
    ``--model-opt`` takes them: true/false, yes/no, on/off, 1/0)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    booleans = boolean_model_options() | boolean_fields(TrainConfig)
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise ValueError(f"--grid {item!r}: use KEY=V1,V2 (e.g. lr=0.05,0.1 or se_reduction=4,8)")
        try:
            pairs = [f"{key}={v.strip()}" for v in values.split(",") if v.strip()]
            parsed = [parse_model_options([pair], booleans)[key] for pair in pairs]
        except ValueError as error:
            raise ValueError(f"--grid {str(error).removeprefix('--model-opt ')}") from None
        if key in ("model", "model_options", "output", "seed", "data"):
            raise ValueError(f"--grid {key}: a study varies build and training options, not {key}")
        grid.append((key, parsed, key not in fields))
    return grid


def run_ablation(
    study: str,
    base_config: Any,
    output: str | Path,
    *,
    seeds: int = 1,
    grid: Sequence[tuple[str, Sequence[Any], bool]] = (),
    command: str = "",
) -> tuple[list[StudyReport], list[Path]]:
    """Run ``study`` on ``base_config.model`` (an SE network) with ``base_config``'s data and recipe.

    ``se_*`` options of ``base_config.model_options`` replace the paper's for every SE setting (e.g.
    ``se_bias=True``); the other build options (e.g. ``widths``) apply to every setting, plain twin included.
    Returns the reports and the files written (rank 0 writes them under torchrun).
    """
    import os

    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds} (3 or more for any claim)")
    output = Path(output)
    shared = {k: v for k, v in base_config.model_options.items() if not k.startswith("se_")}
    se_options = {k: v for k, v in base_config.model_options.items() if k.startswith("se_")}
    studies, notes = study_settings(base_config.model, study, se_options, grid)
    with lock_output_dir(output, "senet ablate"):  # one study writes a folder at a time (created here)
        settings = [setting for listed in studies.values() for setting in listed]
        outcomes = run_settings(settings, replace(base_config, model_options=shared), seeds, output)
        reports = summarize(studies, outcomes, notes)
        if int(os.environ.get("RANK", "0")) != 0:
            return reports, []
        header = (
            f"# Ablation of {model_info(base_config.model).name} on {base_config.data}: "
            f"{seeds} seed(s) per setting, "
            f"{base_config.epochs} epochs each; final-epoch validation errors (%).\n\n"
            + (f"`{command}`\n\n" if command else "")
            + "Paper columns: SE-ResNet-50 on ImageNet (TPAMI Tables 10-16). "
            + (
                f"'beyond seed noise': Welch's t-test against the reference, p < {SIGNIFICANCE}.\n"
                if seeds >= MIN_SEEDS_FOR_CLAIMS
                else f"With fewer than {MIN_SEEDS_FOR_CLAIMS} seeds no difference is called significant.\n"
            )
        )
        return reports, write_report(reports, output, seeds, header)
