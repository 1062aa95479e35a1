"""load_pretrained: the one way weights come in. Exact rebuilds, refusals of weights of another network,
fine-tuning heads, and every unreadable file as one line."""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

import senet
from senet.data.transforms import Preprocessing
from senet.train import TrainConfig, train
from senet.weights.checkpoint import load_checkpoint
from senet.weights.info import WeightsInfo, read_weights_file, save_weights_file

TINY = {"widths": [4, 8, 8], "in_chans": 1}  # recorded with the weights: the run config does not repeat it
GREY = Preprocessing((0.5,), (0.25,), 32, 1.0, "bilinear")


@pytest.fixture
def weights_file(tmp_path):
    """A se_resnet20_cifar weights file (5 classes, grey input, tiny widths) and
    the network it was saved from."""
    net = senet.create_model("se_resnet20_cifar", num_classes=5, **TINY).eval()
    info = WeightsInfo(
        "se_resnet20_cifar", dict(TINY), 5, GREY, labels=list("abcde"), source={"project": "test"}
    )
    return save_weights_file(tmp_path / "tiny.safetensors", net.state_dict(), info), net


def test_a_weights_file_rebuilds_its_network_with_the_recorded_options(weights_file):
    path, original = weights_file
    net = senet.load_pretrained(path).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(net(x), original(x))
    assert net.pretrained_info.labels == list("abcde") and net.pretrained_info.preprocessing == GREY
    assert torch.equal(senet.create_model("se_resnet20_cifar", pretrained=path).eval()(x), original(x))
    record, no_tensors = read_weights_file(path, tensors=False)  # the header alone: what a run's start reads
    assert record == net.pretrained_info and no_tensors == {}


def test_weights_of_another_network_or_contradicting_options_are_refused(weights_file):
    path, _ = weights_file
    with pytest.raises(ValueError, match="holds se_resnet20_cifar weights, not resnet20_cifar"):
        senet.create_model("resnet20_cifar", pretrained=path)
    with pytest.raises(ValueError, match=r"widths=\[4, 8, 8\]; widths=\(4, 8, 16\) would compute"):
        senet.load_pretrained(path, widths=(4, 8, 16))
    assert senet.load_pretrained(path, widths=(4, 8, 8), drop_rate=0.5).dropout.p == 0.5  # agreeing: fine


@pytest.fixture(scope="module")
def seresnet50_file(tmp_path_factory):
    """timm's seresnet50 (our seresnet50 has its key names) converted, and the network it came from."""
    from senet.weights.convert import convert_file

    folder = tmp_path_factory.mktemp("seresnet50")
    source = senet.create_model("seresnet50", num_classes=5).eval()
    save_file(source.state_dict(), folder / "seresnet50.safetensors")
    path = folder / "converted.safetensors"
    return path, convert_file("timm", "seresnet50", folder / "seresnet50.safetensors", path), source


def test_a_layout_option_that_contradicts_the_weights_is_refused(seresnet50_file):
    """The file records timm's layout even though it is seresnet50's default, so a caller cannot change it."""
    path, _, _ = seresnet50_file
    for option, value in (("stride_in_1x1", True), ("stem_pool", "caffe"), ("se_gate", "tanh")):
        with pytest.raises(ValueError, match=f"holds weights for {option}=.*would compute something else"):
            senet.create_model("seresnet50", pretrained=path, **{option: value})
    assert senet.load_pretrained(path, stride_in_1x1=False, stem_pool="torchvision").fc.out_features == 5


def _old_record(info: WeightsInfo, options: dict) -> dict:
    """``info`` as versions before the full option set and the integer resize wrote it."""
    record = info.as_dict() | {"options": options}
    record["preprocessing"].pop("resize", None)
    return record


def test_files_of_earlier_versions_load_and_refuse_what_contradicts_their_builder_defaults(
    tmp_path, seresnet50_file
):
    """Earlier versions left out the options equal to the builder's defaults (and the resize): the model name
    implies them, and a contradicting option is refused all the same."""
    _, info, source = seresnet50_file
    old = tmp_path / "old.safetensors"
    save_file(source.state_dict(), old, metadata={"senet": json.dumps(_old_record(info, {}))})
    net = senet.load_pretrained(old).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(net(x), source(x))
    assert net.pretrained_info.preprocessing.resize == 235  # a timm file: floor(224 / 0.95), as timm resizes
    with pytest.raises(
        ValueError, match="stride_in_1x1=False \\(the default of seresnet50, which the record"
    ):
        senet.create_model("seresnet50", pretrained=old, stride_in_1x1=True)
    with pytest.raises(ValueError, match="holds weights for se_position='standard'"):
        senet.load_pretrained(old, se_position="post")
    assert senet.load_pretrained(old, stride_in_1x1=False).fc.out_features == 5

    paper = tmp_path / "paper.safetensors"  # a se_resnet50 converted from pretrained-models' file
    record = _old_record(info, {}) | {"model": "se_resnet50", "source": {"project": "pretrainedmodels"}}
    save_file(
        senet.create_model("se_resnet50", num_classes=5).state_dict(),
        paper,
        metadata={"senet": json.dumps(record)},
    )
    with pytest.raises(ValueError, match="holds weights for stride_in_1x1=True"):
        senet.load_pretrained(paper, stride_in_1x1=False)
    assert senet.load_pretrained(paper).pretrained_info.preprocessing.resize == 236  # what it resized to then


