"""senet convert: every supported model of timm, pretrained-models and torchvision, converted and loaded through the
documented path, computes what the source computes: compared with an independent functional forward pass of the
source architecture on the source's own keys (source_layouts.py), in float64."""

import json

import pytest
import torch
from source_layouts import (
    CHECKED_ELSEWHERE,
    SOURCE_MODELS,
    reference_forward,
    source_layout,
    source_state_dict,
)

import senet
from senet.cli import main
from senet.weights.convert import SOURCES, convert_file, convert_state, read_source_file
from senet.weights.info import read_weights_file

CASES = [(project, name) for project, names in SOURCE_MODELS.items() for name in names]
# Numerically identical twins run with --run-slow only: timm's legacy_* SENets are pretrained-models' under the
# same keys and key map, and timm's resnet50/resnext50_32x4d are torchvision's (test_source_layouts.py checks
# both claims against timm, and every name still goes through the mapping check below).
SLOW = CHECKED_ELSEWHERE | {
    ("timm", name)
    for name in SOURCE_MODELS["timm"]
    if name.startswith("legacy_") or name in SOURCE_MODELS["torchvision"]
}


def _cases(cases):
    marked = [pytest.param(*c, marks=pytest.mark.slow) if c in SLOW else pytest.param(*c) for c in cases]
    return pytest.mark.parametrize("project,name", marked, ids=[f"{p}-{n}" for p, n in cases])


def test_the_test_layouts_cover_every_supported_source():
    assert {p: set(n) for p, n in SOURCE_MODELS.items()} == {p: set(n) for p, n in SOURCES.items()}


@pytest.mark.parametrize("project,name", CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_every_source_maps_completely_onto_the_network_it_names(project, name):
    """Keys and shapes of every supported model, slow ones included (on the meta device: no memory, no time)."""
    state = {key: torch.empty(shape, device="meta") for key, _, shape in source_layout(project, name)}
    converted, entry, num_classes = convert_state(project, name, state)
    with torch.device("meta"):
        ours = senet.create_model(entry.model, num_classes=1000, **entry.options).state_dict()
    assert num_classes == 1000 and converted.keys() == ours.keys()
    assert all(converted[k].shape == v.shape for k, v in ours.items())


@_cases(CASES)
def test_converted_weights_compute_the_source_outputs(tmp_path, project, name):
    # float32 files (half the bytes to write and read), compared in float64: the reference runs on the very
    # same values, widened.
    state = source_state_dict(project, name, num_classes=10, dtype=torch.float32)
    source = tmp_path / f"{name}.{'safetensors' if project == 'timm' else 'pth'}"
    if source.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, source)
    else:
        torch.save(state, source)
    out = tmp_path / "converted.safetensors"
    info = convert_file(project, name, source, out)
    net = senet.create_model(info.model, pretrained=out).double().eval()  # the documented path
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wide = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
        expected = reference_forward(project, name, wide, x)
        torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-5)
    assert info.num_classes == 10 and info.labels is None and info.source["project"] == project


@pytest.mark.parametrize(
    "timm_name,paper_name", [("seresnet50", "se_resnet50"), ("seresnext50_32x4d", "se_resnext50_32x4d")]
)
def test_timm_names_and_paper_names_are_not_interchangeable(timm_name, paper_name):
    """The same keys, other layouts: timm's weights in our paper-layout network compute something else, which is
    why timm's names build timm's layout and weights come in through their recorded options."""
    state = source_state_dict("timm", timm_name, num_classes=10)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    expected = reference_forward("timm", timm_name, state, x)
    with torch.no_grad():
        for name, same in ((timm_name, True), (paper_name, False)):
            net = senet.create_model(name, num_classes=10).double().eval()
            net.load_state_dict(state)  # strict: the key names and shapes are the same
            assert torch.allclose(net(x), expected, rtol=0, atol=1e-9) is same, name


