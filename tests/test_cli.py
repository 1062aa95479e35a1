import argparse
import csv
import dataclasses
import importlib.metadata
import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import senet
from senet.cli import build_parser, main
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
    described = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("help", "").strip()}
    assert fields - {"model_options"} <= described, "TrainConfig fields without help in their metadata"
    train = dict(_parsers())["senet train"]
    flags = {option for action in train._actions for option in action.option_strings}
    assert {"--" + name.replace("_", "-") for name in fields - {"model_options"}} <= flags


def test_every_detection_config_field_has_help_words_and_a_flag(parser):
    from senet.detection.config import DetectionConfig

    options = {"backbone_options", "detector_options"}  # given as --backbone-opt / --detector-opt KEY=VALUE
    fields = {f.name for f in dataclasses.fields(DetectionConfig)}
    described = {f.name for f in dataclasses.fields(DetectionConfig) if f.metadata.get("help", "").strip()}
    assert fields - options <= described, "DetectionConfig fields without help in their metadata"
    args = parser.parse_args(["detect", "train"])
    assert {name for name in fields - options if getattr(args, name, "absent") is None} == fields - options


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


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.parametrize(
    "spelling, value",
    [("false", False), ("NO", False), ("Off", False), ("0", False), ("False", False)]
    + [("true", True), ("Yes", True), ("ON", True), ("1", True), ("'on'", True)],
)
def test_a_boolean_build_option_reads_as_people_write_it(parser, spelling, value):
    args = parser.parse_args(["train", "--model-opt", f"se_bias={spelling}", "--model-opt", "se_reduction=1"])
    options = parse_model_options(args.model_opt)
    assert options == {"se_bias": value, "se_reduction": 1} and type(options["se_reduction"]) is int
    model = senet.create_model("se_resnet20_cifar", widths=(4, 8, 8), **options)
    se = model.layer1[0].se
    assert (se.fc1.bias is not None) == value and se.fc1.out_channels == se.fc1.in_channels  # reduction 1
    detect = parser.parse_args(
        ["detect", "train", "--backbone-opt", f"se_bias={spelling}", "--detector-opt", "box_nms_thresh=1"]
    )
    assert parse_model_options(detect.backbone_opt) == {"se_bias": value}
    assert detect.detector_opt == ["box_nms_thresh=1"]  # a number option stays a number


def test_none_stays_none_where_a_boolean_option_allows_it(parser):
    args = parser.parse_args(["train", "--model-opt", "se_recompute_norm=None"])
    assert parse_model_options(args.model_opt) == {"se_recompute_norm": None}


def test_nothing_points_outside_the_repository(capsys):
    """The paper's figures live in the package; no code, doc or output names a file a clone does not have."""
    assert main(["models", "se_resnet50"]) == 0
    assert "shared/" not in capsys.readouterr().out
    root = Path(senet.__file__).parents[2]
    files = [*root.joinpath("src").rglob("*.py"), *root.joinpath("docs").glob("*.md"), root / "README.md"]
    pointing = [str(f.relative_to(root)) for f in files if "shared/paper" in f.read_text(encoding="utf-8")]
    assert pointing == []


@pytest.mark.parametrize("buffered", [True, False], ids=["at the final flush", "while printing"])
def test_a_closed_pipe_ends_a_command_quietly(tmp_path, buffered):
    """The reader of the output goes away (`senet models | head -1`): the command ends without a word and with
    the status a shell shows for a Unix tool ended by SIGPIPE (128 + 13). The reading end is closed before the
    command writes anything; unbuffered (-u), each print meets the closed pipe inside the command."""
    command = [sys.executable, *([] if buffered else ["-u"]), "-m", "senet", "models", "se_resnet50"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    process.stdout.close()
    error = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and error == ""
    if buffered:  # and as typed in a shell, where the reader may leave before or after the writer is done
        shell = f"{shlex.join(command[:-1])} '*_cifar' | head -1; echo status ${{PIPESTATUS[0]}}"
        done = subprocess.run(
            ["bash", "-c", shell], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        first, status = done.stdout.splitlines()
        assert first.startswith("model ") and status in ("status 0", "status 141") and done.stderr == ""


def test_a_broken_pipe_that_is_not_stdout_is_an_error(monkeypatch, capsys):
    import senet.cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a worker's pipe: stdout (pytest's capture) is fine

    monkeypatch.setattr(senet.cli.models, "models_command", broken)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "senet models: error: [Errno 32] Broken pipe\n"
