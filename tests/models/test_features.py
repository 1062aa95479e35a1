"""Every family as a multi-scale backbone (create_model(..., features_only=True)),
frozen stages, frozen BatchNorms.

The stage tables below are written out by hand (docs/backbones.md says the same); the maps a backbone returns
are checked against the classification network's own intermediate outputs, caught with forward hooks.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import senet
from senet.cli import main
from senet.data.transforms import Preprocessing
from senet.weights.info import WeightsInfo, save_weights_file


def _stages(*rows):
    return [{"num_chs": c, "reduction": r, "module": m} for _, m, c, r in rows]


# model, tiny build options, input side, and the stages (index, module, channels, reduction) it must describe.
FAMILIES = {
    "se_resnet50": (
        dict(widths=(4, 8, 8, 16), stem_width=8),
        32,
        [
            (0, "relu", 8, 2),
            (1, "layer1", 16, 4),
            (2, "layer2", 32, 8),
            (3, "layer3", 32, 16),
            (4, "layer4", 64, 32),
        ],
    ),
    "senet154": (  # the deep stem ends at twice stem_width
        dict(widths=(8, 8, 8, 8), stem_width=8, groups=2, base_width=64),
        32,
        [
            (0, "relu", 16, 2),
            (1, "layer1", 32, 4),
            (2, "layer2", 32, 8),
            (3, "layer3", 32, 16),
            (4, "layer4", 32, 32),
        ],
    ),
    "se_resnet20_cifar": (  # pre-activation: a bare-conv stem; the final BN-ReLU ends the last stage
        dict(widths=(4, 8, 8), stem_width=4),
        16,
        [(0, "conv1", 4, 1), (1, "layer1", 4, 1), (2, "layer2", 8, 2), (3, "final_act", 8, 4)],
    ),
    "wrn16_8": (
        dict(widths=(8, 8, 16), stem_width=4),
        16,
        [(0, "conv1", 4, 1), (1, "layer1", 8, 1), (2, "layer2", 8, 2), (3, "final_act", 16, 4)],
    ),
    "se_bn_inception": (  # by resolution: each stride-2 module (3c, 4e) starts a stage
        {},
        32,
        [
            (0, "conv2", 192, 4),
            (1, "inception_3b", 320, 8),
            (2, "inception_4d", 608, 16),
            (3, "inception_5b", 1024, 32),
        ],
    ),
    "se_inception_resnet_v2": (  # unpadded convs: 39, 19, 9, 4 at 171
        dict(depths=(1, 1, 1)),
        171,
        [
            (0, "conv2d_4a", 192, 4),
            (1, "repeat", 320, 8),
            (2, "repeat_1", 1088, 16),
            (3, "conv2d_7b", 1536, 32),
        ],
    ),
    "se_vgg16_bn": (  # no stem; each block ends with its max-pool
        dict(widths=(4, 4, 8, 8, 8), mlp_width=8),
        32,
        [
            (1, "features.6", 4, 2),
            (2, "features.13", 4, 4),
            (3, "features.23", 8, 8),
            (4, "features.33", 8, 16),
            (5, "features.43", 8, 32),
        ],
    ),
    "se_mobilenet": (
        {},
        32,
        [
            (0, "stem", 32, 2),
            (1, "blocks.0", 64, 2),
            (2, "blocks.2", 128, 4),
            (3, "blocks.4", 256, 8),
            (4, "blocks.10", 512, 16),
            (5, "blocks.12", 1024, 32),
        ],
    ),
    "se_shufflenet": (
        {},
        32,
        [(0, "stem", 24, 2), (1, "stage2", 240, 8), (2, "stage3", 480, 16), (3, "stage4", 960, 32)],
    ),
    "se_shake_shake26_2x96d": (  # basic blocks: the stem has no ReLU, a final ReLU ends the last stage
        dict(base_width=4, stem_width=4),
        16,
        [(0, "bn1", 4, 1), (1, "layer1", 4, 1), (2, "layer2", 8, 2), (3, "final_act", 16, 4)],
    ),
    "shake_even29_2x4x64d": (
        dict(base_width=4, groups=2),
        16,
        [(0, "relu", 4, 1), (1, "layer1", 16, 1), (2, "layer2", 32, 2), (3, "layer3", 64, 4)],
    ),
}


def _randomize_norms(net: nn.Module) -> nn.Module:
    """BatchNorms with statistics and affine parameters of their own, so that a BN that is skipped, recomputed
    or frozen the wrong way shows in the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return net


def _network(name: str) -> nn.Module:
    return _randomize_norms(senet.create_model(name, **FAMILIES[name][0])).eval()


