import json

import pytest

from senet.analysis import demo as demo_module
from senet.analysis.demo import format_demo, run_demo

TINY = dict(epochs=1, batch_size=256, device="cpu", log_interval=0, model_options={"widths": (4, 4, 4)})


def test_the_demo_trains_judges_convergence_and_draws_its_pictures(tmp_path, monkeypatch, figures_inside):
    # without matplotlib: the study and the statistics, and a line on how to get the pictures
    with monkeypatch.context() as patch:
        patch.setattr(demo_module.importlib.util, "find_spec", lambda name: None)
        text = format_demo(run_demo(output=tmp_path, seeds=2, **TINY))
    assert "pip install 'senet[plot]'" in text and not figures_inside
    assert "not converged" in text and "se_resnet20_cifar-seed0: last epoch's train error" in text
    first, last = text.splitlines()[-2:]
    assert first.startswith("class specificity, first stage (SE_2_3, 4 channels): eta² ")
    assert last.startswith("class specificity, last stage (SE_4_3, 4 channels): eta² ")
    # with matplotlib: the trained runs are reused, the pictures drawn (every text inside its image)
    result = run_demo(output=tmp_path, seeds=2, **TINY)
    text = format_demo(result)
    assert result.curves == tmp_path / "curves.png" and result.curves.is_file()
    assert f"curves:     {tmp_path / 'curves.png'}" in text
    assert f"excitation: {tmp_path / 'excitation' / 'excitation-classes.png'}" in text
    assert {"curves.png", "excitation-classes.png", "class-specificity.png"} <= set(figures_inside)
    rows = {row["block"]: row for row in result.specificity}
    assert set(rows) == {"SE_2_3", "SE_4_3"} and rows["SE_2_3"]["images"] == 360  # every validation image


def _history(run_dir, records):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


@pytest.mark.parametrize(
    "last_two, problem",
    [
        ([(2.0, 5.0), (0.9, 4.5)], None),
        ([(2.0, 5.0), (1.2, 4.5)], "last epoch's train error 1.20 %"),
        ([(0.5, 5.0), (0.4, 3.9)], "val error moved 1.10 points in the last epoch"),
    ],
)
def test_convergence_means_a_fitted_training_set_and_a_settled_validation_error(tmp_path, last_two, problem):
    records = [{"epoch": e + 1, "train_top1_err": t, "val_top1_err": v} for e, (t, v) in enumerate(last_two)]
    row = demo_module.DemoRow(
        "m", 1, [records[-1]["val_top1_err"]], [_history(tmp_path / "m-seed0", records)]
    )
    found = demo_module._unconverged([row])
    assert found == ([] if problem is None else [f"m-seed0: {problem}"])
