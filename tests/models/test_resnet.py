import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import senet
from senet.models.resnet import Bottleneck

RESNET_FAMILY = [name for name in senet.list_models() if senet.model_info(name).family == "resnet"]


@pytest.mark.parametrize("name", RESNET_FAMILY)
def test_every_model_maps_an_image_to_logits(name):
    model = senet.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 64, 64))
        logits = model(torch.randn(1, 3, 64, 64))
    cifar = senet.model_info(name).paper.input_size == 32
    stride = 4 if cifar else 32  # CIFAR networks down-sample twice, ImageNet ones five times
    assert features.shape == (1, model.num_features, 64 // stride, 64 // stride)
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_torchvision_state_dicts_load_strictly_and_give_the_same_outputs(name):
    theirs = getattr(torchvision.models, name)().eval()
    ours = senet.create_model(name, stride_in_1x1=False, stem_pool="torchvision").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_paper_layout_puts_the_stride_in_the_first_1x1_conv():
    paper = senet.create_model("se_resnet50")
    block = paper.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    resnext = senet.create_model("se_resnext50_32x4d").layer2[0]
    assert resnext.conv1.stride == (1, 1) and resnext.conv2.stride == (2, 2) and resnext.conv2.groups == 32


def test_stem_pool_options_differ_in_values_not_in_shape():
    caffe = senet.create_model("resnet18").eval()
    tv = senet.create_model("resnet18", stem_pool="torchvision").eval()
    tv.load_state_dict(caffe.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = caffe.forward_features(x), tv.forward_features(x)
    assert a.shape == b.shape == (1, 512, 7, 7)
    assert not torch.allclose(a, b)


def test_se_blocks_have_table_1_widths_and_torchvision_keys_plus_se():
    model = senet.create_model("se_resnet50")
    widths = {stage: model.get_submodule(f"layer{stage}.0.se.fc1").weight.shape[:2] for stage in (1, 2, 3, 4)}
    assert widths == {1: (16, 256), 2: (32, 512), 3: (64, 1024), 4: (128, 2048)}
    plain_keys = set(senet.create_model("resnet50").state_dict())
    extra = set(model.state_dict()) - plain_keys
    assert plain_keys <= set(model.state_dict())
    assert extra and all(".se.fc1." in k or ".se.fc2." in k for k in extra)


def _close_gates(block: Bottleneck) -> None:
    """Make the block's SE gates ~0, so whatever it rescales vanishes."""
    nn.init.zeros_(block.se.fc2.weight)
    nn.init.constant_(block.se.fc2.bias, -100.0)


def test_standard_se_rescales_the_residual_branch_before_the_sum():
    block = senet.create_model("se_resnet50").layer1[1].eval()
    _close_gates(block)
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))  # branch gated off: out = relu(identity)


def _branch(block, x):
    """A bottleneck's residual branch by hand: conv-BN-ReLU twice, then conv-BN (torchvision's order)."""
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    return block.bn3(block.conv3(out))


@pytest.mark.parametrize(
    "position, expected",
    [
        ("post", lambda x, block: torch.zeros_like(x)),  # SE after the sum rescales everything
        ("identity", lambda x, block: torch.relu(_branch(block, x))),  # SE on the shortcut removes it
        (
            "pre",
            lambda x, block: torch.relu(_branch(block, torch.zeros_like(x)) + x),
        ),  # SE feeds only the branch
    ],
)
def test_integration_strategies_of_figure_5(position, expected):
    block = senet.create_model("se_resnet50", se_position=position).layer1[1].eval()
    _close_gates(block)
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected(x, block))


def test_se_3x3_acts_on_the_3x3_conv_output_width():
    model = senet.create_model("se_resnet50", se_position="3x3")
    assert model.layer1[0].se.fc1.weight.shape[:2] == (4, 64)


