"""senet convert: what a converted file records (every layout option, the preprocessing with its
integer resize, labels, provenance) and what conversion refuses rather than guesses (other
shapes, dtypes, key layouts, tags).

That converted weights compute what the source computes is checked against the sources' own networks in
tests/peers (test_timm.py: timm's and pretrained-models' SENets; test_torchvision.py: torchvision's).
"""

import json
import logging

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import senet
from senet.cli import main
from senet.weights.convert import convert_file, convert_state, read_source_file, source_model
from senet.weights.info import read_weights_file

PAPER_SE_LAYOUT = {"stride_in_1x1": True, "stem_pool": "caffe"}
SE_DEFAULTS = {"se_squeeze": "avg", "se_gate": "sigmoid", "se_position": "standard"}


def _torchvision_state(name: str, **kwargs) -> dict[str, torch.Tensor]:
    return torchvision.models.get_model(name, weights=None, **kwargs).state_dict()


def _cadene_state(name: str = "se_resnet50", num_classes: int = 10) -> dict[str, torch.Tensor]:
    """pretrained-models' key layout, from timm's port of its code (tests/peers/test_timm.py)."""
    timm = pytest.importorskip("timm")
    legacy = "legacy_" + name.replace("se_res", "seres")
    return timm.create_model(legacy, pretrained=False, num_classes=num_classes).state_dict()


def test_convert_cli_records_preprocessing_labels_and_provenance(tmp_path, capsys):
    state = _torchvision_state("resnet18")
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


def _recorded(pre) -> tuple:
    return pre.input_size, pre.resize, pre.crop_fraction, pre.interpolation


def test_timm_tags_choose_the_preprocessing():
    """Each (model, tag) has its own line, as in timm (tests/peers/test_timm.py checks every one)."""
    assert _recorded(source_model("timm", "resnet50")[1]) == (224, 235, 0.95, "bicubic")  # timm floors 235.8
    assert _recorded(source_model("timm", "resnet50.a1h_in1k")[1]) == (176, 195, 0.9, "bicubic")  # not a1's
    assert _recorded(source_model("timm", "resnet101.a1h_in1k")[1]) == (224, 235, 0.95, "bicubic")
    assert _recorded(source_model("timm", "resnet50.a3_in1k")[1]) == (160, 168, 0.95, "bicubic")
    with pytest.raises(
        ValueError, match=r"no pretrained tag 'a1_in1k' for legacy_seresnet50 .*its tags: in1k"
    ):
        source_model("timm", "legacy_seresnet50.a1_in1k")
    with pytest.raises(ValueError, match="closest: a1h_in1k, a1_in1k"):
        source_model("timm", "resnet50.a1hh_in1k")


def test_preprocessing_options_override_the_tags(tmp_path):
    source = tmp_path / "resnet50.safetensors"  # timm's resnet50 has torchvision's keys and layout
    save_file(_torchvision_state("resnet50", num_classes=10), source)

    def converted(model: str, **overrides) -> tuple:
        out = tmp_path / "out.safetensors"
        return _recorded(convert_file("timm", model, source, out, preprocessing=overrides).preprocessing)

    assert converted("resnet50.tv_in1k", input_size=288) == (
        288,
        329,
        0.875,
        "bilinear",
    )  # floor(288 / 0.875)
    assert converted("resnet50.tv_in1k", crop_fraction=0.95, interpolation="bicubic") == (
        224,
        235,
        0.95,
        "bicubic",
    )


def test_a_renamed_torchvision_file_is_converted_with_a_warning_naming_the_preprocessing(tmp_path, caplog):
    source = tmp_path / "my-resnet50.pth"
    torch.save(_torchvision_state("resnet50", num_classes=10), source)
    with caplog.at_level(logging.WARNING, logger="senet.weights"):
        info = convert_file("torchvision", "resnet50", source, tmp_path / "out.safetensors")
    assert (info.preprocessing.resize, info.preprocessing.input_size) == (256, 224)
    (record,) = caplog.records
    assert "my-resnet50.pth is not the name of a torchvision resnet50 file" in record.getMessage()
    assert "ResNet50_Weights.IMAGENET1K_V1: resize 256, crop 224, bilinear" in record.getMessage()
    caplog.clear()
    published = tmp_path / "resnet50-11ad3fa6.pth"  # IMAGENET1K_V2: torchvision resizes to 232
    published.write_bytes(source.read_bytes())
    with caplog.at_level(logging.WARNING, logger="senet.weights"):
        info = convert_file("torchvision", "resnet50", published, tmp_path / "out.safetensors")
    assert (info.preprocessing.resize, info.preprocessing.input_size) == (232, 224) and not caplog.records


