import functools

import pytest
import torch
from torch import nn

import senet
import senet.models.inception  # noqa: F401  (registers the Inception families until models/__init__ does)
from senet.analysis.complexity import model_complexity
from senet.models.inception import BN_INCEPTION_MODULES, InceptionResNetBlock

BN_INCEPTION = ["bn_inception", "se_bn_inception"]
IRV2 = ["inception_resnet_v2", "se_inception_resnet_v2"]
FEATURES = {
    "bn_inception": (1024, 7),
    "se_bn_inception": (1024, 7),
    "inception_resnet_v2": (1536, 8),
    "se_inception_resnet_v2": (1536, 8),
}  # (channels, side) of the last feature map at the paper's size


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These forwards are tiny: one intra-op thread is as fast, and spares a
    loaded machine's OpenMP spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _complexity(name: str, **options):
    return model_complexity(name, **options)


def _close_gates(se: nn.Module, bias: float = -100.0) -> None:
    """Set an SE block's gates to sigmoid(bias) for every input: ~0 for -100, ~1 for +100."""
    nn.init.zeros_(se.fc2.weight)
    nn.init.constant_(se.fc2.bias, bias)


def test_cadenes_spelling_builds_the_same_network():
    with torch.device("meta"):
        ours, cadene = senet.create_model("bn_inception"), senet.create_model("bninception")
    shapes = [{k: v.shape for k, v in model.state_dict().items()} for model in (ours, cadene)]
    assert shapes[0] == shapes[1]


@pytest.mark.parametrize(
    "name, options, fix",
    [
        ("inception_resnet_v2", {"depths": (10, -1, 10)}, r"InceptionResNetV2 got depths=\(10, -1, 10\)"),
        ("se_inception_resnet_v2", {"in_chans": 0}, "InceptionResNetV2 got in_chans=0"),
        ("bn_inception", {"drop_rate": 1.5}, "BNInception got drop_rate=1.5"),
        ("se_bn_inception", {"num_classes": -1}, "BNInception got num_classes=-1"),
    ],
)
def test_impossible_build_options_are_refused(name, options, fix):
    with pytest.raises(ValueError, match=f"^{name}: {fix}"):
        senet.create_model(name, **options)


@pytest.mark.parametrize("name", BN_INCEPTION + IRV2)
def test_shapes_at_the_paper_input_size(name):
    # Shapes propagate on the meta device for free, so 299x299 costs nothing here.
    size = senet.model_info(name).paper.input_size
    with torch.device("meta"):
        model = senet.create_model(name).eval()
        features = model.forward_features(torch.zeros(1, 3, size, size))
        logits = model.forward_head(features)
    channels, side = FEATURES[name]
    assert model.num_features == channels
    assert features.shape == (1, channels, side, side) and logits.shape == (1, 1000)


@pytest.mark.parametrize(
    "name, size, side",
    [
        ("se_bn_inception", 224, 7),
        ("bn_inception", 64, 2),
        ("se_inception_resnet_v2", 299, 8),
        ("inception_resnet_v2", 75, 1),  # the smallest input the unpadded stride-2 layers accept
    ],
)
def test_a_real_forward_gives_finite_logits(name, size, side):
    model = senet.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, size, size))
        logits = model.forward_head(features)
    assert features.shape == (1, model.num_features, side, side)
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_parameter_counts_of_the_released_models():
    # SE-BN-Inception: the released prototxt (no conv biases), 11.93M in reference Sec. 9.
    assert _complexity("se_bn_inception").params == 11_931_622
    # The biased convs of Cadene's bninception port add one bias per conv output channel.
    convs = [m for m in senet.create_model("bn_inception").modules() if isinstance(m, nn.Conv2d)]
    biased = _complexity("bn_inception", conv_bias=True).params
    assert biased - _complexity("bn_inception").params == sum(c.out_channels for c in convs)


def test_inception_resnet_v2_has_timms_55_8m_parameters():
    assert _complexity("inception_resnet_v2").params == 55_843_464


