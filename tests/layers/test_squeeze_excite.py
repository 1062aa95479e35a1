import pytest
import torch
import torch.nn.functional as F

import senet
from senet import SqueezeExcite
from senet.layers.squeeze_excite import SEConfig


def test_output_is_input_times_gates_and_gates_are_probabilities():
    se = SqueezeExcite(32, reduction=4)
    x = torch.randn(3, 32, 5, 7)
    gates = se.gates(x)
    assert gates.shape == (3, 32, 1, 1)
    assert ((gates > 0) & (gates < 1)).all()
    torch.testing.assert_close(se(x), x * gates)


def test_excitation_is_fc_relu_fc_sigmoid_of_the_channel_means():
    se = SqueezeExcite(16, reduction=4)
    x = torch.randn(2, 16, 4, 4)
    z = x.mean((2, 3))  # squeeze: one value per channel
    w1, b1 = se.fc1.weight.flatten(1), se.fc1.bias
    w2, b2 = se.fc2.weight.flatten(1), se.fc2.bias
    expected = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(se.gates(x).flatten(1), expected)


@pytest.mark.parametrize(
    "channels, reduction, hidden", [(256, 16, 16), (2048, 16, 128), (64, 8, 8), (10, 16, 1)]
)
def test_reduced_width_is_channels_over_r(channels, reduction, hidden):
    se = SqueezeExcite(channels, reduction)
    assert se.fc1.weight.shape == (hidden, channels, 1, 1)
    assert se.fc2.weight.shape == (channels, hidden, 1, 1)


def test_max_squeeze_uses_the_channel_maxima():
    se = SqueezeExcite(8, reduction=2, squeeze="max")
    x = torch.randn(2, 8, 3, 3)
    gates_of_max = SqueezeExcite(8, reduction=2)
    gates_of_max.load_state_dict(se.state_dict())
    torch.testing.assert_close(se.gates(x), gates_of_max.gates(x.amax((2, 3), keepdim=True)))


def _excited(x: torch.Tensor, se: SqueezeExcite, gate, squeeze: bool = True) -> torch.Tensor:
    """x * gate(fc2(relu(fc1(z)))) with functional ops: z the channel means, or x itself (NoSqueeze)."""
    z = x.mean((2, 3), keepdim=True) if squeeze else x
    return x * gate(F.conv2d(F.relu(F.conv2d(z, se.fc1.weight, se.fc1.bias)), se.fc2.weight, se.fc2.bias))


def test_no_squeeze_applies_the_fcs_at_every_position():
    se = SqueezeExcite(8, reduction=2, squeeze="none")
    x = torch.randn(2, 8, 3, 5)
    assert se.gates(x).shape == x.shape
    torch.testing.assert_close(se(x), _excited(x, se, torch.sigmoid, squeeze=False))