def test_se_stages_select_where_blocks_go():
    model = senet.create_model("se_resnet50", se_stages=(2, 4))
    assert [stage[0].se is not None for stage in model.stages()] == [False, True, False, True]


def test_senet154_follows_the_appendix():
    model = senet.create_model("senet154")
    stem = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in stem] == [((3, 3), 64), ((3, 3), 64), ((3, 3), 128)]
    first = model.layer1[0]
    assert (first.conv1.out_channels, first.conv2.out_channels, first.conv2.groups) == (128, 256, 64)
    assert first.downsample[0].kernel_size == (1, 1)
    assert [s[0].downsample[0].kernel_size for s in model.stages()[1:]] == [(3, 3)] * 3
    assert [len(s) for s in model.stages()] == [3, 8, 36, 3]
    assert model.dropout.p == 0.2


def test_build_options_in_chans_drop_rate_and_reset_classifier():
    model = senet.create_model("se_resnet18", num_classes=5, in_chans=1, drop_rate=0.3)
    assert model.dropout.p == 0.3
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    model.reset_classifier(0)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, model.num_features)


def test_zero_init_residual_makes_units_start_as_identities():
    model = senet.create_model("resnet50", zero_init_residual=True)
    assert all(unit.bn3.weight.abs().sum() == 0 for stage in model.stages() for unit in stage)


