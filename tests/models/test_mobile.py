import copy
import math

import pytest
import torch
from torch import nn

import senet
import senet.models.mobile  # noqa: F401  (registers mobilenet, shufflenet and their SE twins)
from senet.analysis.complexity import model_complexity
from senet.layers.squeeze_excite import SqueezeExcite
from senet.models.mobile import DepthwiseSeparable, ShuffleUnit, channel_shuffle

MOBILE = ["mobilenet", "se_mobilenet", "shufflenet", "se_shufflenet"]


def _close_gates(se: nn.Module) -> None:
    """Make an SE block's gates ~0, so whatever it rescales vanishes."""
    nn.init.zeros_(se.fc2.weight)
    nn.init.constant_(se.fc2.bias, -100.0)


def _randomise_bn(module: nn.Module) -> None:
    """Non-trivial eval-mode BN, so a zero input does not map to a zero output by accident."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.normal_()
            bn.bias.data.normal_()


@pytest.mark.parametrize("name", MOBILE)
def test_every_model_maps_an_image_to_logits(name):
    model = senet.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 64, 64))
        logits = model(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, model.num_features, 2, 2)  # both down-sample 32 times
    assert model.num_features == (1024 if "mobilenet" in name else 960)
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_shufflenet_counts_are_table_3_figures_truncated_and_the_se_delta_is_the_branch_placement():
    plain, se = model_complexity("shufflenet"), model_complexity("se_shufflenet")
    assert plain.params == 1_865_728 and se.params == 2_484_533
    # Table 3 prints every mobile count as if truncated to 0.1M:
    # 4.23 -> 4.2, 4.72 -> 4.7, 1.87 -> 1.8, 2.48 -> 2.4.
    for name in MOBILE:
        c = model_complexity(name)
        assert math.floor(c.params_m * 10) / 10 == c.paper_params, name
    # SE on the branch (widths out - in for stride-2 units) adds (2/r) sum C^2 + biases = 0.62M, Table 3's
    # 2.4 - 1.8 = 0.6M; SE on the unit output would add 0.73M.
    branch = [216] + [240] * 3 + [240] + [480] * 7 + [480] + [960] * 3
    assert se.params - plain.params == sum(2 * c * (c // 16) + c + c // 16 for c in branch) == 618_805
    post = model_complexity("se_shufflenet", se_position="post")
    assert post.params - plain.params == 729_180


def test_se_mobilenet_572_mflops_count_the_rescale_multiplications():
    # Our counter counts conv / FC multiply-adds (569.2M); the paper's 572 also counts the C*H*W products of
    # each SE rescale (2.7M). Documented here so the 3% test above is not mistaken for slack.
    with torch.device("meta"):
        model = senet.create_model("se_mobilenet").eval()
    rescaled = []
    for se in model.modules():
        if isinstance(se, SqueezeExcite):
            se.register_forward_hook(lambda module, args, out: rescaled.append(out.numel()))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224, device="meta"))
    assert round(model_complexity("se_mobilenet").gflops * 1000 + sum(rescaled) / 1e6) == 572


def test_mobilenet_follows_howard_table_1():
    model = senet.create_model("mobilenet")
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 3), (2, 2), 32)
    units = list(model.blocks)
    assert len(units) == 13 and all(isinstance(u, DepthwiseSeparable) for u in units)
    assert [u.conv_pw.out_channels for u in units] == [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    assert [u.conv_dw.stride[0] for u in units] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert all(u.conv_dw.groups == u.conv_dw.in_channels for u in units)


def test_se_mobilenet_has_one_block_per_unit_on_its_output_width():
    model = senet.create_model("se_mobilenet")
    assert [(u.se.fc1.out_channels, u.se.channels) for u in model.blocks] == [
        (c // 16, c) for c in [64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    ]
    # Stages are resolutions: a new one starts at each stride-2 unit; stage 5 is the two 7x7 units.
    last = senet.create_model("se_mobilenet", se_stages=(5,))
    assert [i for i, u in enumerate(last.blocks) if isinstance(u.se, SqueezeExcite)] == [11, 12]


def test_mobilenet_se_rescales_the_output_of_the_pointwise_conv_bn_relu():
    unit = senet.create_model("se_mobilenet").blocks[3].eval()
    _randomise_bn(unit)
    plain = copy.deepcopy(unit)
    plain.se = nn.Identity()
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        out = plain(x)
        torch.testing.assert_close(unit(x), out * unit.se.gates(out))
        _close_gates(unit.se)
        assert out.abs().max() > 0 and unit(x).abs().max() < 1e-30


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    y = torch.randn(2, 12, 3, 3)
    torch.testing.assert_close(channel_shuffle(channel_shuffle(y, 3), 4), y)  # g then C/g is the identity


def test_shufflenet_follows_zhang_table_1():
    model = senet.create_model("shufflenet")
    stages = model.stages()
    assert [len(s) for s in stages] == [4, 8, 4]
    assert (model.stem[0].out_channels, model.stem[0].stride) == (24, (2, 2))
    first = stages[0][0]
    assert first.conv1.groups == 1 and first.conv1.in_channels == 24  # too few channels to split
    units = [u for s in stages for u in s]
    assert all(u.conv1.groups == 3 for u in units[1:]) and all(u.conv3.groups == 3 for u in units)
    assert [s[0].conv2.stride[0] for s in stages] == [2, 2, 2]
    assert all(u.conv2.stride[0] == 1 for s in stages for u in s[1:])
    assert [s[0].conv1.out_channels for s in stages] == [60, 120, 240]  # bottleneck = out / 4
    assert [s[0].conv3.out_channels for s in stages] == [
        216,
        240,
        480,
    ]  # out - in, concatenated to the shortcut
    assert all(u.conv2.groups == u.conv2.in_channels for u in units)


def test_shufflenet_se_rescales_the_residual_branch_before_the_add():
    unit = senet.create_model("se_shufflenet").stage3[1].eval()
    assert isinstance(unit, ShuffleUnit) and unit.se.channels == 480
    _randomise_bn(unit)
    _close_gates(unit.se)
    x = torch.randn(2, 480, 8, 8)
    with torch.no_grad():
        assert unit.branch(x).abs().max() > 0
        torch.testing.assert_close(unit(x), torch.relu(x))  # branch gated off: out = relu(identity)


def test_shufflenet_se_rescales_the_branch_before_the_concat_of_a_stride_2_unit():
    unit = senet.create_model("se_shufflenet").stage3[0].eval()
    assert unit.se.channels == 240  # 480 out - 240 in
    _randomise_bn(unit)
    _close_gates(unit.se)
    x = torch.randn(2, 240, 8, 8)
    with torch.no_grad():
        out = unit(x)
    pooled = nn.functional.avg_pool2d(x, 3, 2, 1)
    torch.testing.assert_close(out, torch.cat((torch.relu(pooled), torch.zeros_like(pooled)), 1))


def test_shufflenet_post_position_rescales_the_unit_output():
    unit = senet.create_model("se_shufflenet", se_position="post").stage3[0].eval()
    assert unit.se.channels == 480
    _close_gates(unit.se)
    with torch.no_grad():
        assert unit(torch.randn(2, 240, 8, 8)).abs().max() < 1e-30


def test_unsupported_se_positions_are_refused():
    with pytest.raises(ValueError, match="MobileNet supports se_position 'standard', got 'post'"):
        senet.create_model("se_mobilenet", se_position="post")
    with pytest.raises(
        ValueError, match="ShuffleNet supports se_position 'standard', 'post', got 'identity'"
    ):
        senet.create_model("se_shufflenet", se_position="identity")
    with pytest.raises(ValueError, match="se_reduction given to a network without SE"):
        senet.create_model("shufflenet", se_reduction=8)


@pytest.mark.parametrize("name", ["se_mobilenet", "se_shufflenet"])
def test_forward_head_reset_classifier_drop_rate_and_in_chans(name):
    model = senet.create_model(name, num_classes=5, in_chans=1, drop_rate=0.3).eval()
    assert model.dropout.p == 0.3 and model.get_classifier() is model.fc
    x = torch.randn(2, 1, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 1, 1)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ["se_mobilenet", "se_shufflenet"])
def test_a_training_step_reaches_every_se_block(name):
    model = senet.create_model(name, num_classes=4).train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 3]))
    loss.backward()
    grads = [p.grad for m in model.modules() if isinstance(m, SqueezeExcite) for p in m.parameters()]
    assert len(grads) == 4 * (13 if "mobilenet" in name else 16)
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize(
    "name, options, fix",
    [
        (
            "mobilenet",
            {"units": ((64, 1), (128, 0))},
            r"MobileNet got units=.*; give \(out_channels, stride\)",
        ),
        ("se_mobilenet", {"stem_width": 0}, "MobileNet got stem_width=0"),
        ("shufflenet", {"depths": (4, 0, 4)}, r"ShuffleNet got depths=\(4, 0, 4\); use integers >= 1"),
        ("se_shufflenet", {"groups": 0}, "ShuffleNet got groups=0"),
        ("shufflenet", {"in_chans": 0}, "ShuffleNet got in_chans=0"),
    ],
)
def test_impossible_build_options_are_refused(name, options, fix):
    with pytest.raises(ValueError, match=f"^{name}: {fix}"):
        senet.create_model(name, **options)