@pytest.mark.parametrize(
    "gate, function", [("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("relu", torch.relu)]
)
@pytest.mark.parametrize("training", [True, False])  # the fused training node and the plain eval ops
def test_each_gate_is_its_function_of_the_excitation(gate, function, training):
    se = SqueezeExcite(16, reduction=2, gate=gate).train(training)
    x = torch.randn(4, 16, 3, 3) * 3
    expected = _excited(x, se, function)
    torch.testing.assert_close(se(x), expected)
    torch.testing.assert_close(se.scale_and_add(x, x), x + expected)
    for other in {torch.sigmoid, torch.tanh, torch.relu} - {function}:  # the gates tell apart
        assert not torch.allclose(_excited(x, se, other), expected, atol=1e-3)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("squeeze", ["avg", "max", "none"])
def test_an_empty_batch_passes_forward_and_backward(training, squeeze):
    # N = 0 (e.g. the last, empty shard of a data-parallel batch) works as in plain layers: an empty output,
    # empty input gradients, zero FC gradients.
    se = SqueezeExcite(8, reduction=2, squeeze=squeeze).train(training)
    norm = torch.nn.BatchNorm2d(8).train(training)
    x = torch.randn(0, 8, 4, 4, requires_grad=True)
    residual = torch.randn(0, 8, 4, 4, requires_grad=True)
    outputs = [se(x), se.scale_and_add(x, residual), se.norm_scale_and_add(x, norm, residual)]
    assert all(out.shape == x.shape for out in outputs)
    sum(out.sum() for out in outputs).backward()
    assert x.grad.shape == x.shape and residual.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in se.parameters())
    assert not norm.running_mean.any() and norm.running_var.eq(1).all()  # nothing seen, nothing learnt


def test_bias_free_variant_has_no_biases():
    se = SqueezeExcite(32, bias=False)
    assert se.fc1.bias is None and se.fc2.bias is None
    assert sum(p.numel() for p in se.parameters()) == 2 * 32 * 2


def test_bad_options_fail_with_the_choices():
    for hidden in (0, -1):  # a 0-wide bottleneck would gate every channel at the constant sigmoid(fc2.bias)
        with pytest.raises(ValueError, match=f"hidden_channels={hidden}; use an integer >= 1"):
            SqueezeExcite(8, hidden_channels=hidden)
    assert SqueezeExcite(8, hidden_channels=3).fc1.out_channels == 3
    with pytest.raises(ValueError, match="reduction=0; use an integer >= 1"):
        SqueezeExcite(8, reduction=0)
    with pytest.raises(ValueError, match="sigmoid, tanh, relu"):
        SqueezeExcite(8, gate="softmax")
    with pytest.raises(ValueError, match="avg, max, none"):
        SqueezeExcite(8, squeeze="median")
    with pytest.raises(ValueError, match="standard, pre, post, identity, 3x3"):
        SEConfig(position="after")
    # SEConfig speaks in the se_* build options a user gives.
    for field, value, fix in [
        ("reduction", "abc", "integer >= 1"),
        ("reduction", 0, "integer >= 1"),
        ("gate", "softmax", "sigmoid, tanh, relu"),
        ("bias", "no", "True or False"),
    ]:
        with pytest.raises(ValueError, match=f"SE blocks got se_{field}={value!r}; .*{fix}"):
            SEConfig(**{field: value})


def test_train_and_eval_and_channels_last_agree():
    se = SqueezeExcite(32, reduction=4)
    x = torch.randn(2, 32, 6, 6)
    out_train = se.train()(x)
    out_eval = se.eval()(x)
    torch.testing.assert_close(out_train, out_eval)  # no state depends on the mode
    out_cl = se(x.to(memory_format=torch.channels_last))
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out_eval)


def test_gradients_reach_the_input_and_both_fcs():
    se = SqueezeExcite(16, reduction=4)
    x = torch.randn(2, 16, 3, 3, requires_grad=True)
    se(x).square().sum().backward()
    assert x.grad is not None and se.fc1.weight.grad.abs().sum() > 0 and se.fc2.weight.grad.abs().sum() > 0


def test_config_pops_only_se_options():
    options = {"se_reduction": 8, "se_stages": [2, 3], "drop_rate": 0.1}
    config = SEConfig.pop_from(options, enabled=True)
    assert config == SEConfig(reduction=8, stages=(2, 3))
    assert options == {"drop_rate": 0.1}
    assert SEConfig.pop_from({}, enabled=False) is None
    with pytest.raises(ValueError, match="se_gate given to a network without SE"):
        SEConfig.pop_from({"se_gate": "tanh"}, enabled=False)


def test_torch_compile_matches_eager():
    se = SqueezeExcite(16, reduction=4)
    x = torch.randn(2, 16, 4, 4)
    compiled = torch.compile(se, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), se(x))


@pytest.mark.parametrize("gate", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
def test_fused_training_path_has_the_gradients_of_the_plain_ops(gate, bias, with_residual):
    se = SqueezeExcite(12, reduction=3, gate=gate, bias=bias).double()
    x = torch.randn(3, 12, 5, 4, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(3, 12, 5, 4, dtype=torch.float64, requires_grad=True)

    def plain():
        out = x * se.gates(x)
        return out + residual if with_residual else out

    def fused():
        return se.scale_and_add(x, residual) if with_residual else se(x)

    inputs = [x, residual, *se.parameters()] if with_residual else [x, *se.parameters()]
    weights = torch.randn(3, 12, 5, 4, dtype=torch.float64)
    expected = torch.autograd.grad((plain() * weights).sum(), inputs)
    out = fused()
    assert "senet_se_scale" in out.grad_fn.name()  # the SE operator's hand-written backward
    actual = torch.autograd.grad((out * weights).sum(), inputs)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e)


def test_fused_path_passes_gradcheck_and_works_in_channels_last():
    se = SqueezeExcite(8, reduction=2).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: se.scale_and_add(a, b), (x, residual))
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    se(x_cl).sum().backward()
    torch.testing.assert_close(x_cl.grad, torch.autograd.grad((x * se.gates(x)).sum(), x)[0])


