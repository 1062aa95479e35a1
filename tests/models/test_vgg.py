import pytest
import torch
import torchvision
from torch import nn

import senet
import senet.models.vgg  # noqa: F401  (registers vgg16_bn, se_vgg16_bn)
from senet.analysis.complexity import count_params, model_complexity
from senet.models.vgg import VGG, ReLUThenSE

# Full-size VGG-16 has 138M parameters: build each real one once per module, mutate only tiny ones.
TINY = dict(widths=(8, 8, 16, 16, 16), mlp_width=32)


@pytest.fixture(scope="module")
def vgg16_bn() -> VGG:
    return senet.create_model("vgg16_bn").eval()


def _meta(name: str, **options) -> VGG:
    with torch.device("meta"):
        return senet.create_model(name, **options)


def _close_gates(se: nn.Module) -> None:
    """Make an SE block's gates ~0, so whatever it rescales vanishes."""
    nn.init.zeros_(se.fc2.weight)
    nn.init.constant_(se.fc2.bias, -100.0)


def test_torchvision_vgg16_bn_state_dict_loads_strictly_and_gives_the_same_outputs(vgg16_bn):
    theirs = torchvision.models.vgg16_bn().eval()
    vgg16_bn.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)  # AdaptiveAvgPool2d(7) up-samples the 2x2 map, as torchvision does
    with torch.no_grad():
        torch.testing.assert_close(vgg16_bn(x), theirs(x), rtol=0, atol=0)


def test_vgg16_bn_has_torchvision_exact_parameter_count():
    with torch.device("meta"):
        theirs = count_params(torchvision.models.vgg16_bn())
    assert model_complexity("vgg16_bn").params == theirs == 138_365_992


def test_se_adds_thirteen_blocks_of_the_papers_formula():
    plain, se = model_complexity("vgg16_bn"), model_complexity("se_vgg16_bn")
    widths = [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert se.params - plain.params == sum(2 * c * (c // 16) + c // 16 + c for c in widths) == 230_792


def test_every_model_maps_an_image_to_logits(vgg16_bn):
    se = senet.create_model("se_vgg16_bn", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for model, classes in ((vgg16_bn, 1000), (se, 10)):
            features = model.forward_features(x)
            assert features.shape == (1, model.feature_channels, 1, 1) == (1, 512, 1, 1)
            logits = model(x)
            assert logits.shape == (1, classes) and torch.isfinite(logits).all()


def test_se_keys_add_to_torchvision_keys_at_the_relu_indices():
    plain, se = _meta("vgg16_bn"), _meta("se_vgg16_bn")
    plain_keys, se_keys = set(plain.state_dict()), set(se.state_dict())
    assert plain_keys <= se_keys  # every conv / BN / classifier key keeps its torchvision index
    relu_indices = [i for i, m in enumerate(plain.features) if isinstance(m, nn.ReLU)]
    assert se_keys - plain_keys == {
        f"features.{i}.se.{fc}.{p}" for i in relu_indices for fc in ("fc1", "fc2") for p in ("weight", "bias")
    }
    assert len(relu_indices) == 13
    assert [b.fc1.weight.shape[:2] for b in se.se_blocks()] == [
        (c // 16, c) for c in [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    ]


def test_se_stages_select_the_conv_blocks_between_pools():
    model = _meta("se_vgg16_bn", se_stages=(5,))
    # The ReLUs after the stage-5 convs at torchvision's features.34, .37, .40.
    assert [i for i, m in enumerate(model.features) if isinstance(m, ReLUThenSE)] == [36, 39, 42]


def test_se_acts_after_the_relu_that_follows_each_conv():
    model = senet.create_model("se_vgg16_bn", num_classes=3, **TINY).eval()
    unit = model.features[2]
    assert isinstance(model.features[0], nn.Conv2d) and isinstance(model.features[1], nn.BatchNorm2d)
    y = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(unit(y.clone()), torch.relu(y) * unit.se.gates(torch.relu(y)))
        _close_gates(unit.se)
        assert unit(y.clone()).abs().max() < 1e-30  # the gated ReLU output vanishes
        _close_gates(model.se_blocks()[-1])  # the last conv's output is what forward_features returns
        assert model.forward_features(torch.randn(1, 3, 32, 32)).abs().max() < 1e-30


def test_se_options_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="se_reduction given to a network without SE"):
        senet.create_model("vgg16_bn", se_reduction=8)
    with pytest.raises(ValueError, match="VGG supports se_position .standard., got"):
        _meta("se_vgg16_bn", se_position="post")


def test_forward_head_reset_classifier_drop_rate_and_in_chans():
    model = senet.create_model("se_vgg16_bn", num_classes=5, in_chans=1, **TINY).eval()
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]  # torchvision's default
    x = torch.randn(2, 1, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 16, 1, 1)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features) == (2, 32)
    assert model.get_classifier() is model.classifier[6] and model(x).shape == (2, 5)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    dropped = senet.create_model("vgg16_bn", drop_rate=0.2, **TINY)
    assert [m.p for m in dropped.classifier if isinstance(m, nn.Dropout)] == [0.2, 0.2]


def test_a_training_step_reaches_the_se_blocks():
    model = senet.create_model("se_vgg16_bn", num_classes=4, **TINY).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 3]))
    loss.backward()
    grads = [p.grad for b in model.se_blocks() for p in b.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize(
    "options, fix",
    [
        ({"widths": (8, 8, 16, 16, 0)}, "VGG got widths=.*; use integers >= 1"),
        (
            {"depths": (2, 2, 0, 3, 3)},
            "fixes 'depths' itself",
        ),  # a 0 would keep the stage's pool, drop its width
        ({"mlp_width": 0}, "VGG got mlp_width=0"),
        ({"pool_size": 0}, "VGG got pool_size=0"),
        ({"drop_rate": 1.0}, r"VGG got drop_rate=1.0; use a probability in \[0, 1\)"),
    ],
)
def test_impossible_build_options_are_refused(options, fix):
    with pytest.raises(ValueError, match=fix):
        _meta("vgg16_bn", **options)
    with pytest.raises(ValueError, match="VGG got depths=.*; use integers >= 1"):
        VGG((2, 0), widths=(8, 8), mlp_width=8)
    model = senet.create_model("vgg16_bn", num_classes=2, **TINY)
    with pytest.raises(ValueError, match="VGG got num_classes=-1; use num_classes >= 1, or 0"):
        model.reset_classifier(-1)
