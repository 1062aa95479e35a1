"""senet against timm's own code: every timm and pretrained-models network that ``senet convert`` takes, with
random weights, converted and loaded the documented way, computes timm's logits; every (model, tag) whose
preprocessing senet records is timm's, transform included; a Hugging Face snapshot's config.json is read as
timm reads it.

pretrained-models (Cadene's ``pretrainedmodels``) is not a dependency: timm's ``legacy_*`` SENets are its
code, ported with its module names (``layer0``, ``se_module``, ``last_linear``), so their state dicts are
pretrained-models files, saved here as those were (``.pth``, without ``num_batches_tracked``, which PyTorch
added after they were published).
"""

from __future__ import annotations

import pytest
import torch
from peer_networks import (
    NUM_CLASSES,
    TOLERANCE,
    assert_same_logits,
    assert_within_one_grey_level,
    convert_and_load,
    inputs,
    photo_image,
    randomise,
    save_source,
)
from PIL import Image

from senet.weights.convert import SOURCES, TIMM_TAGS, convert_file, convert_state, source_model

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_data_config  # noqa: E402

TIMM_MODELS = list(SOURCES["timm"])
CADENE_MODELS = list(SOURCES["pretrainedmodels"])
TAGGED = [(model, tag) for model, tags in TIMM_TAGS.items() for tag in tags]


def _legacy(cadene_name: str) -> str:
    return "legacy_" + cadene_name.replace("se_res", "seres")


@pytest.mark.parametrize("name", [name for name in TIMM_MODELS if not name.startswith("legacy_")])
def test_converted_timm_weights_compute_what_timm_computes(tmp_path, name):
    theirs = randomise(timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES))
    source = save_source(theirs.state_dict(), tmp_path / f"{name}.safetensors")
    ours, _ = convert_and_load("timm", name, source, tmp_path)
    assert_same_logits(ours, theirs)


@pytest.mark.parametrize("name", CADENE_MODELS)
def test_converted_senets_compute_what_their_network_computes(tmp_path, name):
    """pretrained-models' file (a .pth without num_batches_tracked) of timm's legacy_* network, converted and
    loaded; timm's legacy_* name is the same conversion (the same table entry), which gives the same tensors
    and options from timm's own state dict."""
    theirs = randomise(timm.create_model(_legacy(name), pretrained=False, num_classes=NUM_CLASSES))
    state = {k: v for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {"layer0.conv1.weight", "last_linear.weight", "layer1.0.se_module.fc1.weight"} <= set(state)
    ours, info = convert_and_load(
        "pretrainedmodels", name, save_source(state, tmp_path / f"{name}.pth"), tmp_path
    )
    assert_same_logits(ours, theirs)
    as_timm = convert_state("timm", _legacy(name), theirs.state_dict())
    assert (as_timm.entry.model, as_timm.options) == (info.model, info.options)
    loaded = {k: v for k, v in ours.state_dict().items() if v.is_floating_point()}
    assert all(torch.equal(as_timm.state[key], value) for key, value in loaded.items())


@pytest.mark.parametrize(
    "timm_name,paper_name", [("seresnet50", "se_resnet50"), ("seresnext50_32x4d", "se_resnext50_32x4d")]
)
def test_the_comparison_tells_the_layouts_apart(timm_name, paper_name):
    """The same key names and shapes, other layouts: timm's weights in our paper-layout network compute
    something else, far outside the tolerance, which is why conversion records the layout."""
    import senet

    theirs = randomise(timm.create_model(timm_name, pretrained=False, num_classes=NUM_CLASSES))
    x = inputs()
    with torch.no_grad():
        expected = theirs(x)
        for name, same in ((timm_name, True), (paper_name, False)):
            ours = senet.create_model(name, num_classes=NUM_CLASSES).eval()
            ours.load_state_dict(theirs.state_dict())  # strict: nothing tells the layouts apart
            assert bool((ours(x) - expected).abs().max() <= TOLERANCE) is same, name


def test_the_tag_table_is_timms():
    """Every tag timm has for each converted model (those with a classifier), in timm's order: the first is
    timm's default, which the bare name records."""
    from timm.models import get_arch_pretrained_cfgs

    for model in TIMM_MODELS:
        theirs = [cfg.tag for cfg in get_arch_pretrained_cfgs(model).values() if cfg.num_classes]
        assert list(TIMM_TAGS[model]) == theirs, model


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return photo_image()


@pytest.mark.parametrize("model,tag", TAGGED, ids=[f"{m}.{t}" for m, t in TAGGED])
def test_recorded_preprocessing_is_timms_for_every_tag(photo, model, tag):
    _, ours = source_model("timm", f"{model}.{tag}")
    config = resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(f"{model}.{tag}").to_dict())
    assert (ours.input_size, ours.crop_fraction, ours.interpolation) == (
        config["input_size"][-1],
        config["crop_pct"],
        config["interpolation"],
    )
    assert (ours.mean, ours.std) == (tuple(config["mean"]), tuple(config["std"]))
    assert_within_one_grey_level(ours.eval_transform()(photo), create_transform(**config)(photo), ours.std)