def test_another_class_count_gets_a_new_head_and_says_so(weights_file, caplog):
    path, original = weights_file
    with caplog.at_level(logging.WARNING, logger="senet.weights"):
        net = senet.create_model("se_resnet20_cifar", num_classes=3, pretrained=path)
    assert net.fc.out_features == 3 and net.pretrained_info.labels is None
    assert "new classifier fc (5 -> 3 classes)" in caplog.text
    kept = {k: v for k, v in original.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(net.state_dict()[k], v) for k, v in kept.items())


def test_unreadable_files_are_one_line_naming_the_file_and_the_fix(tmp_path, weights_file):
    path, _ = weights_file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:2000])
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, bare)
    pth = tmp_path / "resnet50.pth"
    torch.save({"w": torch.zeros(2)}, pth)
    cases = {
        cut: "not a readable safetensors file",
        bare: "no senet record",
        pth: "senet convert --from",
        tmp_path / "missing.safetensors": "no checkpoint in",
        tmp_path: "no checkpoint in",  # a directory without a run
    }
    for source, expected in cases.items():
        with pytest.raises((ValueError, FileNotFoundError)) as error:
            senet.load_pretrained(source)
        assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_damaged_record_is_refused(tmp_path):
    info = WeightsInfo("se_resnet20_cifar", {}, 10, GREY, labels=["only", "two"])
    with pytest.raises(ValueError, match="2 labels for 10 classes"):
        save_weights_file(tmp_path / "x.safetensors", {"w": torch.zeros(1)}, info)
        read_weights_file(tmp_path / "x.safetensors")
    record = info.as_dict() | {"preprocessing": {"mean": [0.5]}, "labels": None}
    save_file({"w": torch.zeros(1)}, tmp_path / "y.safetensors", metadata={"senet": json.dumps(record)})
    with pytest.raises(ValueError, match="preprocessing record has fields"):
        read_weights_file(tmp_path / "y.safetensors")


def _config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        model="se_resnet20_cifar",
        data="digits",
        epochs=1,
        batch_size=128,
        output=str(tmp_path / "run"),
        log_interval=0,
        device="cpu",
    )
    return TrainConfig(**{**values, **overrides})


def test_fine_tuning_records_the_weights_options_so_the_run_resumes_and_loads(tmp_path, weights_file):
    path, original = weights_file
    result = train(_config(tmp_path, pretrained=str(path)))  # digits: 10 classes, the file has 5
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["model_options"] == {"widths": [4, 8, 8]} and saved["pretrained"] == str(path)
    path.unlink()  # a resumed run needs its own checkpoint only
    train(_config(tmp_path, pretrained=str(path), epochs=2), resume=result.run_dir, extend_schedule=True)
    net = senet.load_pretrained(result.run_dir)
    checkpoint = load_checkpoint(result.run_dir)
    assert checkpoint.meta["epoch"] == 2 and net.fc.out_features == 10
    assert all(torch.equal(net.state_dict()[k], v) for k, v in checkpoint.model_state().items())
    info = net.pretrained_info
    assert info.labels == [str(d) for d in range(10)] and info.preprocessing.in_chans == 1
    best = senet.load_pretrained(result.run_dir, weights="best")
    assert best.fc.out_features == 10


def test_fine_tuning_refuses_weights_of_another_model(tmp_path, weights_file):
    path, _ = weights_file
    with pytest.raises(ValueError, match="holds se_resnet20_cifar weights, not resnet20_cifar"):
        train(_config(tmp_path, model="resnet20_cifar", pretrained=str(path)))


def _drop_build_options(run_dir):
    """Make ``run_dir`` a run of an earlier version, whose checkpoints do not record their build options."""
    for path in run_dir.glob("checkpoint-*.json"):
        meta = json.loads(path.read_text())
        del meta["build_options"]
        path.write_text(json.dumps(meta))


def test_a_run_records_its_build_options_and_one_of_an_earlier_version_loads_the_same_network(tmp_path):
    options = {"widths": [4, 8, 8], "se_reduction": 2}
    result = train(_config(tmp_path, model_options=options, drop_rate=0.25))  # digits: 10 classes, grey
    built_with = {**options, "drop_rate": 0.25, "in_chans": 1}  # what the engine passed the builder
    assert load_checkpoint(result.run_dir).meta["build_options"] == built_with
    x = torch.randn(3, 1, 8, 8)
    now = senet.load_pretrained(result.run_dir).eval()
    _drop_build_options(result.run_dir)
    assert "build_options" not in load_checkpoint(result.run_dir).meta
    earlier = senet.load_pretrained(result.run_dir).eval()
    assert now.pretrained_info.options == earlier.pretrained_info.options == built_with
    assert now.dropout.p == earlier.dropout.p == 0.25 and earlier.layer1[0].se.fc1.out_channels == 2
    assert earlier.state_dict().keys() == now.state_dict().keys()
    assert all(torch.equal(earlier.state_dict()[k], v) for k, v in now.state_dict().items())
    assert torch.equal(earlier(x), now(x))