def _post_activation_se_resnet(**options):
    """A tiny post-activation SE-ResNet: its units' branches end in a BatchNorm the SE block can fuse."""
    return senet.create_model("se_resnet18", widths=(4, 4, 8, 8), num_classes=3, **options)


def test_only_a_plain_hookless_batchnorm_is_fused_and_the_switch_is_a_build_option(fused_norm_calls):
    from torchvision.ops.misc import FrozenBatchNorm2d

    calls = fused_norm_calls
    x = torch.randn(2, 3, 32, 32)
    _post_activation_se_resnet(se_recompute_norm=True)(x).sum().backward()
    assert calls[0] == 8  # every unit of ResNet-18's layout
    calls[0] = 0
    _post_activation_se_resnet(se_recompute_norm=False)(x).sum().backward()
    assert calls[0] == 0

    # SyncBatchNorm computes statistics over the DDP ranks: fusing it would silently use local ones.
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(_post_activation_se_resnet(se_recompute_norm=True))
    synced(x).sum().backward()
    assert calls[0] == 0
    # FrozenBatchNorm2d (detection backbones) has no running-statistics update to fuse: called as it is.
    frozen = _post_activation_se_resnet(se_recompute_norm=True)
    unit = frozen.layer1[0]
    unit.bn2 = FrozenBatchNorm2d(unit.bn2.num_features)
    frozen(x).sum().backward()
    assert calls[0] == 7 and unit.conv1.weight.grad is not None
    # A hooked norm runs its hooks.
    hooked = _post_activation_se_resnet(se_recompute_norm=True)
    seen = []
    hooked.layer2[0].bn2.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    hooked(x).sum().backward()
    assert seen == [(2, 4, 4, 4)] and calls[0] == 7 + 7


def test_recompute_norm_is_refused_where_no_batchnorm_ends_the_branch():
    for name, options in (
        ("se_vgg16_bn", {}),
        ("se_resnet20_cifar", {}),
        ("se_resnet50", {"se_position": "post"}),
    ):
        with pytest.raises(ValueError, match="se_recompute_norm=True"):
            senet.create_model(name, se_recompute_norm=True, **options)
    with pytest.raises(ValueError, match="se_recompute_norm='yes'"):
        senet.create_model("se_resnet50", se_recompute_norm="yes")


def test_second_derivatives_and_function_transforms_raise_instead_of_being_wrong():
    model = _post_activation_se_resnet(se_recompute_norm=True).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="SE operator has no second derivative"):
        grad.sum().backward()
    se = SqueezeExcite(8, reduction=2)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda t: se(t).sum())(torch.randn(2, 8, 4, 4))


def test_se_stages_normalise_to_a_tuple_and_resolve_to_sorted_ints():
    # One stage may stand for a tuple; lists (JSON, the CLI) are tuples; the family resolves names and order.
    assert SEConfig(stages=2).stages == (2,) and SEConfig(stages="conv3_x").stages == ("conv3_x",)
    assert SEConfig(stages=[3, 1]).stages == (3, 1)
    names = {"conv2_x": 1, "conv3_x": 2, "conv4_x": 3, "conv5_x": 4}
    resolved = SEConfig(stages=(4, "conv3_x")).resolve_stages("Net", (1, 2, 3, 4), names)
    assert resolved == SEConfig(stages=(2, 4)) and all(type(s) is int for s in resolved.stages)
    assert SEConfig().resolve_stages("Net", (1, 2)).stages is None  # None: every stage