def _hooked_outputs(net: nn.Module, modules: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of ``modules`` and, last, ``forward_features``'s (the input of the head's pooling), in one
    classification forward pass of ``net``; copied when produced, so a later
    in-place op cannot change them."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        net.get_submodule(m).register_forward_hook(
            lambda mod, args, out, m=m: seen.setdefault(m, out.clone())
        )
        for m in modules
    ]
    handles.append(
        net.avgpool.register_forward_pre_hook(lambda mod, args: seen.setdefault("", args[0].clone()))
    )
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    return [seen[m] for m in modules] + [seen[""]]


def _load_backbone(backbone: nn.Module, net: nn.Module) -> nn.Module:
    """The network's tensors that the backbone has, loaded strictly (so the
    backbone asks for no other key)."""
    own = backbone.state_dict()
    backbone.load_state_dict({k: v for k, v in net.state_dict().items() if k in own}, strict=True)
    return backbone


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 rounding: FrozenBatchNorm2d folds the statistics into a scale and a shift."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("name", FAMILIES)
def test_backbone_maps_are_the_networks_intermediates_also_with_frozen_batchnorms(name):
    options, side, stages = FAMILIES[name]
    net = _network(name)
    x = torch.randn(2, 3, side, side)
    *expected, features = _hooked_outputs(net, [module for _, module, *_ in stages], x)

    backbone = _load_backbone(senet.create_model(name, features_only=True, **options), net).eval()
    assert backbone.feature_info == _stages(*stages)
    assert backbone.out_indices == tuple(index for index, *_ in stages)
    with torch.no_grad():
        maps = backbone(x)
    assert len(maps) == len(stages)
    for got, want, (_, module, channels, reduction) in zip(maps, expected, stages, strict=True):
        assert torch.equal(got, want), module
        assert got.shape[:2] == (2, channels)
        # Unpadded convs (Inception-ResNet-v2) take a few pixels off: the stride rounds to the reduction.
        assert round(math.log2(side / got.shape[-1])) == math.log2(reduction), (module, got.shape)
    assert torch.equal(maps[-1], features)  # the stages, run in order, are forward_features

    # norm="frozen_bn": a classification network's state dict (num_batches_tracked and all) loads into it, and
    # a backbone computes the eval-mode numbers even in training mode (its stages have no dropout; Shake-Shake
    # mixes its branches at random in training, so it is compared in evaluation mode).
    frozen = senet.create_model(name, norm="frozen_bn", **options)
    frozen.load_state_dict(net.state_dict(), strict=True)
    norms = [m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [m.eps for m in frozen.modules() if isinstance(m, FrozenBatchNorm2d)] == norms and norms
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    backbone = _load_backbone(senet.create_model(name, features_only=True, norm="frozen_bn", **options), net)
    with torch.no_grad():
        for got, want in zip(backbone.train("shake" not in name)(x), expected, strict=True):
            _close(got, want)


# model, out_indices, and the keys the backbone must not have (the head, the stages after the last index).
PRUNED = {
    "se_resnet50": ((1, 2), r"layer3\.|layer4\.|fc\."),
    "senet154": ((0,), r"layer\d\.|fc\."),
    "se_resnet20_cifar": ((0, 1), r"layer[23]\.|final_act\.|fc\."),
    "se_bn_inception": ((0, 1), r"inception_(3c|4.|5.)\.|fc\."),
    "se_inception_resnet_v2": ((1, 2), r"mixed_7a\.|repeat_2\.|block8\.|conv2d_7b\.|classif\."),
    "se_vgg16_bn": ((1, 2), r"features\.(1[4-9]|[234]\d)\.|classifier\."),
    "se_mobilenet": ((0, 2), r"blocks\.([3-9]|1\d)\.|fc\."),
    "se_shufflenet": ((1,), r"stage[34]\.|fc\."),
    "shake_even29_2x4x64d": ((2,), r"layer3\.|fc\."),
}


@pytest.mark.parametrize("name", PRUNED)
def test_a_backbone_has_the_networks_keys_less_head_and_later_stages_and_uses_every_parameter(name):
    out_indices, dropped = PRUNED[name]
    options, side, _ = FAMILIES[name]
    net = senet.create_model(name, **options)
    backbone = senet.create_model(name, features_only=True, out_indices=out_indices, **options)
    expected = [k for k in net.state_dict() if not re.match(dropped, k)]
    assert list(backbone.state_dict()) == expected  # same names, same order, no prefix
    # Under DDP a parameter without a gradient is an error: every one left must take part.
    sum(m.sum() for m in backbone.train()(torch.randn(2, 3, side, side))).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_frozen_batchnorm_stays_put_through_a_training_step_and_the_se_operator_steps_aside(fused_norm_calls):
    calls = fused_norm_calls
    options = dict(widths=(4, 4, 8, 8), num_classes=3, se_recompute_norm=True)
    x = torch.randn(4, 3, 32, 32)
    plain = _randomize_norms(senet.create_model("se_resnet18", **options))
    plain.train()(x)
    assert calls[0] == 8  # the plain network's SE units recompute their BatchNorm

    net = senet.create_model("se_resnet18", norm="frozen_bn", **options)
    net.load_state_dict(plain.state_dict())
    before = copy.deepcopy(net.state_dict())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    out = net(x)
    _close(out, plain.eval()(x))  # eval BN numbers, in training
    out.square().sum().backward()
    optimizer.step()
    assert calls[0] == 8  # FrozenBatchNorm2d is called as it is
    after = net.state_dict()
    norm_keys = [
        k
        for k in after
        if k.rsplit(".", 1)[0] in {n for n, m in net.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    ]
    assert norm_keys and all(torch.equal(after[k], before[k]) for k in norm_keys)
    assert not torch.equal(after["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])


def _frozen_names(net: nn.Module) -> set[str]:
    """Top-level module names whose parameters are all frozen."""
    return {
        name
        for name, child in net.named_children()
        if any(True for _ in child.parameters()) and not any(p.requires_grad for p in child.parameters())
    }


@pytest.mark.parametrize(
    "frozen_stages, frozen",
    [
        (-1, set()),
        (0, {"conv1", "bn1"}),
        (1, {"conv1", "bn1", "layer1"}),
        (4, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}),
    ],
)
def test_frozen_stages_follow_mmdet_on_a_classification_network(frozen_stages, frozen):
    net = senet.create_model("se_resnet18", widths=(4, 4, 8, 8), num_classes=3, frozen_stages=frozen_stages)
    assert _frozen_names(net) == frozen
    assert net.fc.weight.requires_grad
    net.eval().train()  # train() again: the frozen stages' BatchNorms stay in evaluation mode
    for name, module in net.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.training == (name.split(".")[0] not in frozen), name

    # One step in training mode changes neither the frozen weights nor the frozen BatchNorms' statistics.
    before = copy.deepcopy(net.state_dict())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(4, 3, 32, 32)).square().sum().backward()
    optimizer.step()
    after = net.state_dict()
    for key, value in after.items():
        assert torch.equal(value, before[key]) == (key.split(".")[0] in frozen), key


def test_frozen_stages_of_a_backbone_and_of_a_stemless_family():
    backbone = senet.create_model(
        "se_mobilenet", features_only=True, out_indices=(2, 3), frozen_stages=2, norm="frozen_bn"
    )
    assert "out_indices=(2, 3), frozen_stages=2, norm='frozen_bn'" in repr(backbone).splitlines()[1]
    backbone.train()
    units = ["stem"] + [f"blocks.{i}" for i in range(5)]  # stages 0-3; blocks.5 on are not in the backbone
    assert [u for u in units if not backbone.get_submodule(u).training] == units[:4]
    trainable = {".".join(n.split(".")[:2]) for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.3", "blocks.4"}  # conv weights only: the BatchNorms are frozen ones

    # VGG has no stem: 0 freezes nothing, 1 the first block of convs.
    vgg = dict(widths=(4, 4, 8, 8, 8), mlp_width=8)
    assert all(p.requires_grad for p in senet.create_model("vgg16_bn", frozen_stages=0, **vgg).parameters())
    net = senet.create_model("vgg16_bn", frozen_stages=1, **vgg)
    frozen_keys = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen_keys == {f"features.{i}.{w}" for i in (0, 1, 3, 4) for w in ("weight", "bias")}


BAD = [
    (
        "resnet50",
        dict(out_indices=(1, 2)),
        "out_indices=(1, 2); it picks the maps of a backbone: add features_only=True",
    ),
    ("resnet50", dict(features_only=True, out_indices=(5,)), "use integers in 0..4 (0 = relu, 1 = layer1,"),
    ("vgg16_bn", dict(features_only=True, out_indices=(0, 1)), "use integers in 1..5 (1 = features.6,"),
    ("resnet50", dict(features_only=True, out_indices=(-1,)), "use integers in 0..4"),
    ("resnet50", dict(features_only=True, out_indices=(2, 1)), "in increasing order"),
    ("resnet50", dict(features_only=True, out_indices=(2, 2)), "give each index once"),
    ("resnet50", dict(features_only=True, out_indices=3), "give a tuple of stage indices"),
    ("resnet50", dict(features_only=True, out_indices=()), "give a tuple of stage indices"),
    ("resnet50", dict(features_only="yes"), "features_only='yes'; use True or False"),
    ("resnet50", dict(frozen_stages=5), "frozen_stages=5; use -1 (nothing), 0 (the stem) .. 4"),
    ("resnet50", dict(frozen_stages=-2), "frozen_stages=-2; use -1"),
    ("resnet50", dict(frozen_stages=True), "frozen_stages=True"),
    ("resnet50", dict(features_only=True, out_indices=(1, 2), frozen_stages=3), "are not in the backbone"),
    ("vgg16_bn", dict(frozen_stages=6), "use -1 or 0 (nothing; no stem) .. 5"),
    ("shufflenet", dict(norm="gn"), "norm='gn'; choose 'bn' or 'frozen_bn'"),
]


@pytest.mark.parametrize("name, options, expected", BAD, ids=[f"{n}-{'-'.join(o)}" for n, o, _ in BAD])
def test_bad_backbone_options_are_refused_in_one_line(name, options, expected):
    with torch.device("meta"), pytest.raises(ValueError) as error:
        senet.create_model(name, **options)
    message = str(error.value)
    assert message.startswith(f"{name}: ") and expected in message and "\n" not in message


def test_pretrained_weights_load_into_a_backbone_dropping_only_the_head_and_later_stages(tmp_path):
    options = dict(widths=(4, 8, 8, 16), stem_width=8)
    net = _randomize_norms(senet.create_model("se_resnet50", num_classes=5, **options)).eval()
    info = WeightsInfo(
        "se_resnet50", dict(options), 5, Preprocessing((0.5,) * 3, (0.25,) * 3, 64, 1.0, "bilinear")
    )
    path = save_weights_file(tmp_path / "w.safetensors", net.state_dict(), info)
    x = torch.randn(2, 3, 32, 32)
    *expected, _ = _hooked_outputs(net, ["layer2", "layer3"], x)

    backbone = senet.create_model(
        "se_resnet50", pretrained=path, features_only=True, out_indices=(2, 3)
    ).eval()
    state, kept = net.state_dict(), backbone.state_dict()
    assert list(kept) == [k for k in state if not k.startswith(("fc.", "layer4."))]
    assert all(torch.equal(kept[k], state[k]) for k in kept)
    assert backbone.pretrained_info.model == "se_resnet50"
    # Close, not equal: the file's tensors are not 64-byte aligned as the network's were, and oneDNN's kernels
    # then add in another order (a classification network loaded from the file differs from it as much).
    with torch.no_grad():
        for a, b in zip(backbone(x), expected, strict=True):
            _close(a, b)

    frozen = senet.load_pretrained(
        path, features_only=True, out_indices=(2, 3), frozen_stages=1, norm="frozen_bn"
    )
    assert (
        not any(p.requires_grad for p in frozen.layer1.parameters())
        and frozen.layer2[0].conv1.weight.requires_grad
    )
    with torch.no_grad():
        for a, b in zip(frozen.train()(x), expected, strict=True):
            _close(a, b)

    # Strict otherwise: weights that lack a tensor of a kept stage are refused.
    state = {k: v for k, v in net.state_dict().items() if k != "layer1.0.conv1.weight"}
    save_weights_file(tmp_path / "cut.safetensors", state, info)
    with pytest.raises(ValueError, match="layer1.0.conv1.weight"):
        senet.load_pretrained(tmp_path / "cut.safetensors", features_only=True, out_indices=(2, 3))


def test_senet_models_features_prints_each_stage(capsys):
    assert main(["models", "se_bn_inception", "--features"]) == 0
    rows = [line.split()[:5] for line in capsys.readouterr().out.splitlines()[2:6]]
    assert rows == [
        ["se_bn_inception", "0", "conv2", "192", "4"],
        ["se_bn_inception", "1", "inception_3b", "320", "8"],
        ["se_bn_inception", "2", "inception_4d", "608", "16"],
        ["se_bn_inception", "3", "inception_5b", "1024", "32"],
    ]


def test_stages_agree_with_timms_for_the_networks_timm_has():
    timm = pytest.importorskip("timm")

    def ours(name):
        with torch.device("meta"):
            return [(s.channels, s.reduction) for s in senet.create_model(name).feature_stages()]

    def theirs(name):
        with torch.device("meta"):
            info = timm.create_model(name, features_only=True).feature_info
        return list(zip(info.channels(), info.reduction(), strict=True))

    assert ours("se_resnet50") == theirs("legacy_seresnet50")
    assert ours("inception_resnet_v2") == theirs("inception_resnet_v2")[1:]  # timm also taps conv2d_2b (1/2)
    assert ours("mobilenet")[1:] == theirs("mobilenetv1_100")  # our 0 is the stem conv