def test_convert_cli_records_preprocessing_labels_and_provenance(tmp_path, capsys):
    state = source_state_dict("torchvision", "resnet18", dtype=torch.float32)
    source = tmp_path / "resnet18-f37072fd.pth"  # torchvision's file name: its own transform is recorded
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, source)  # a wrapped DDP save
    out = tmp_path / "r18.safetensors"
    args = ["convert", "--from", "torchvision", str(source), "--model", "resnet18", "--out", str(out)]
    assert main(args) == 0
    assert str(out) in capsys.readouterr().out
    info, tensors = read_weights_file(out)
    assert info.model == "resnet18" and info.options == {"stem_pool": "torchvision"}
    assert info.labels[:2] == ["tench", "goldfish"] and len(info.labels) == 1000
    assert (info.preprocessing.input_size, info.preprocessing.resize) == (224, 256)
    assert torch.equal(tensors["conv1.weight"], state["conv1.weight"])
    assert info.source["file"] == source.name and len(info.source["sha256"]) == 64

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    timm_args = ["--from", "timm", str(source), "--model", "resnet50.a1_in1k", "--out", str(out)]
    assert main(["convert", *timm_args, "--crop-fraction", "0.9", "--labels", str(labels)]) == 2
    assert "does not map completely" in capsys.readouterr().err  # resnet18 tensors are not a resnet50


def test_timm_tags_choose_the_preprocessing_and_options_override_it(tmp_path):
    state = source_state_dict("timm", "resnet50", num_classes=1000, dtype=torch.float32)
    source = tmp_path / "resnet50.safetensors"
    from safetensors.torch import save_file

    save_file(state, source)
    a1 = convert_file("timm", "resnet50.a1_in1k", source, tmp_path / "a1.safetensors").preprocessing
    assert (a1.crop_fraction, a1.interpolation) == (0.95, "bicubic")
    a3 = convert_file("timm", "resnet50.a3_in1k", source, tmp_path / "a3.safetensors").preprocessing
    assert a3.input_size == 160
    tv = convert_file(
        "timm", "resnet50.tv_in1k", source, tmp_path / "tv.safetensors", preprocessing={"input_size": 288}
    )
    assert (tv.preprocessing.input_size, tv.preprocessing.interpolation) == (288, "bilinear")
    with pytest.raises(ValueError, match="no preprocessing known"):
        convert_file("timm", "resnet50.unknown_tag", source, tmp_path / "x.safetensors")


def test_incomplete_or_foreign_sources_are_refused_naming_every_tensor(tmp_path):
    state = source_state_dict("pretrainedmodels", "se_resnet50", num_classes=10, dtype=torch.float32)
    del state["layer2.0.se_module.fc1.weight"], state["layer4.2.bn3.running_var"]
    state["layer1.0.se_module.fc2.bias"] = torch.zeros(7)
    state["aux_logits.weight"] = torch.zeros(3)
    source = tmp_path / "broken.pth"
    torch.save(state, source)
    with pytest.raises(ValueError) as error:
        convert_file("pretrainedmodels", "se_resnet50", source, tmp_path / "out.safetensors")
    message = str(error.value)
    for name in (
        "layer2.0.se.fc1.weight",
        "layer4.2.bn3.running_var",
        "aux_logits.weight",
        "layer1.0.se.fc2.bias",
    ):
        assert name in message
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ValueError, match="seresnet33ts' is not one senet converts"):
        convert_file("timm", "seresnet33ts", source, tmp_path / "out.safetensors")


class Payload:
    """A pickled object: loading it would run code, which weights_only refuses."""


def test_files_that_would_execute_code_are_not_read(tmp_path):
    source = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "obj": Payload()}, source)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_source_file(source)
    (tmp_path / "note.pth").write_text(json.dumps({"not": "weights"}))
    with pytest.raises(ValueError, match="cannot be read as weights"):
        read_source_file(tmp_path / "note.pth")


def test_timm_models_themselves_match_their_converted_weights(tmp_path):
    timm = pytest.importorskip("timm")
    for name in ("seresnet50", "legacy_seresnext50_32x4d"):
        source_net = timm.create_model(name, pretrained=False, num_classes=10).eval()
        source = tmp_path / f"{name}.pth"
        torch.save(source_net.state_dict(), source)
        convert_file("timm", name, source, tmp_path / f"{name}.safetensors")
        net = senet.load_pretrained(tmp_path / f"{name}.safetensors").eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(net(x), source_net(x), rtol=1e-4, atol=1e-4)
