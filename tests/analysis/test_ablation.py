"""senet ablate: the studies' settings, the statistics, the report, resuming, and
one real study from the CLI."""

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from senet.analysis import ablation
from senet.analysis.paper_ablations import STUDIES
from senet.cli import main
from senet.train.config import resolve_config

TINY = {"widths": (4, 8, 8)}


def test_the_reduction_study_of_se_resnet50_is_table_10_without_biases():
    studies, notes = ablation.study_settings("se_resnet50", "reduction")
    settings = studies["reduction"]
    assert [s.options.get("se_reduction") for s in settings] == [2, 4, 8, 16, 32, None]
    assert all(s.options["se_bias"] is False for s in settings[:-1])  # the paper's ablation setting (Sec. 6)
    assert settings[-1].model == "resnet50" and settings[-1].options == {} and not notes
    assert [s.paper.params_m for s in settings] == [45.7, 35.7, 30.7, 28.1, 26.9, 25.6]


def test_all_studies_share_identical_settings_and_leave_out_what_a_family_lacks():
    studies, notes = ablation.study_settings("se_resnet20_cifar", "all", {"se_bias": True})
    assert set(studies) == set(STUDIES)
    slugs = [s.slug for listed in studies.values() for s in listed]
    # the default SE setting appears in several studies under one slug: trained once
    assert len(set(slugs)) < len(slugs)
    assert all(s.options.get("se_bias", True) for listed in studies.values() for s in listed)
    # a setting the family refuses is a note, never a silent substitute
    built = {s.options.get("se_position") for s in studies["integration"]}
    assert all("not defined for se_resnet20_cifar" in n for n in notes if "Tables 14-15" in n)
    assert len(built) + sum("Tables 14-15" in n for n in notes) == 5


def test_unknown_studies_plain_models_and_bad_grids_are_refused():
    with pytest.raises(ValueError, match="unknown study 'width'; choose one of reduction"):
        ablation.study_settings("se_resnet50", "width")
    with pytest.raises(ValueError, match="resnet50 has no SE blocks to study"):
        ablation.study_settings("resnet50", "reduction")
    with pytest.raises(ValueError, match="use KEY=V1,V2"):
        ablation.parse_grid(["lr"])
    assert ablation.parse_grid(["lr=0.05,0.1", "se_bias=True,False"]) == [
        ("lr", [0.05, 0.1], False),
        ("se_bias", [True, False], True),
    ]


def test_a_grid_reads_booleans_as_the_model_opt_flag_reads_them():
    """Build options by their declared type, training options by the config's field type; numbers and words of
    other options stay what they are."""
    assert ablation.parse_grid(
        ["se_bias=off,Yes", "amp=0,true", "se_recompute_norm=None,on", "se_reduction=1,2"]
    ) == [
        ("se_bias", [False, True], True),
        ("amp", [False, True], False),
        ("se_recompute_norm", [None, True], True),
        ("se_reduction", [1, 2], True),
    ]
    with pytest.raises(
        ValueError, match=r"^--grid se_bias='maybe': se_bias is true or false; write true/false"
    ):
        ablation.parse_grid(["se_bias=on,maybe"])


def test_welch_p_is_the_students_t_test_for_equal_sizes_and_spreads():
    # t = (2 - 5) / sqrt(1/3 + 1/3) = -3.674 with 4 degrees of freedom: two-sided p = 0.0213 (t tables)
    assert ablation.welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0213, abs=5e-4)
    assert ablation.welch_p([1.0], [2.0, 3.0]) is None  # no spread to test with
    assert ablation.welch_p([1, 1, 1], [1, 1, 1]) == 1.0


def _fake_train(errors):
    """A stand-in for senet.train.train that 'trains' instantly: final top-1 error per (model, seed, r)."""
    calls = []

    def train(config, resume=None, overwrite=False):
        calls.append(config.output)
        key = (config.model, config.model_options.get("se_reduction"), config.seed)
        model = torch.nn.Conv2d(1, 2 if config.model.startswith("se_") else 1, 1)  # digits: 1 channel
        return SimpleNamespace(model=model, history=[{"val_top1_err": errors[key], "val_top5_err": 0.5}])

    return train, calls


def test_the_report_marks_only_differences_beyond_seed_noise(tmp_path, figures_inside):
    studies, notes = ablation.study_settings("se_resnet20_cifar", "reduction")
    errors = {}
    for seed in range(3):
        for r in (2, 4, 8, 16, 32):
            errors[("se_resnet20_cifar", r, seed)] = 1.0 + 0.01 * seed + (5.0 if r == 32 else 0.0)
        errors[("resnet20_cifar", None, seed)] = 1.0 + 0.5 * seed  # a wide spread: not significant
    config = resolve_config("demo", model="se_resnet20_cifar", epochs=1)
    train, calls = _fake_train(errors)
    outcomes = ablation.run_settings(studies["reduction"], config, 3, tmp_path, train=train)
    assert len(calls) == 6 * 3
    reports = ablation.summarize(studies, outcomes, notes)
    written = ablation.write_report(reports, tmp_path, 3, "# test\n")
    rows = {row["setting"]: row for row in csv.DictReader(open(tmp_path / "reduction.csv"))}
    assert "beyond seed noise" in rows["r = 32"]["vs reference"]
    assert "within seed noise" in rows["no SE (ResNet-50 in the paper)"]["vs reference"]
    assert rows["r = 16"]["vs reference"] == "reference"
    assert rows["r = 2"]["top-1 err"] == "1.01 ± 0.01" and rows["r = 2"]["paper top-1"] == "22.29"
    assert float(rows["r = 32"]["p-value"]) < 0.05 and rows["r = 2"]["top-1 per seed"] == "1.00 1.01 1.02"
    assert all(path.is_file() for path in written)
    with Image.open(tmp_path / "reduction.png") as chart:
        assert chart.size[0] > 300
    # the chart: our means beside the paper's figures (Table 10), on an axis of their own
    ours, paper = figures_inside["reduction.png"].axes
    our_heights = [bar.get_height() for bar in ours.patches]
    assert our_heights[:2] == pytest.approx([1.01, 1.01]) and our_heights[4] == pytest.approx(6.01)
    assert [bar.get_height() for bar in paper.patches] == [
        22.29,
        22.25,
        22.26,
        22.28,
        22.72,
        23.30,
    ]  # Table 10


def test_a_study_on_digits_runs_from_the_cli_and_resumes_without_training_again(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["ablate", "--study", "squeeze", "--model", "se_resnet20_cifar", "--model-opt", "widths=(4,8,8)"]
    args += ["--epochs", "1", "--batch-size", "128", "--output", str(out), "--log-interval", "0"]
    assert main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| Max | se_resnet20_cifar |" in printed and "| Avg | se_resnet20_cifar |" in printed
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "se_resnet20_cifar-se_bias=False-se_squeeze=avg-seed0",
        "se_resnet20_cifar-se_bias=False-se_squeeze=max-seed0",
    ]
    rows = list(csv.DictReader(open(out / "squeeze.csv")))
    assert [r["setting"] for r in rows] == ["Max", "Avg"] and all(
        not math.isnan(float(r["top-1 err"])) for r in rows
    )
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    assert main([*args, "--device", "cpu"]) == 0  # a rerun reads the finished runs back
    assert "has finished all 1 epochs; nothing to do" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    assert (Path(out) / "ablation.md").read_text().count("| Max |") == 1