def test_inception_resnet_v2_costs_timms_13_2_gmacs():
    # The faithful network costs what timm publishes (13.2 GMACs at 299), not the paper's 11.75; the SE
    # blocks add their FCs' 2 * C * C/16 multiply-adds on 10 x 320, 20 x 1088, 10 x 2080 channels, exactly
    # (0.0085 GFLOPs: the paper's 11.76 - 11.75 = 0.01, rounded).
    plain, se = _complexity("inception_resnet_v2"), _complexity("se_inception_resnet_v2")
    assert round(plain.gflops, 1) == 13.2
    se_macs = sum(n * 2 * c * (c // 16) for n, c in [(10, 320), (20, 1088), (10, 2080)])
    assert round((se.gflops - plain.gflops) * 1e9) == se_macs == 8_495_360


def test_se_bn_inception_hidden_widths_match_the_released_prototxt():
    model = senet.create_model("se_bn_inception")
    widths = {
        spec.name: getattr(model, f"inception_{spec.name}").se.fc1.weight.shape[:2]
        for spec in BN_INCEPTION_MODULES
    }
    assert widths == {
        "3a": (16, 256),
        "3b": (20, 320),
        "3c": (36, 576),
        "4a": (36, 576),
        "4b": (36, 576),
        "4c": (38, 608),
        "4d": (38, 608),
        "4e": (66, 1056),
        "5a": (64, 1024),
        "5b": (64, 1024),
    }


def test_se_rescales_the_whole_concatenation_of_an_inception_module():
    se_model = senet.create_model("se_bn_inception").eval()
    plain = senet.create_model("bn_inception").eval()
    plain.load_state_dict(se_model.state_dict(), strict=False)  # same branch weights, SE aside
    for name, x in [("inception_3a", torch.randn(2, 192, 8, 8)), ("inception_3c", torch.randn(2, 320, 8, 8))]:
        se_module, plain_module = getattr(se_model, name), getattr(plain, name)
        with torch.no_grad():
            _close_gates(se_module.se, -100.0)
            # Every channel vanishes, the pass-through max-pool channels of stride-2 module 3c included.
            assert torch.count_nonzero(se_module(x)) == 0
            _close_gates(se_module.se, 100.0)  # gates ~1: the module is the plain module
            torch.testing.assert_close(se_module(x), plain_module(x))


def test_se_inception_resnet_block_gates_only_the_residual_branch():
    model = senet.create_model("se_inception_resnet_v2").eval()
    x = torch.randn(2, 320, 5, 5)
    block = model.repeat[0]
    _close_gates(block.se)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))  # branch gated off: relu(identity)
    last = model.block8  # the last block has no ReLU: the identity passes unchanged
    y = torch.randn(2, 2080, 3, 3)
    _close_gates(last.se)
    with torch.no_grad():
        torch.testing.assert_close(last(y), y)


def test_se_sees_the_unscaled_branch_output():
    block = senet.create_model("se_inception_resnet_v2").repeat_1[0].eval()
    seen = []
    block.se.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = torch.randn(2, 1088, 5, 5)
    with torch.no_grad():
        out = block(x)
        branch = block.conv2d(block.concat(x))
        torch.testing.assert_close(seen[0], branch)
        torch.testing.assert_close(out, torch.relu(x + 0.10 * block.se(branch)))


def test_se_inception_resnet_v2_widths_and_placement():
    model = senet.create_model("se_inception_resnet_v2")
    blocks = model.residual_blocks()
    assert len(blocks) == 40
    widths = {tuple(b.se.fc1.weight.shape[:2]) for b in blocks}
    assert widths == {(20, 320), (68, 1088), (130, 2080)}
    assert not any(hasattr(m, "se") for m in (model.mixed_5b, model.mixed_6a, model.mixed_7a))