@pytest.mark.parametrize(
    "stages, problem",
    [
        ((), r"it selects no SE block"),
        ((5,), "there is no stage 5"),
        (0, "there is no stage 0"),
        ((-1,), "there is no stage -1"),
        ((1, 1), "stage 1 is selected twice"),
        ((1, "conv2_x"), "stage 1 is selected twice"),
        (True, "True is not a stage number"),
        ((2.0,), "2.0 is not a stage number"),
        ({1, 2}, "give a stage number, a stage name or a tuple of them"),
        ("layer1", "'layer1' is not a stage name of this network"),
    ],
)
def test_resolve_stages_refuses_in_one_line_naming_the_valid_values(stages, problem):
    names = {"conv2_x": 1, "conv3_x": 2, "conv4_x": 3, "conv5_x": 4}
    with pytest.raises(
        ValueError,
        match=rf"^Net got se_stages=.*; {problem}.*: use 1, 2, 3, 4 \(layer1..layer4\) or 'conv2_x'",
    ):
        SEConfig(stages=stages).resolve_stages("Net", (1, 2, 3, 4), names, "layer1..layer4")
    with pytest.raises(
        ValueError, match="the paper's stage names conv2_x..conv5_x are the ImageNet ResNets': use 1, 2"
    ):
        SEConfig(stages="conv2_x").resolve_stages("Net", (1, 2))


def test_an_unresolved_stage_selection_cannot_place_blocks():
    # A family that forgot resolve_stages would silently put SE nowhere for a name or a missing stage.
    with pytest.raises(RuntimeError, match="not resolved by the family"):
        SEConfig(stages=("conv2_x",)).in_stage(1)
    assert SEConfig(stages=(2,)).in_stage(2) and not SEConfig(stages=(2,)).in_stage(1)


def test_recompute_norm_is_refused_with_a_squeeze_that_never_takes_the_fused_path():
    for squeeze in ("max", "none"):
        with pytest.raises(ValueError, match=f"se_recompute_norm=True; .*se_squeeze='{squeeze}' never does"):
            SEConfig(squeeze=squeeze, recompute_norm=True)
        with pytest.raises(
            ValueError, match=f"SqueezeExcite got recompute_norm=False; .*squeeze='{squeeze}' never"
        ):
            SqueezeExcite(8, squeeze=squeeze, recompute_norm=False)
    assert SEConfig(recompute_norm=True).recompute_norm is True