@pytest.mark.parametrize("model", TIMM_MODELS)
def test_a_bare_timm_name_records_timms_default_preprocessing(model):
    _, ours = source_model("timm", model)
    with torch.device("meta"):
        config = resolve_data_config(model=timm.create_model(model, pretrained=False))
    expected = (config["input_size"][-1], config["crop_pct"], config["interpolation"])
    assert (ours.input_size, ours.crop_fraction, ours.interpolation) == expected


def test_a_hugging_face_snapshot_gives_its_own_preprocessing(tmp_path, photo):
    """timm's own export (save_for_hf) of resnet50.a1h_in1k: trained at 176 with crop_pct 0.9, which senet
    reads from its config.json rather than from the name given (the bare name is timm's default tag, a1)."""
    from timm.models import save_for_hf
    from timm.models._hub import load_model_config_from_path

    theirs = randomise(timm.create_model("resnet50.a1h_in1k", pretrained=False, num_classes=NUM_CLASSES))
    snapshot = tmp_path / "snapshot"
    save_for_hf(theirs, str(snapshot), safe_serialization=True)
    assert {p.name for p in snapshot.iterdir()} >= {"config.json", "model.safetensors"}

    info = convert_file("timm", "resnet50", snapshot, tmp_path / "r50.safetensors")
    assert info.source["model"] == "resnet50.a1h_in1k"
    pre = info.preprocessing
    assert (pre.input_size, pre.resize, pre.crop_fraction, pre.interpolation) == (176, 195, 0.9, "bicubic")
    pretrained_cfg, _, _ = load_model_config_from_path(snapshot)  # what timm itself reads from the folder
    config = resolve_data_config(pretrained_cfg=pretrained_cfg)
    assert_within_one_grey_level(pre.eval_transform()(photo), create_transform(**config)(photo), pre.std)
    import senet

    assert_same_logits(senet.load_pretrained(tmp_path / "r50.safetensors").eval(), theirs)

    with pytest.raises(ValueError, match="describes timm's resnet50, not seresnet50: give --model resnet50"):
        convert_file("timm", "seresnet50", snapshot, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="describes the tag 'a1h_in1k', not 'a1_in1k'"):
        convert_file("timm", "resnet50.a1_in1k", snapshot, tmp_path / "x.safetensors")


def test_timm_resizes_by_flooring_where_rounding_would_be_a_pixel_off(photo):
    """seresnet50's default (a1_in1k): 224 / 0.95 = 235.8, timm resizes to 235, not 236."""
    _, ours = source_model("timm", "seresnet50")
    config = resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg("seresnet50.a1_in1k").to_dict())
    resize = next(t for t in create_transform(**config).transforms if type(t).__name__ == "Resize")
    assert ours.resize == resize.size == 235


def test_peer_state_dicts_of_the_other_layout_are_refused(tmp_path):
    """timm's seresnet50 and pretrained-models' se_resnet50 have the same tensors once renamed, in other
    layouts: each is refused as the other, in one line that names the right conversion."""
    with torch.device("meta"):
        seresnet = timm.create_model("seresnet50", pretrained=False).state_dict()
        legacy = timm.create_model("legacy_seresnet50", pretrained=False).state_dict()
    for project, name in (("pretrainedmodels", "se_resnet50"), ("timm", "legacy_seresnet50")):
        with pytest.raises(ValueError, match="--from timm --model seresnet50$") as error:
            convert_state(project, name, seresnet)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="--from pretrainedmodels --model se_resnet50 "):
        convert_state("timm", "seresnet50", legacy)


def test_every_source_model_is_a_model_of_timm():
    names = set(timm.list_models())
    assert set(TIMM_MODELS) <= names
    assert {_legacy(name) for name in CADENE_MODELS} <= names
