"""senet.analysis.excitation: block names, gate statistics, SE removal, and `senet analyze`."""

import copy
import csv
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import Subset

import senet
from senet.analysis.excitation import (
    collect_excitations,
    default_blocks,
    evaluate_se_removal,
    sample_indices,
    se_blocks,
    se_removed,
    select_blocks,
)
from senet.cli import main
from senet.data import build_data, build_loader
from senet.data.transforms import Preprocessing
from senet.train import TrainConfig, train
from senet.train.evaluation import evaluate
from senet.weights.info import WeightsInfo, save_weights_file

TINY = {"widths": (4, 8, 8), "se_reduction": 4}  # SE hidden widths 1, 2, 2
SIZE = 16  # digits at 16 x 16: a quarter of the compute of 32 x 32, and still three stages (16, 8, 4)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny se_resnet20_cifar trained for one epoch on digits: a real run directory."""
    out = tmp_path_factory.mktemp("excitation") / "run"
    config = TrainConfig(
        model="se_resnet20_cifar",
        model_options=TINY,
        data="digits",
        image_size=SIZE,
        epochs=1,
        batch_size=480,  # two steps: what matters here is a real run directory, not a good network
        lr=0.1,
        schedule="step",
        step_epochs=1,
        output=str(out),
        log_interval=0,
        device="cpu",
    )
    return train(config).run_dir


@pytest.fixture
def model(run_dir):
    return senet.load_pretrained(run_dir).eval()


@pytest.fixture(scope="module")
def val():
    return build_data("digits", image_size=SIZE).val


def _forced_open(model, paths):
    """A copy of ``model`` whose SE blocks at ``paths`` compute gates of exactly 1: fc2 = 0, bias +100."""
    twin = copy.deepcopy(model)
    for path in paths:
        se = twin.get_submodule(path)
        with torch.no_grad():
            se.fc2.weight.zero_()
            se.fc2.bias.fill_(100.0)  # sigmoid(100) rounds to 1.0 in float32
    return twin


# ------------------------------------------------------------------------------------------ names


def test_block_names_follow_the_paper_on_se_resnet50():
    with torch.device("meta"):
        net = senet.create_model("se_resnet50")
    blocks = {b.name: b.path for b in se_blocks(net)}
    assert len(blocks) == 3 + 4 + 6 + 3
    assert blocks["SE_2_3"] == "layer1.2.se" and blocks["SE_4_6"] == "layer3.5.se"
    assert blocks["SE_5_1"] == "layer4.0.se" and "SE_3_4" in blocks and "SE_3_5" not in blocks
    assert [b.name for b in default_blocks(net)] == ["SE_2_3", "SE_3_4", "SE_4_6", "SE_5_3"]
    assert [b.path for b in select_blocks(net, "SE_5_*")] == ["layer4.0.se", "layer4.1.se", "layer4.2.se"]
    # forward order, no repeats; case-insensitive; module paths with or without ".se"
    picked = select_blocks(net, ["se_4_6,layer1.0", "SE_2_1", "layer4.2.se"])
    assert [b.name for b in picked] == ["SE_2_1", "SE_4_6", "SE_5_3"]
    assert [b.name for b in select_blocks(net, "SE_*_1")] == ["SE_2_1", "SE_3_1", "SE_4_1", "SE_5_1"]


def test_cifar_resnets_count_their_stages_from_the_stem_too(model):
    names = [b.name for b in se_blocks(model)]
    assert names == [f"SE_{s}_{b}" for s in (2, 3, 4) for b in (1, 2, 3)]
    assert select_blocks(model, "SE_2_1")[0].path == "layer1.0.se"


def test_unknown_block_names_are_refused_with_the_valid_names(model):
    with pytest.raises(ValueError, match=re.escape("SE_2_1..SE_2_3, SE_3_1..SE_3_3, SE_4_1..SE_4_3")):
        select_blocks(model, "SE_5_1")
    with pytest.raises(ValueError, match="no SE block 'SE_9_\\*'"):
        select_blocks(model, "SE_2_1,SE_9_*")


