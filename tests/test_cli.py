import csv
import io
import json
import subprocess
import sys

from senet.cli import main


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
    done = subprocess.run([sys.executable, "-m", "senet", "models", "senet154", "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)[0]["name"] == "senet154"