def test_inception_resnet_v2_layout_of_the_released_network():
    model = senet.create_model("inception_resnet_v2")
    assert [len(model.repeat), len(model.repeat_1), len(model.repeat_2)] == [10, 20, 9]
    assert {b.scale for b in model.repeat} == {0.17} and {b.scale for b in model.repeat_1} == {0.10}
    assert (
        {b.scale for b in model.repeat_2} == {0.20}
        and model.block8.scale == 1.0
        and model.block8.relu is None
    )
    assert all(
        isinstance(b, InceptionResNetBlock) and b.relu is not None for b in model.residual_blocks()[:-1]
    )
    assert model.dropout.p == 0.2  # the original paper's keep-0.8 dropout
    keys = set(model.state_dict())
    for key in [
        "conv2d_1a.conv.weight",
        "mixed_5b.branch3.1.conv.weight",
        "mixed_6a.branch1.2.bn.running_var",
        "repeat.9.conv2d.bias",
        "repeat_1.19.branch1.2.conv.weight",
        "block8.conv2d.weight",
        "conv2d_7b.bn.weight",
        "classif.weight",
    ]:
        assert key in keys, key  # timm's names


def test_se_twins_only_add_se_keys():
    for plain_name, se_name in [
        ("bn_inception", "se_bn_inception"),
        ("inception_resnet_v2", "se_inception_resnet_v2"),
    ]:
        plain = set(senet.create_model(plain_name).state_dict())
        se = set(senet.create_model(se_name).state_dict())
        assert plain <= se and all(".se.fc1." in k or ".se.fc2." in k for k in se - plain)


def test_se_stages_select_module_groups():
    model = senet.create_model("se_bn_inception", se_stages=(2,))
    assert [m.se is not None for m in model.inception_modules()] == [False] * 3 + [True] * 5 + [False] * 2
    irv2 = senet.create_model("se_inception_resnet_v2", se_stages=(3,))
    assert [b.se is not None for b in irv2.residual_blocks()] == [False] * 30 + [True] * 10


def test_se_options_reach_the_blocks_and_bad_ones_are_refused():
    model = senet.create_model("se_bn_inception", se_reduction=8, se_bias=False)
    assert model.inception_3a.se.fc1.weight.shape[0] == 32 and model.inception_3a.se.fc1.bias is None
    with pytest.raises(ValueError, match="se_reduction given to a network without SE"):
        senet.create_model("inception_resnet_v2", se_reduction=8)
    with pytest.raises(ValueError, match="supports se_position .standard., got"):
        senet.create_model("se_inception_resnet_v2", se_position="post")


@pytest.mark.parametrize("name, size", [("se_bn_inception", 64), ("se_inception_resnet_v2", 75)])
def test_build_options_forward_features_and_reset_classifier(name, size):
    model = senet.create_model(
        name, num_classes=5, in_chans=1, drop_rate=0.3, **({"depths": (1, 1, 1)} if "resnet" in name else {})
    ).eval()
    assert model.dropout.p == 0.3 and model.num_classes == 5
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[:2] == (1, model.num_features)
        assert model.forward_head(features, pre_logits=True).shape == (1, model.num_features)
        assert model(x).shape == (1, 5)
        model.reset_classifier(3)
        assert (
            model.num_classes == 3 and model(x).shape == (1, 3) and model.get_classifier().out_features == 3
        )
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity) and model(x).shape == (1, model.num_features)


@pytest.mark.parametrize(
    "name, size, options",
    [
        ("se_bn_inception", 64, {}),
        ("se_inception_resnet_v2", 75, {"depths": (1, 1, 1)}),  # one block of each type keeps the step fast
    ],
)
def test_a_training_step_reaches_the_se_blocks(name, size, options):
    model = senet.create_model(name, num_classes=4, **options).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, size, size)), torch.tensor([0, 3]))
    loss.backward()
    se_blocks = [m for m in model.modules() if isinstance(m, senet.SqueezeExcite)]
    assert se_blocks and all(
        b.fc1.weight.grad is not None and torch.isfinite(b.fc1.weight.grad).all() for b in se_blocks
    )