def _meta(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return senet.create_model(name, **options)


@pytest.mark.parametrize(
    "name, options, fix",
    [
        # Accepted and ignored before: basic blocks have no 1x1 conv; a pre-activation branch ends in a conv,
        # so there is no last BN to zero; the CIFAR stem has no pooling.
        (
            "resnet18",
            {"stride_in_1x1": True},
            "ResNet with basic blocks got stride_in_1x1=True; basic blocks",
        ),
        ("se_resnet34", {"stride_in_1x1": True}, "leave it at False or use a bottleneck"),
        (
            "resnet110_cifar",
            {"stride_in_1x1": True},
            "pre-activation ResNet with basic blocks got stride_in_1x1",
        ),
        (
            "resnet20_cifar",
            {"zero_init_residual": True},
            "pre-activation ResNet with basic blocks got zero_init",
        ),
        (
            "se_resnet164_cifar",
            {"zero_init_residual": True},
            "branches end in a conv, not a BN; leave it False",
        ),
        ("wrn16_8", {"zero_init_residual": True}, "zero_init_residual=True"),
        ("resnet56_cifar", {"stem_pool": "caffe"}, "stem_pool='caffe'; the cifar stem has no pooling"),
        ("se_wrn16_8", {"stem_pool": "torchvision"}, "the cifar stem has no pooling; leave it out"),
        (
            "resnet34",
            {"groups": 32},
            "got groups=32; basic blocks have no 1x1 conv, no groups; leave it at 1",
        ),
        ("resnet18", {"base_width": 4}, "got base_width=4"),
        # Impossible: an even projection kernel misaligns the shortcut; empty widths; unknown layouts.
        ("senet154", {"down_kernel_size": 2}, "got down_kernel_size=2; use an odd kernel size"),
        ("resnet50", {"widths": (64, 0, 256, 512)}, r"got widths=\(64, 0, 256, 512\); use integers >= 1"),
        ("resnet50", {"widths": (64, 128)}, r"got depths=\(3, 4, 6, 3\); give one per width"),
        ("resnet50", {"stem_pool": "max"}, "got stem_pool='max'; choose torchvision or caffe"),
        ("resnet50", {"stem": "5x5"}, "got stem='5x5'; choose one of 7x7, deep, cifar"),
        ("resnext50_32x4d", {"groups": 0}, "got groups=0"),
        ("senet154", {"first_conv_ratio": 0.0}, "got first_conv_ratio=0.0; use a ratio > 0"),
    ],
)
def test_options_the_family_would_ignore_or_cannot_build_are_refused(name, options, fix):
    with pytest.raises(ValueError, match=f"^{name}: .*{fix}"):
        _meta(name, **options)


def test_options_that_match_the_block_are_still_accepted():
    # stride_in_1x1=False is what a basic block does anyway: same layout as the default.
    default, explicit = _meta("resnet18"), _meta("resnet18", stride_in_1x1=False)
    assert explicit.layer2[0].conv1.stride == default.layer2[0].conv1.stride == (2, 2)
    assert (
        isinstance(default.maxpool, nn.MaxPool2d) and default.maxpool.ceil_mode
    )  # the paper's Caffe pooling
    assert isinstance(_meta("resnet20_cifar").maxpool, nn.Identity)
    assert _meta("resnet50", num_classes=0).num_features == 2048  # 0: no classifier, not an error


@pytest.mark.parametrize("name", ["resnet20_cifar", "se_resnet164_cifar", "wrn16_8"])
@pytest.mark.parametrize("training", [True, False])
def test_pre_activation_stem_is_a_bare_conv(name, training):
    # He et al. 2016b: conv -> units whose first op is BN-ReLU; no activation between the stem and unit 1,
    # so the first unit (and its identity shortcut) sees negative values.
    model = senet.create_model(name, widths=(4, 8, 8)).train(training)
    seen = []
    model.layer1[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = torch.randn(2, 3, 8, 8)
    model(x)
    expected = F.conv2d(x, model.conv1.weight, padding=1)
    assert (expected < 0).any()
    torch.testing.assert_close(seen[0], expected)
    assert all(
        not k.startswith(("bn1.", "relu")) for k in model.state_dict()
    )  # the keys stay conv1.*, layer*


def test_post_activation_stem_is_conv_bn_relu_pool():
    model = senet.create_model("resnet18", widths=(4, 4, 4, 4)).eval()
    for name in ("running_mean", "running_var"):  # non-trivial statistics, so BN is not ~identity
        getattr(model.bn1, name).uniform_(0.5, 1.5)
    seen = []
    model.layer1[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        bn = model.bn1
        stem = F.conv2d(x, model.conv1.weight, stride=2, padding=3)
        stem = F.relu(F.batch_norm(stem, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
    torch.testing.assert_close(seen[0], F.max_pool2d(stem, 3, 2, ceil_mode=True))


def test_trains_in_channels_last():
    model = senet.create_model("se_resnet18", num_classes=4).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.layer1[0].se.fc1.weight.grad is not None


def test_torch_compile_runs_a_small_se_resnet():
    model = senet.create_model("se_resnet18", num_classes=4, widths=(8, 16, 16, 16)).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["se_resnet18", "se_resnet50"])
def test_fused_norm_and_se_training_path_matches_the_plain_ops(name):
    # The training path folds the last BN, SE and the sum into one autograd node that saves the BN input
    # instead of its output; gradients and running statistics must equal the module-by-module computation.
    fused = senet.create_model(name, num_classes=5, widths=(8, 8, 8, 8)).double()
    plain = senet.create_model(name, num_classes=5, widths=(8, 8, 8, 8)).double()
    plain.load_state_dict(fused.state_dict())
    for unit in (u for stage in plain.stages() for u in stage):
        unit.se._fused_backward = lambda x: False  # the ops one by one, through autograd
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    for model in (fused, plain):
        model(x).square().sum().backward()
    for (key, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=key)
    for (key, a), b in zip(fused.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=key)
    unit = fused.layer1[0]
    out = unit(torch.randn(2, unit.conv1.in_channels, 8, 8, dtype=torch.float64))
    assert "senet_se_norm_scale" in out.grad_fn.name()  # BN, SE, the sum and the ReLU in one operator
    unit.relu.register_forward_hook(lambda module, args, output: None)
    out = unit(torch.randn(2, unit.conv1.in_channels, 8, 8, dtype=torch.float64))
    assert "Relu" in out.grad_fn.name()  # a hooked ReLU is called as it is, after the operator


def _tiny(name: str, **options) -> nn.Module:
    return senet.create_model(name, widths=(4, 4, 8, 8), num_classes=3, **options)


@pytest.mark.parametrize("position", ["standard", "identity"])
@pytest.mark.parametrize("training", [True, False])
def test_hooks_on_a_units_se_block_fire_where_it_joins_the_sum(position, training):
    """The fused joins compute SE and the sum in one operator; a hook on the block itself must still run, and
    what it returns must be what is added."""
    fused_norm = {"se_recompute_norm": True} if position == "standard" else {}
    model = _tiny("se_resnet18", se_position=position, **fused_norm).train(training)
    unit = model.layer1[1]  # no downsample: its shortcut is its input
    seen = []
    unit.se.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.relu(torch.randn(2, 4, 8, 8, requires_grad=True))
    unit(x).sum().backward()
    assert seen == [(2, 4, 8, 8)]
    unit.se.register_forward_hook(lambda module, args, out: out * 0)  # SE's output replaced by zeros
    out = unit(x)
    if position == "standard":  # relu(0 + x)
        torch.testing.assert_close(out, torch.relu(x))
    else:  # relu(bn2(branch) + 0): the plain twin's unit without its shortcut
        plain = _tiny("resnet18").train(training)
        plain.load_state_dict(model.state_dict(), strict=False)
        block = plain.layer1[1]
        torch.testing.assert_close(
            out, torch.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
        )


@pytest.mark.parametrize("position", ["standard", "identity", "post"])
def test_an_se_block_replaced_by_identity_gives_the_plain_twin(position):
    """``unit.se = nn.Identity()`` (as one removes a block in timm) must leave the plain residual unit."""
    model = _tiny("se_resnet18", se_position=position).eval()
    plain = _tiny("resnet18").eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(".se." in key for key in unexpected)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for unit in stage:
            unit.se = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


@pytest.mark.parametrize("name", ["resnet20_cifar", "se_resnet20_cifar", "se_resnet164_cifar"])
def test_pre_activation_networks_trace_and_fold_every_batchnorm_that_follows_a_conv(name):
    """torch.fx (add_se, BatchNorm folding) needs every module a unit calls to be one of its submodules."""
    from senet.deploy.optimize import fold_batchnorm
    from senet.models.resnet import _ResidualUnit

    model = senet.create_model(name, num_classes=3).eval()
    torch.fx.symbolic_trace(model)
    units = [m for m in model.modules() if isinstance(m, _ResidualUnit)]
    assert units and all(unit.preact for unit in units)
    # A pre-activation unit's first BatchNorm normalises the sum before it (not a conv), as does the final
    # BN-ReLU before pooling: those stay; every other one follows a conv and is folded into it.
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == len(units) + 1
    # in float64: a deep network at random initialisation amplifies float32 rounding past any tolerance
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(model.double())(x), model(x))


@pytest.mark.parametrize("position", ["standard", "identity", None])
def test_a_data_parallel_replica_computes_with_its_own_modules(position):
    """nn.DataParallel replicates a unit by copying its __dict__, then gives the copy its own submodules: a
    bound method stored on the unit would still run the original's modules (another GPU's weights)."""
    options = {"se_position": position} if position else {}
    unit = _tiny("se_resnet18" if position else "resnet18", **options).eval().layer1[1]
    replica = unit._replicate_for_data_parallel()
    last = nn.BatchNorm2d(4).eval()
    nn.init.constant_(last.weight, 3.0)
    replica.bn2 = last  # what DataParallel does with every submodule of the replica
    x = torch.relu(torch.randn(2, 4, 8, 8))
    with torch.no_grad():
        replica_out, unit_out = replica(x), unit(x)
        unit.bn2 = last
        torch.testing.assert_close(replica_out, unit(x))
    assert not torch.allclose(replica_out, unit_out)
