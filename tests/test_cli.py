import argparse
import csv
import dataclasses
import importlib.metadata
import io
import json
import subprocess
import sys

import pytest

from senet.cli import _FIELD_HELP, build_parser, main
from senet.train.config import TrainConfig, parse_model_options


def test_models_json_has_our_counts_beside_the_papers(capsys):
    assert main(["models", "se_resnet50", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["se_resnet50"]
    row = rows[0]
    assert {"name", "params", "gflops", "paper_params", "paper_gflops"} <= set(row)
    assert row["params"] == 28_088_024 and row["paper_params"] == 28.09 and abs(row["gflops"] - 3.86) < 0.01


def test_models_csv_and_table(capsys):
    assert main(["models", "resnet50", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["name"] == "resnet50" and float(rows[0]["paper_gflops"]) == 3.86
    assert main(["models", "*resnet20_cifar"]) == 0
    table = capsys.readouterr().out
    assert "se_resnet20_cifar" in table and "41M" in table and "CIFAR-10" in table


def test_unknown_pattern_is_one_line_and_exit_code_2(capsys):
    assert main(["models", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model matches" in err


def test_python_dash_m_senet_runs():
    done = subprocess.run(
        [sys.executable, "-m", "senet", "models", "senet154", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and json.loads(done.stdout)[0]["name"] == "senet154"


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"senet {importlib.metadata.version('senet')}"


def _parsers():
    """``senet`` and each of its sub-command parsers, by name."""
    parser = build_parser()
    yield "senet", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from ((f"senet {name}", sub) for name, sub in action.choices.items())


def test_every_flag_of_every_command_has_help_and_shows_its_default():
    names = []
    for name, parser in _parsers():
        names.append(name)
        formatter = parser._get_formatter()
        for action in parser._actions:
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{label} has no help"
            takes_value = (
                action.option_strings and action.nargs != 0 and action.default is not argparse.SUPPRESS
            )
            if takes_value or isinstance(action, argparse.BooleanOptionalAction):
                assert "default" in formatter._expand_help(action), f"{label} does not show its default"
    assert {"senet train", "senet eval", "senet bench", "senet models", "senet plot", "senet demo"} <= set(
        names
    )


def test_every_train_config_field_has_help_words_and_a_flag():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - {"model_options"} <= set(_FIELD_HELP), (
        "TrainConfig fields without an entry in _FIELD_HELP"
    )
    assert set(_FIELD_HELP) <= fields, "_FIELD_HELP names fields TrainConfig no longer has"
    train = dict(_parsers())["senet train"]
    flags = {option for action in train._actions for option in action.option_strings}
    assert {"--" + name.replace("_", "-") for name in fields - {"model_options"}} <= flags


def test_train_help_shows_the_dataclass_defaults_and_stays_readable(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as exit:
        main(["train", "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    words = " ".join(text.split())  # as read, whatever the wrapping
    assert "--lr X learning rate" in words and "(default: 0.1, or the preset's)" in words
    assert "(default: cosine, or the preset's)" in words and "(default: off, or the preset's)" in words
    assert max(len(line) for line in text.splitlines()) <= 100


def test_a_long_usage_is_shortened_in_an_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["train", "--lr", "abc"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "usage: senet train [options]  (see senet train --help)",
        "senet train: error: argument --lr: invalid float value: 'abc'",
    ]


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["se_reduction"], "KEY=VALUE"),
        (["=8"], "KEY=VALUE"),
        (["se_reduction="], "KEY=VALUE"),
        (["se stages=(1,2)"], "KEY=VALUE"),
        (["se_stages=(1,2"], "neither a Python literal"),
        (["se_reduction=8", "se_reduction=4"], "given twice"),
    ],
)
def test_malformed_model_options_are_refused(pairs, message):
    with pytest.raises(ValueError, match=message):
        parse_model_options(pairs)
