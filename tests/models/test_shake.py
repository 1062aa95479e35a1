import pytest
import torch
import torch.nn.functional as F
from torch import nn

import senet
import senet.models.shake  # noqa: F401  (registers the family until models/__init__ imports it)
from senet.analysis.complexity import model_complexity
from senet.models.shake import ShakeBlock, ShakeShake, ShakeShortcut, shake_shake

SHAKE_FAMILY = [
    "shake_shake26_2x96d",
    "se_shake_shake26_2x96d",
    "shake_even29_2x4x64d",
    "se_shake_even29_2x4x64d",
]
TINY = {
    "shake_shake26_2x96d": 8,
    "se_shake_shake26_2x96d": 8,
    "shake_even29_2x4x64d": 4,
    "se_shake_even29_2x4x64d": 4,
}


def _tiny(name: str, **options) -> nn.Module:
    return senet.create_model(name, base_width=TINY[name], **options)


def _randomise_bn(module: nn.Module) -> None:
    """Non-trivial eval-mode BatchNorm, so hand-computed outputs test the real arithmetic."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _basic_branch_by_hand(x: torch.Tensor, b: nn.Sequential, stride: int) -> torch.Tensor:
    out = F.relu(_bn(F.conv2d(F.relu(x), b.conv1.weight, stride=stride, padding=1), b.bn1))
    return _bn(F.conv2d(out, b.conv2.weight, padding=1), b.bn2)


def _shifted_shortcut_by_hand(x: torch.Tensor, s: ShakeShortcut) -> torch.Tensor:
    x = F.relu(x)
    shifted = torch.zeros_like(x)
    shifted[:, :, 1:, 1:] = x[
        :, :, :-1, :-1
    ]  # one pixel right and down, as Gastaldi's SpatialZeroPadding(1,-1,1,-1)
    stride = s.stride
    paths = [
        F.conv2d(x[:, :, ::stride, ::stride], s.conv1.weight),
        F.conv2d(shifted[:, :, ::stride, ::stride], s.conv2.weight),
    ]
    return _bn(torch.cat(paths, 1), s.bn)


def _close_gates(block: ShakeBlock) -> None:
    nn.init.zeros_(block.se.fc2.weight)
    nn.init.constant_(block.se.fc2.bias, -100.0)


@pytest.mark.parametrize("name", SHAKE_FAMILY)
def test_every_model_maps_a_batch_to_logits_in_train_and_eval(name):
    model = _tiny(name)
    classes = senet.model_info(name).num_classes
    assert model.num_classes == classes == (100 if "even29" in name else 10)
    x = torch.randn(2, 3, 32, 32)
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            features = model.forward_features(x)
            logits = model(x)
        assert features.shape == (2, model.num_features, 8, 8)  # two down-samplings
        assert logits.shape == (2, classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "plain, stages",
    [
        ("shake_shake26_2x96d", [(4, 96), (4, 192), (4, 384)]),
        ("shake_even29_2x4x64d", [(3, 256), (3, 512), (3, 1024)]),
    ],
)
def test_se_adds_the_papers_parameter_formula_on_block_outputs(plain, stages):
    # One SE block per block, on the combined residual: C = the block's output width, r = 16, FC biases.
    extra = model_complexity("se_" + plain).params - model_complexity(plain).params
    assert extra == sum(n * (2 * c * c // 16 + c + c // 16) for n, c in stages)


def test_full_size_layouts_follow_gastaldi():
    with torch.device("meta"):
        cifar10 = senet.create_model("shake_shake26_2x96d")
        cifar100 = senet.create_model("shake_even29_2x4x64d")
    assert cifar10.conv1.out_channels == 16 and [len(s) for s in cifar10.stages()] == [4, 4, 4]
    assert [s[0].branch1.conv2.out_channels for s in cifar10.stages()] == [96, 192, 384]
    assert all(
        s[0].shortcut.shifted and s[1].shortcut is None for s in cifar10.stages()
    )  # 16 -> 96 projects too
    assert [s[0].branch1.conv1.stride for s in cifar10.stages()] == [(1, 1), (2, 2), (2, 2)]
    assert cifar10.num_features == 384 and cifar10.layer1[0].shake_backward == "shake"

    assert cifar100.conv1.out_channels == 64 and [len(s) for s in cifar100.stages()] == [3, 3, 3]
    convs = [
        (b.conv2.in_channels, b.conv2.groups, b.conv3.out_channels)
        for b in (s[0].branch2 for s in cifar100.stages())
    ]
    assert convs == [(256, 4, 256), (512, 4, 512), (1024, 4, 1024)]  # 4 groups of 64/128/256
    assert [s[0].branch1.conv2.stride for s in cifar100.stages()] == [(1, 1), (2, 2), (2, 2)]
    assert all(not s[0].shortcut.shifted for s in cifar100.stages())
    assert cifar100.num_features == 1024 and cifar100.layer1[0].shake_backward == "even"  # Shake-Even


def test_shifted_shortcut_sees_the_pixels_the_first_path_skips():
    shortcut = ShakeShortcut(1, 2, stride=2, shifted=True).eval()
    nn.init.ones_(shortcut.conv1.weight)
    nn.init.ones_(shortcut.conv2.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4) - 2.0
    with torch.no_grad():
        out = shortcut(x) * (1 + shortcut.bn.eps) ** 0.5  # undo the eval BN's eps
    relu = F.relu(x)[0, 0]
    torch.testing.assert_close(out[0, 0], relu[::2, ::2])
    torch.testing.assert_close(
        out[0, 1], torch.tensor([[0.0, 0.0], [0.0, relu[1, 1]]])
    )  # x[2i-1, 2j-1], zero-padded


@pytest.mark.parametrize("stage, index", [(2, 0), (1, 1)])  # a shifted-shortcut block and an identity one
def test_eval_basic_block_is_the_mean_of_the_branches_computed_by_hand(stage, index):
    model = _tiny("shake_shake26_2x96d")
    _randomise_bn(model)
    block = getattr(model, f"layer{stage}")[index].eval()
    channels = block.branch1.conv1.in_channels
    x = torch.randn(2, channels, 16, 16)
    stride = block.branch1.conv1.stride[0]
    with torch.no_grad():
        out1, out2 = block(x), block(x)
        shortcut = x if block.shortcut is None else _shifted_shortcut_by_hand(x, block.shortcut)
        expected = 0.5 * (
            _basic_branch_by_hand(x, block.branch1, stride) + _basic_branch_by_hand(x, block.branch2, stride)
        )
        expected = expected + shortcut  # no ReLU after the sum: the next branch starts with one
    assert torch.equal(out1, out2)
    torch.testing.assert_close(out1, expected, rtol=1e-4, atol=1e-5)


def test_eval_bottleneck_block_is_the_mean_of_the_branches_then_relu():
    model = _tiny("shake_even29_2x4x64d")
    _randomise_bn(model)
    block = model.layer2[0].eval()
    x = torch.relu(torch.randn(2, block.branch1.conv1.in_channels, 16, 16))
    with torch.no_grad():
        branches = []
        for b in (block.branch1, block.branch2):
            out = F.relu(_bn(F.conv2d(x, b.conv1.weight), b.bn1))
            out = F.relu(_bn(F.conv2d(out, b.conv2.weight, stride=2, padding=1, groups=4), b.bn2))
            branches.append(_bn(F.conv2d(out, b.conv3.weight), b.bn3))
        shortcut = _bn(F.conv2d(x, block.shortcut.conv1.weight, stride=2), block.shortcut.bn)
        torch.testing.assert_close(
            block(x), F.relu(0.5 * (branches[0] + branches[1]) + shortcut), rtol=1e-4, atol=1e-5
        )


def test_training_forward_is_random_per_seed_and_reproducible():
    model = _tiny("shake_shake26_2x96d").train()
    x = torch.randn(2, 3, 32, 32)

    def run(seed):
        torch.manual_seed(seed)
        return model(x)

    with torch.no_grad():
        a, b, c = run(0), run(1), run(0)
        model.eval()
        d, e = model(x), model(x)
    assert not torch.allclose(a, b)
    assert torch.equal(a, c)
    assert torch.equal(d, e)


def test_shake_function_scales_gradients_by_beta_not_alpha():
    x1, x2 = torch.randn(3, 2, 4, 4, requires_grad=True), torch.randn(3, 2, 4, 4, requires_grad=True)
    alpha = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1)
    beta = torch.tensor([0.7, 0.2, 0.4]).view(3, 1, 1, 1)
    out = ShakeShake.apply(x1, x2, alpha, beta)
    torch.testing.assert_close(out, alpha * x1 + (1 - alpha) * x2)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(x1.grad, beta * grad)
    torch.testing.assert_close(x2.grad, (1 - beta) * grad)


@pytest.mark.parametrize("backward", ["shake", "even", "keep"])
def test_shake_shake_draws_alpha_then_an_independent_beta_per_image(backward):
    x1, x2 = torch.randn(4, 2, 3, 3, requires_grad=True), torch.randn(4, 2, 3, 3, requires_grad=True)
    torch.manual_seed(7)
    alpha, fresh = torch.rand(4, 1, 1, 1), torch.rand(4, 1, 1, 1)  # what shake_shake draws, in this order
    torch.manual_seed(7)
    out = shake_shake(x1, x2, training=True, backward=backward)
    torch.testing.assert_close(out, alpha * x1 + (1 - alpha) * x2)
    out.backward(torch.ones_like(out))
    beta = {"shake": fresh, "even": torch.full_like(alpha, 0.5), "keep": alpha}[backward]
    torch.testing.assert_close(x1.grad, beta.expand_as(x1))
    torch.testing.assert_close(x2.grad, (1 - beta).expand_as(x2))
    assert len(set(alpha.flatten().tolist())) == 4  # one coefficient per image
    if backward == "shake":
        assert not torch.allclose(x1.grad, alpha.expand_as(x1))


def test_batch_level_and_even_forward():
    x1, x2 = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    torch.manual_seed(0)
    alpha = torch.rand(1).item()
    torch.manual_seed(0)
    torch.testing.assert_close(shake_shake(x1, x2, True, level="batch"), alpha * x1 + (1 - alpha) * x2)
    torch.testing.assert_close(shake_shake(x1, x2, True, forward="even"), 0.5 * (x1 + x2))
    torch.testing.assert_close(shake_shake(x1, x2, False), 0.5 * (x1 + x2))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("se_shake_shake26_2x96d", lambda x, block: block.shortcut(x)),  # basic blocks: no ReLU after the sum
        ("se_shake_even29_2x4x64d", lambda x, block: torch.relu(block.shortcut(x))),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_closed_se_gates_leave_only_the_shortcut(name, expected, training):
    block = _tiny(name).layer2[0].train(training)
    _close_gates(block)
    x = torch.randn(2, block.branch1.conv1.in_channels, 16, 16)
    torch.manual_seed(0)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected(x, block))


@pytest.mark.parametrize("name", ["se_shake_shake26_2x96d", "se_shake_even29_2x4x64d"])
def test_se_sees_the_combined_residual_at_block_output_width(name):
    model = _tiny(name).eval()
    block = model.layer3[1]
    assert block.se.channels == model.num_features
    seen = []
    block.se.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = torch.randn(2, model.num_features, 8, 8).relu()
    with torch.no_grad():
        block(x)
        torch.testing.assert_close(seen[0], 0.5 * (block.branch1(x) + block.branch2(x)))


def test_se_options_stages_and_refusals():
    model = _tiny("se_shake_shake26_2x96d", se_stages=(3,), se_reduction=4)
    assert [stage[0].se is not None for stage in model.stages()] == [False, False, True]
    assert model.layer3[0].se.fc1.out_channels == 32 // 4
    with pytest.raises(ValueError, match="Shake-Shake supports se_position .standard., got"):
        _tiny("se_shake_shake26_2x96d", se_position="post")
    with pytest.raises(ValueError, match="without SE"):
        _tiny("shake_shake26_2x96d", se_reduction=8)
    with pytest.raises(ValueError, match="shake_backward"):
        _tiny("shake_shake26_2x96d", shake_backward="wobble")
    with pytest.raises(ValueError, match="has no option"):
        _tiny("shake_shake26_2x96d", colour="red")
    with pytest.raises(ValueError, match="ShakeResNet got base_width=0; use integers >= 1"):
        senet.create_model("shake_even29_2x4x64d", base_width=0)
    with pytest.raises(ValueError, match="ShakeResNet got stem_width=0"):
        _tiny("shake_shake26_2x96d", stem_width=0)
    with pytest.raises(ValueError, match="basic branches take no inner_widths or groups"):  # would be ignored
        _tiny("shake_shake26_2x96d", groups=4)


def test_forward_features_options_and_reset_classifier():
    model = _tiny("se_shake_shake26_2x96d", num_classes=5, in_chans=1, drop_rate=0.3).eval()
    assert model.dropout.p == 0.3 and model.get_classifier().out_features == 5
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (1, 32, 8, 8) and (features >= 0).all()  # the final ReLU
        torch.testing.assert_close(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (1, 32)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (1, 3)
    model.reset_classifier(0)
    assert isinstance(model.fc, nn.Identity) and model(x).shape == (1, model.num_features)


@pytest.mark.parametrize("name", ["se_shake_shake26_2x96d", "se_shake_even29_2x4x64d"])
def test_a_training_step_reaches_both_branches_and_the_se_block(name):
    model = _tiny(
        name, num_classes=4, se_reduction=4
    ).train()  # r = 16 would leave 8 channels a dead 1-wide FC
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.layer1[0].branch2.conv1.weight.detach().clone()
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    block = model.layer1[0]
    for param in (
        block.branch1.conv1.weight,
        block.branch2.conv1.weight,
        block.se.fc1.weight,
        block.shortcut.conv1.weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.layer1[0].branch2.conv1.weight)