def test_networks_without_se_or_without_stages():
    with torch.device("meta"):
        plain = senet.create_model("resnet20_cifar", widths=(4, 8, 8))
        mobile = senet.create_model("se_mobilenet")
    with pytest.raises(ValueError, match="has no SE blocks"):
        select_blocks(plain)
    blocks = se_blocks(mobile)
    assert [b.name for b in blocks][:2] == ["blocks.0.se", "blocks.1.se"] and len(blocks) == 13
    assert [b.name for b in default_blocks(mobile)] == [b.name for b in blocks]  # no stages: every block
    tens = ["blocks.1.se", "blocks.10.se", "blocks.11.se", "blocks.12.se"]
    assert [b.name for b in select_blocks(mobile, "blocks.1*")] == tens


def test_sample_is_stratified_and_deterministic():
    targets = [0] * 50 + [1] * 30 + [2] * 4
    sample = sample_indices(targets, len(targets), 20, seed=1)
    counts = np.bincount([targets[i] for i in sample])
    assert counts.tolist() == [8, 8, 4] and sample == sorted(sample)
    assert sample == sample_indices(targets, len(targets), 20, seed=1)
    assert sample != sample_indices(targets, len(targets), 20, seed=2)
    assert sample_indices(targets, len(targets), None) == list(range(len(targets)))


# ------------------------------------------------------------------------------------------ statistics


def test_statistics_equal_an_independent_computation(model, val):
    loader = build_loader(Subset(val, range(100)), batch_size=32, train=False)
    stats = collect_excitations(model, loader, "SE_2_1,SE_4_3", max_images=90, progress=False)
    assert stats.images == 90 and [b.name for b in stats.blocks] == ["SE_2_1", "SE_4_3"]

    # Gates by hand: the input of each unit's SE (its branch ends in conv2),
    # through functional ops in float64.
    units = {"SE_2_1": model.layer1[0], "SE_4_3": model.layer3[2]}
    captured = {name: [] for name in units}
    hooks = [
        unit.conv2.register_forward_hook(lambda m, i, out, name=name: captured[name].append(out))
        for name, unit in units.items()
    ]
    images = torch.stack([val[i][0] for i in range(90)])
    labels = torch.tensor([val[i][1] for i in range(90)])
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    for name, unit in units.items():
        w1, b1, w2, b2 = (t.detach().double() for t in unit.se.parameters())
        z = captured[name][0].double().mean((2, 3))
        gates = torch.sigmoid(F.linear(F.relu(F.linear(z, w1.flatten(1), b1)), w2.flatten(1), b2))
        block = stats.block(name)
        present = sorted(set(labels.tolist()))
        assert block.class_ids.tolist() == present
        assert block.counts[present].tolist() == [int((labels == c).sum()) for c in present]
        for row, c in enumerate(present):
            mine = gates[labels == c]
            np.testing.assert_allclose(block.class_mean[row], mine.mean(0).numpy(), atol=1e-6)
            np.testing.assert_allclose(block.class_std[row], mine.std(0, correction=0).numpy(), atol=1e-6)
        np.testing.assert_allclose(block.mean, gates.mean(0).numpy(), atol=1e-6)
        assert block.hist.sum() == 90 * block.channels
        # eta^2 and the L1 measure from the raw gates
        overall = gates.mean(0)
        means = torch.stack([gates[labels == c].mean(0) for c in present])
        between = sum(
            ((gates[labels == c].mean(0) - overall) ** 2).sum() * (labels == c).sum() for c in present
        )
        row = block.specificity()
        total = ((gates - overall) ** 2).sum()
        if total / gates.numel() > 1e-10:
            assert row["eta_squared"] == pytest.approx(float(between / total), rel=1e-4)
        elif total / gates.numel() < 1e-13:  # hidden units that (almost) never fire: constant gates
            assert np.isnan(row["eta_squared"])
        assert row["l1_specificity"] == pytest.approx(float((means - overall).abs().mean()), rel=1e-4)
    assert "gates" not in model.layer1[0].se.__dict__  # the recording hook is gone


