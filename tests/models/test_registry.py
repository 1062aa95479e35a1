import pytest
import torch
from torch import nn

import senet
from senet.models import registry

PAPER_RESNET_FAMILY = [
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "se_resnet50",
    "se_resnet101",
    "se_resnet152",
    "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    "senet154",
]


def test_every_network_of_the_foundation_is_registered():
    assert set(PAPER_RESNET_FAMILY) <= set(senet.list_models())


def test_list_models_filters_by_pattern():
    se_models = senet.list_models("se_*")
    assert "se_resnet50" in se_models and "resnet50" not in se_models
    assert senet.list_models("no_such_*") == []


def test_unknown_name_names_the_closest():
    with pytest.raises(ValueError, match=r"unknown model 'se_resnet05'; closest: se_resnet50"):
        senet.create_model("se_resnet05")


def test_unknown_option_is_one_clear_line():
    with pytest.raises(ValueError, match="resnet50 has no option 'colour'"):
        senet.create_model("resnet50", colour="red")
    with pytest.raises(ValueError, match="resnet50 fixes 'depths' itself"):  # not a raw TypeError
        senet.create_model("resnet50", depths=(1, 1, 1, 1))


def _meta(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return senet.create_model(name, **options)


def _shapes(model: nn.Module) -> dict:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_aliases_build_the_same_network():
    assert senet.model_info("legacy_seresnet50").name == "se_resnet50"
    model = _meta("legacy_seresnet50", num_classes=7)
    assert model.num_classes == 7 and _shapes(model) == _shapes(_meta("se_resnet50", num_classes=7))


@pytest.mark.parametrize("name", ["seresnet18", "seresnet34"])
def test_timm_names_we_do_not_build_exactly_do_not_exist(name):
    # timm rounds the SE width of basic blocks up to a multiple of 8 (64/16 = 4 -> 8): not our se_resnet18/34.
    with pytest.raises(ValueError, match="unknown model"):
        senet.create_model(name)


MODELS = senet.list_models()
PLAIN_WITH_SE_TWIN = [n for n in MODELS if not n.startswith("se_") and f"se_{n}" in MODELS]
# Table 2 and Table 3 print each SE model's gain over its re-implemented baseline in brackets (top-1, top-5):
# a second, independent column of the paper that the registered errors of both twins must reproduce.
PRINTED_GAINS = {
    "resnet50": (1.51, 0.86),
    "resnet101": (0.79, 0.45),
    "resnet152": (0.85, 0.61),
    "resnext50_32x4d": (1.01, 0.41),
    "resnext101_32x4d": (0.48, 0.56),
    "vgg16_bn": (1.80, 1.11),
    "bn_inception": (1.15, 0.75),
    "inception_resnet_v2": (0.57, 0.42),
    "mobilenet": (3.1, 1.7),
    "shufflenet": (1.6, 1.4),  # Table 3
}


@pytest.mark.parametrize("name", list(PRINTED_GAINS))
def test_registered_errors_reproduce_the_papers_printed_gains(name):
    plain, se = senet.model_info(name).paper, senet.model_info(f"se_{name}").paper
    assert plain.top1_err - se.top1_err == pytest.approx(PRINTED_GAINS[name][0], abs=1e-9)
    assert plain.top5_err - se.top5_err == pytest.approx(PRINTED_GAINS[name][1], abs=1e-9)


@pytest.mark.parametrize("name", PLAIN_WITH_SE_TWIN)
def test_se_twins_are_registered_like_their_baselines_and_the_paper_orders_them(name):
    plain, se = senet.model_info(name), senet.model_info(f"se_{name}")
    assert (se.family, se.num_classes) == (plain.family, plain.num_classes)
    assert se.paper.input_size == plain.paper.input_size
    # Every table of the paper reports a lower error and a (slightly) higher cost for the SE model.
    if plain.paper.top1_err is not None and se.paper.top1_err is not None:
        assert se.paper.top1_err < plain.paper.top1_err
    if plain.paper.gflops is not None and se.paper.gflops is not None:
        assert (
            plain.paper.gflops < se.paper.gflops <= plain.paper.gflops * 1.015
        )  # ShuffleNet's +1.4% at most
    blocks = [m for m in _meta(se.name).modules() if isinstance(m, senet.SqueezeExcite)]
    assert blocks and not any(isinstance(m, senet.SqueezeExcite) for m in _meta(name).modules())


@pytest.mark.parametrize("name", senet.list_models())
@pytest.mark.parametrize(
    "option, value, fix",
    [
        ("num_classes", -1, "use num_classes >= 1, or 0 for no classifier"),
        ("in_chans", 0, r"use in_chans >= 1"),
        ("drop_rate", 1.0, r"use a probability in \[0, 1\)"),
        ("drop_rate", -0.1, r"use a probability in \[0, 1\)"),
    ],
)
def test_every_family_refuses_impossible_common_options_in_one_line(name, option, value, fix):
    with pytest.raises(ValueError, match=rf"^{name}: \w+ got {option}={value}; {fix}") as error:
        _meta(name, **{option: value})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", PLAIN_WITH_SE_TWIN)
def test_plain_models_refuse_every_se_option(name):
    for option, value in [("se_reduction", 8), ("se_gate", "tanh"), ("se_bias", False), ("se_stages", None)]:
        with pytest.raises(ValueError, match=f"{name}: {option} given to a network without SE blocks"):
            _meta(name, **{option: value})


# A tiny member of each SE family and an input size it accepts.
TINY_SE = [
    ("se_resnet18", {"widths": (8, 8, 8, 8)}, 32),
    ("se_resnet50", {"widths": (8, 8, 8, 8)}, 32),  # the fused BN + SE training node
    ("se_resnet20_cifar", {"widths": (8, 8, 8)}, 16),  # pre-activation: the SE-only training node
    ("se_resnet164_cifar", {"widths": (4, 4, 4)}, 16),
    ("se_vgg16_bn", {"widths": (8, 8, 16, 16, 16), "mlp_width": 16}, 32),
    ("se_mobilenet", {"units": ((16, 1), (32, 2))}, 16),
    ("se_shufflenet", {"widths": (48, 96, 192)}, 32),
    ("se_bn_inception", {}, 64),
    ("se_inception_resnet_v2", {"depths": (1, 1, 1)}, 75),
    ("se_shake_shake26_2x96d", {"base_width": 8}, 16),
    ("se_shake_even29_2x4x64d", {"base_width": 4}, 16),
]


@pytest.mark.parametrize("name, options, size", TINY_SE)
@pytest.mark.parametrize("training", [True, False])
def test_se_models_take_an_empty_batch_like_their_plain_twin(name, options, size, training):
    # N = 0 happens (the last shard of a data-parallel batch, a filtered batch): forward and backward must
    # run and leave the weights' gradients and BN statistics as the plain twin leaves its own.
    se = senet.create_model(name, num_classes=3, **options).train(training)
    plain = senet.create_model(name[3:], num_classes=3, **options).train(training)
    plain.load_state_dict(se.state_dict(), strict=False)
    for model in (se, plain):
        x = torch.randn(0, 3, size, size, requires_grad=True)
        out = model(x)
        assert out.shape == (0, 3)
        out.sum().backward()
        assert x.grad.shape == x.shape
        assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    plain_state = plain.state_dict()
    for key, value in se.state_dict().items():
        if key in plain_state:
            torch.testing.assert_close(value, plain_state[key], msg=key)


def test_each_description_is_its_builders_whole_summary_where_the_summary_wraps():
    for name in senet.list_models():
        description = senet.model_info(name).description
        assert description.endswith(".") and "\n" not in description, (name, description)
    # Two summaries that wrap over two docstring lines: their first line alone stops mid-sentence.
    assert senet.model_info("senet154").description.endswith("shortcuts and dropout 0.2 (appendix).")
    assert senet.model_info("se_shufflenet").description.endswith("concat (paper Table 3).")


def test_registering_a_name_twice_is_refused():
    from senet.models.registry import register_model

    with pytest.raises(ValueError, match="registered twice"):
        register_model()(senet.model_info("resnet50").builder)


def test_the_registry_builds_randomly_initialised_networks_and_refuses_pretrained(tmp_path):
    assert isinstance(registry.create_model("resnet20_cifar", pretrained=False), nn.Module)
    with pytest.raises(
        ValueError, match=r"randomly initialised.*senet.create_model\('resnet20_cifar', pretrained="
    ):
        registry.create_model("resnet20_cifar", pretrained=str(tmp_path / "w.safetensors"))


def test_a_prefix_family_resolves_its_names_and_refuses_its_options_for_other_models(monkeypatch):
    def resolve(name: str) -> registry.ModelInfo:
        return registry.ModelInfo(
            name, "toy", "", registry.PaperFigures(), (), 3, lambda **o: nn.Linear(2, o["num_classes"])
        )

    def check(info: registry.ModelInfo, options: dict) -> None:
        if "toy_option" in options:
            raise ValueError(f"{info.name} got toy_option, an option of toy:NAME models")

    monkeypatch.setattr(registry, "_PREFIXES", dict(registry._PREFIXES))  # registered for this test only
    registry.register_prefix(registry.PrefixFamily("toy:", resolve, check))
    assert senet.model_info("toy:anything").family == "toy"
    assert senet.create_model("toy:anything").out_features == 3
    with pytest.raises(ValueError, match="resnet20_cifar got toy_option, an option of toy:NAME models"):
        senet.create_model("resnet20_cifar", toy_option=1)
    with pytest.raises(ValueError, match="prefix 'toy:' is registered twice"):
        registry.register_prefix(registry.PrefixFamily("toy:", resolve))