def _module_by_module(se: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
    """The gates computed by calling the block's modules in order, as a reader of the paper would."""
    return se.fc2(se.relu(se.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


@pytest.mark.parametrize("training", [True, False])
def test_hooks_on_the_excitation_modules_fire_and_change_what_they_return(training):
    se = SqueezeExcite(8, reduction=2).train(training)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    reference = x * _module_by_module(se, x)  # before any hook
    seen = []
    se.fc1.register_forward_hook(lambda m, args, out: seen.append("fc1"))
    se.relu.register_forward_hook(lambda m, args, out: seen.append("relu"))
    se.fc2.register_forward_hook(lambda m, args, out: out * 0)  # a hook that changes the output is honoured
    out = se.scale_and_add(x, x)
    assert seen == ["fc1", "relu"]
    torch.testing.assert_close(out, x + x * 0.5)  # sigmoid(0) everywhere
    assert not torch.allclose(reference, x * 0.5)
    out.sum().backward()  # whichever path it took, it differentiates


def test_backward_hooks_on_the_excitation_modules_fire_in_training():
    se = SqueezeExcite(8, reduction=2)
    grads = []
    se.fc1.register_full_backward_hook(lambda m, grad_in, grad_out: grads.append(grad_out[0].shape))
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    se(x).sum().backward()
    assert grads == [(2, 4, 1, 1)]


def test_a_wrapped_excitation_module_is_called_as_it_is():
    """LoRA, pruning and quantisation tools replace a layer by a wrapper: the block must call it."""

    class Doubled(torch.nn.Module):  # a wrapper with no .weight of its own
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return 2 * self.inner(t)

    for training in (True, False):
        se = SqueezeExcite(8, reduction=2).train(training)
        x = torch.randn(2, 8, 3, 3, requires_grad=True)
        residual = torch.randn(2, 8, 3, 3)
        se.fc1 = Doubled(se.fc1)
        expected = residual + x * _module_by_module(se, x)
        torch.testing.assert_close(se.scale_and_add(x, residual), expected)
        torch.testing.assert_close(se(x), x * _module_by_module(se, x))


def test_the_same_tensor_as_input_and_residual_is_added_not_dropped():
    se = SqueezeExcite(8, reduction=2)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = se.scale_and_add(x, x, torch.nn.ReLU())
    torch.testing.assert_close(out, torch.relu(x + x * _module_by_module(se, x)))


def test_a_backward_hook_on_the_fused_batchnorm_fires_in_training(fused_norm_calls):
    model = _post_activation_se_resnet(se_recompute_norm=True)
    grads = []
    model.layer2[0].bn2.register_full_backward_hook(
        lambda m, grad_in, grad_out: grads.append(grad_out[0].shape)
    )
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert grads == [(2, 4, 4, 4)] and fused_norm_calls[0] == 7  # that unit's BatchNorm ran as itself


def test_one_value_per_channel_is_refused_as_batchnorm_refuses_it(fused_norm_calls):
    se = SqueezeExcite(4, reduction=2, recompute_norm=True)
    norm = torch.nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        norm(torch.randn(1, 4, 1, 1))
    running_var = norm.running_var.clone()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        se.norm_scale_and_add(torch.randn(1, 4, 1, 1), norm, torch.randn(1, 4, 1, 1))
    assert torch.equal(norm.running_var, running_var) and fused_norm_calls[0] == 0
    se.norm_scale_and_add(torch.randn(2, 4, 1, 1), norm, torch.randn(2, 4, 1, 1))  # two values: fused
    assert fused_norm_calls[0] == 1


@pytest.mark.parametrize("missing", ["weight", "bias"])
def test_an_affine_batchnorm_without_its_weight_or_bias_is_called_as_it_is(missing, fused_norm_calls):
    """nn.BatchNorm2d computes without a weight (or bias) set to None; the fused operator takes both tensors,
    so such a norm must run as itself, not fail inside the fused path."""
    se = SqueezeExcite(4, reduction=2, recompute_norm=True)
    norm = torch.nn.BatchNorm2d(4)
    setattr(norm, missing, None)
    c, residual = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    out = se.norm_scale_and_add(c, norm, residual, torch.nn.ReLU())
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    y = F.batch_norm(c, running_mean, running_var, norm.weight, norm.bias, training=True)
    torch.testing.assert_close(out, torch.relu(residual + y * se.gates(y)))
    torch.testing.assert_close(norm.running_mean, running_mean)
    torch.testing.assert_close(norm.running_var, running_var)
    assert fused_norm_calls[0] == 0


@pytest.mark.parametrize("training", [True, False])
def test_a_batchnorm_dtype_pytorch_refuses_for_the_input_is_refused_on_the_fused_path(
    training, fused_norm_calls
):
    """float64 statistics with fp32 input: nn.BatchNorm2d raises, so must the block (not compute a result)."""
    se = SqueezeExcite(4, reduction=2, recompute_norm=True).train(training)
    norm = torch.nn.BatchNorm2d(4).double().train(training)
    c, residual = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    with pytest.raises(RuntimeError) as plain:
        norm(c)
    with torch.set_grad_enabled(training), pytest.raises(RuntimeError) as fused:
        se.norm_scale_and_add(c, norm, residual, torch.nn.ReLU())
    assert str(fused.value) == str(plain.value) and fused_norm_calls[0] == 0
    assert torch.equal(norm.running_mean, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("training", [True, False])
def test_input_in_another_dtype_than_the_block_is_refused_on_every_path(training):
    """The plain excitation refuses float64 input into an fp32 block; the fused training path must not cast
    the block's weights and compute a result instead."""
    se = SqueezeExcite(8, reduction=2).train(training)
    norm = torch.nn.BatchNorm2d(8).double().train(training)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=training)
    with pytest.raises(RuntimeError) as plain:
        se.gates(x)
    with torch.set_grad_enabled(training):
        for path in (
            lambda: se(x),
            lambda: se.scale_and_add(x, x),
            lambda: se.norm_scale_and_add(x, norm, x),
        ):
            with pytest.raises(RuntimeError) as fused:
                path()
            assert str(fused.value) == str(plain.value)
    x = x.detach().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts both: every path computes
        out, gates = se.scale_and_add(x, x), se.gates(x)
    torch.testing.assert_close(out.float(), x + x * gates.float(), rtol=2e-2, atol=2e-2)