@pytest.mark.parametrize("gate, squeeze", [("relu", "avg"), ("tanh", "none")])
def test_other_gates_and_no_squeeze(gate, squeeze):
    net = senet.create_model(
        "se_resnet20_cifar", num_classes=3, in_chans=1, se_gate=gate, se_squeeze=squeeze, **TINY
    )
    with torch.no_grad():  # unbounded relu gates well above 1: the histogram's range must grow
        net.layer3[2].se.fc2.bias.fill_(3.0 if gate == "relu" else 0.0)
    images, labels = torch.randn(12, 1, 16, 16), torch.arange(12) % 3
    stats = collect_excitations(net, [(images, labels)], "SE_4_3", progress=False)
    block = stats.block("SE_4_3")
    assert block.hist.sum() == 12 * block.channels and block.counts.tolist() == [4, 4, 4]
    assert block.hist_edges[0] <= block.minimum and block.maximum <= block.hist_edges[-1]
    if gate == "relu":
        assert block.maximum > 1 and block.hist_edges[-1] >= 2
    np.testing.assert_allclose(block.class_mean.mean(0), block.mean, atol=1e-12)  # balanced classes


def test_gates_that_never_vary_have_no_eta_squared():
    net = senet.create_model("se_resnet20_cifar", num_classes=3, in_chans=1, **TINY)
    with torch.no_grad():  # the hidden ReLU never fires: every image gets sigmoid(fc2.bias)
        net.layer2[0].se.fc1.bias.fill_(-1e4)
    images, labels = torch.randn(9, 1, 16, 16), torch.arange(9) % 3
    row = collect_excitations(net, [(images, labels)], "SE_3_1", progress=False).specificity()[0]
    assert row["l1_specificity"] == 0 and np.isnan(row["eta_squared"]) and row["gate_mean"] == 0.5


# ------------------------------------------------------------------------------------------ removal


@pytest.mark.parametrize(
    "name, options",
    [
        ("se_resnet20_cifar", TINY),  # pre-activation: scale_and_add
        ("se_resnet18", {}),  # post-activation: norm_scale_and_add
        ("se_resnet18", {"se_position": "post"}),  # the module's forward
        ("se_resnet18", {"se_position": "identity"}),  # scale_and_add on the shortcut
    ],
)
@pytest.mark.parametrize("training", [False, True])
def test_removal_gives_the_network_with_gates_one(name, options, training):
    if name == "se_resnet18":
        options = {"widths": (4, 8, 8, 8), "stem_width": 8, "se_reduction": 4, **options}
    net = senet.create_model(name, num_classes=5, in_chans=1, **options)
    x = torch.randn(4, 1, 16, 16)
    chosen = ["SE_2_*", "SE_4_2"]
    paths = [b.path for b in select_blocks(net, chosen)]
    twin = _forced_open(net, paths)
    net.train(training), twin.train(training)
    before = copy.deepcopy(net)
    with se_removed(net, chosen) as removed:
        assert [b.path for b in removed] == paths
        out = net(x)
    expected = twin(x)
    if training:  # the fused SE operators, with their own BatchNorm arithmetic
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        out.sum().backward()  # gradients flow through the identities
    else:
        assert torch.equal(out, expected)
    assert all(
        not {"forward", "scale_and_add", "norm_scale_and_add", "gates"} & set(b.module.__dict__)
        for b in removed
    )
    if not training:  # (a training forward moved the BatchNorm statistics)
        with torch.no_grad():
            assert torch.equal(net(x), before(x))  # restored: the SE blocks gate again
            assert not torch.equal(net(x), twin(x))


def test_removal_is_undone_after_an_error(model):
    with pytest.raises(RuntimeError, match="inside"):
        with se_removed(model, "SE_4_*"):
            raise RuntimeError("inside")
    assert all("forward" not in b.module.__dict__ for b in se_blocks(model))