def test_every_layout_option_is_recorded_even_the_builders_defaults(tmp_path):
    """seresnet50's builder defaults are timm's layout; se_resnet50's the paper's. Both are written down."""
    source = tmp_path / "seresnet50.safetensors"
    save_file(senet.create_model("seresnet50", num_classes=10).state_dict(), source)  # timm's key names
    info = convert_file("timm", "seresnet50", source, tmp_path / "seresnet50-converted.safetensors")
    assert info.options == {"stride_in_1x1": False, "stem_pool": "torchvision", **SE_DEFAULTS}
    resnet50 = tmp_path / "resnet50-0676ba61.pth"
    torch.save(_torchvision_state("resnet50", num_classes=10), resnet50)
    info = convert_file("torchvision", "resnet50", resnet50, tmp_path / "r50.safetensors")
    assert info.options == {"stride_in_1x1": False, "stem_pool": "torchvision"}
    cadene = tmp_path / "se_resnet50.pth"
    torch.save(_cadene_state(), cadene)
    info = convert_file("pretrainedmodels", "se_resnet50", cadene, tmp_path / "se50.safetensors")
    assert info.options == {**PAPER_SE_LAYOUT, **SE_DEFAULTS}


def test_only_a_linear_is_reshaped_into_a_1x1_conv(tmp_path):
    """A tensor of the right element count in another shape is refused, not reshaped into place (a permuted
    stem conv loaded as ours would compute something else); an SE FC stored as a Linear still converts."""
    state = _torchvision_state("resnet18", num_classes=10)
    permuted = dict(state, **{"conv1.weight": state["conv1.weight"].permute(1, 0, 2, 3)})
    with pytest.raises(ValueError, match=r"shapes that differ \(1\): conv1.weight \(3, 64, 7, 7\) vs ours"):
        convert_state("torchvision", "resnet18", permuted)

    with torch.device("meta"):
        seresnet = senet.create_model("seresnet50", num_classes=10).state_dict()  # timm's key names
    linear = {k: v.flatten(1) if ".se.fc" in k and v.dim() == 4 else v for k, v in seresnet.items()}
    assert linear["layer1.0.se.fc1.weight"].shape == (16, 256)
    converted = convert_state("timm", "seresnet50", linear).state
    assert converted["layer1.0.se.fc1.weight"].shape == (16, 256, 1, 1)


def test_tensors_of_another_dtype_are_refused_in_one_line():
    state = _torchvision_state("resnet18", num_classes=10)
    state["fc.weight"] = state["fc.weight"].to(torch.int64)
    state["layer1.0.bn1.num_batches_tracked"] = torch.zeros(())  # a float counter
    with pytest.raises(ValueError) as error:
        convert_state("torchvision", "resnet18", state)
    message = str(error.value)
    assert "dtypes of another kind" in message and "\n" not in message
    assert "fc.weight int64 vs ours float32" in message
    assert "layer1.0.bn1.num_batches_tracked float32 vs ours int64" in message
    state["fc.weight"] = state["fc.weight"].to(torch.float16)  # another float: load_pretrained casts it
    state["layer1.0.bn1.num_batches_tracked"] = torch.zeros((), dtype=torch.int32)
    assert convert_state("torchvision", "resnet18", state).state["fc.weight"].dtype == torch.float16


def test_a_source_of_the_other_key_layout_is_refused_naming_the_conversion():
    """Our own seresnet50 has timm's seresnet50 key names; renamed, they are pretrained-models' se_resnet50
    tensor for tensor (shapes included), but in another layout. tests/peers/test_timm.py checks the same
    with timm's own state dicts."""
    with torch.device("meta"):
        timm_layout = senet.create_model("seresnet50", num_classes=10).state_dict()
    for project, name in (("pretrainedmodels", "se_resnet50"), ("timm", "legacy_seresnet50")):
        with pytest.raises(
            ValueError, match="layer0 / se_module / last_linear.*--from timm --model seresnet50$"
        ):
            convert_state(project, name, timm_layout)
    with pytest.raises(ValueError, match="none of these 1 keys is one: they are not se_resnet50 weights"):
        convert_state("pretrainedmodels", "se_resnet50", {"layer1.0.conv1.weight": torch.zeros(1)})


def test_incomplete_or_foreign_sources_are_refused_naming_every_tensor(tmp_path):
    state = _cadene_state()
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


def test_a_snapshot_config_that_cannot_be_used_is_one_line(tmp_path):
    """timm's own snapshots are read in tests/peers/test_timm.py; here, what no snapshot of timm's holds."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    save_file(_torchvision_state("resnet50"), snapshot / "model.safetensors")
    config = {"architecture": "resnet50", "pretrained_cfg": {"tag": "x", "crop_mode": "squash"}}
    (snapshot / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"config.json: timm's configuration cannot be used \(timm's crop_mode"
    ):
        convert_file("timm", "resnet50", snapshot, tmp_path / "out.safetensors")
    (snapshot / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="timm's configuration cannot be used"):
        convert_file("timm", "resnet50", snapshot, tmp_path / "out.safetensors")
    with pytest.raises(ValueError, match="torchvision weights are converted from their file"):
        convert_file("torchvision", "resnet50", snapshot, tmp_path / "out.safetensors")
    with pytest.raises(FileNotFoundError, match="a folder without model.safetensors or pytorch_model.bin"):
        convert_file("timm", "resnet50", tmp_path, tmp_path / "out.safetensors")