def test_removal_table_errors_and_parameter_savings(model, val):
    loader = build_loader(Subset(val, range(64)), batch_size=64, train=False)
    rows = evaluate_se_removal(model, loader, device="cpu")
    assert [r.label.split(" ")[0] for r in rows] == ["none", "SE_2_*", "SE_3_*", "SE_4_*", "all"]
    assert "paper Sec. 7" in rows[3].label
    se_params = {n: p.numel() for n, p in model.named_parameters() if ".se." in n}
    assert rows[0].params_saved == 0
    for row, layer in zip(rows[1:4], ("layer1.", "layer2.", "layer3."), strict=True):
        assert row.params_saved == sum(v for n, v in se_params.items() if n.startswith(layer))
    assert rows[4].params_saved == sum(se_params.values()) > 0
    full = evaluate(model, loader, torch.device("cpu"))
    assert (rows[0].top1_err, rows[0].top5_err) == (full["val_top1_err"], full["val_top5_err"])
    opened = _forced_open(model, [b.path for b in se_blocks(model)])
    opened = evaluate(opened, loader, torch.device("cpu"))
    assert rows[4].top1_err == opened["val_top1_err"]
    assert rows[4].top1_change == pytest.approx(rows[4].top1_err - rows[0].top1_err)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_excitation_writes_figures_and_tables(run_dir, tmp_path, capsys):
    out = tmp_path / "excitation"
    argv = ["analyze", "excitation", "--checkpoint", str(run_dir), "--output", str(out)]
    assert (
        main([*argv, "--max-images", "60", "--channels", "5", "--classes", "1,7", "--blocks", "SE_3_*"]) == 0
    )
    printed = capsys.readouterr().out
    assert "SE_3_1, SE_3_2, SE_3_3 on 60 images" in printed
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "class-specificity.png",
        "excitation-classes.png",
        "excitation-histograms.png",
        "excitation-mean-std-1.png",
        "excitation-mean-std-7.png",
    ]
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            image.verify()
    with open(out / "class-specificity.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["block"] for r in rows] == ["SE_3_1", "SE_3_2", "SE_3_3"]
    assert {"l1_specificity", "eta_squared", "eta_squared_chance", "images", "classes"} <= set(rows[0])
    with open(out / "excitation-stats.csv") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["block", "path", "class_id", "class", "images", "channel", "mean", "std"]
        stats_rows = list(reader)
    assert {r["class_id"] for r in stats_rows} == {str(c) for c in range(-1, 10)}  # stratified: every class
    with np.load(out / "excitation-stats.npz", allow_pickle=False) as npz:
        assert npz["blocks"].tolist() == ["SE_3_1", "SE_3_2", "SE_3_3"]
        assert npz["SE_3_2/mean"].shape == (10, 8) and npz["SE_3_2/counts"].sum() == 60
        assert npz["classes"].tolist() == [str(c) for c in range(10)]


def test_cli_remove_se_prints_and_writes_the_table(run_dir, tmp_path, capsys):
    table = tmp_path / "removal.csv"
    argv = ["analyze", "remove-se", "--checkpoint", str(run_dir), "--data", "digits", "--max-images", "40"]
    assert main([*argv, "--blocks", "SE_4_3", "--blocks", "SE_2_*,SE_3_1", "--output", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "| removed SE blocks |" in printed and "| SE_2_*,SE_3_1 | SE_2_1..SE_2_3, SE_3_1 |" in printed
    with open(table) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["removed"] for r in rows] == ["none (full model)", "SE_4_3", "SE_2_*,SE_3_1"]
    assert {"params_saved", "top1_err", "top5_err", "top1_change", "top5_change"} <= set(rows[0])
    assert all(r["images"] == "40" for r in rows)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_refuses_unknown_blocks_plain_networks_and_foreign_data(run_dir, tmp_path, capsys, make_folder):
    base = ["analyze", "remove-se", "--checkpoint", str(run_dir)]
    assert main([*base, "--blocks", "SE_5_1"]) == 2
    assert "no SE block 'SE_5_1'; its blocks are SE_2_1..SE_2_3, SE_3_1..SE_3_3" in _error_line(capsys)

    plain = senet.create_model("resnet20_cifar", widths=(4, 8, 8), in_chans=1, num_classes=10)
    info = WeightsInfo(
        "resnet20_cifar", {"widths": [4, 8, 8], "in_chans": 1}, 10, Preprocessing((0.5,), (0.25,), 16)
    )
    weights = save_weights_file(tmp_path / "plain.safetensors", plain.state_dict(), info)
    out = str(tmp_path / "out")
    assert (
        main(["analyze", "excitation", "--checkpoint", str(weights), "--data", "digits", "--output", out])
        == 2
    )
    assert (
        "holds resnet20_cifar, which has no SE blocks; give a checkpoint of a network with SE"
        in _error_line(capsys)
    )

    folder = make_folder(classes=("cat", "dog", "fox"), per_class=1)
    assert main([*base, "--data", str(folder)]) == 2
    line = _error_line(capsys)
    assert "predicts 10 classes" in line and "has 3: give the data it was trained on (--data)" in line
