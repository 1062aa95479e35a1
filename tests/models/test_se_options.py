"""The se_* build options in every family: what a stage number means, and what each family refuses.

The stage tables below are written from the papers' layouts (ResNet Table 1, Ioffe & Szegedy's modules,
TF-slim's Inception-ResNet-v2, VGG configuration D, Howard / Zhang Table 1, Gastaldi), not read from our
modules; the same tables are docs/ablations.md.
"""

import functools

import pytest
import torch
from torch import nn

import senet
from senet import SqueezeExcite


def _meta(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return senet.create_model(name, **options)


def _blocks(path: str, n: int, channels: int, side: int) -> list[tuple[str, int, int]]:
    """n SE blocks in the units path.0 .. path.<n-1>, each on a channels x side x side map."""
    return [(f"{path}.{i}", channels, side) for i in range(n)]


def _resnet(widths, depths, sides, expansion=1):
    return {
        s + 1: _blocks(f"layer{s + 1}", d, w * expansion, side)
        for s, (w, d, side) in enumerate(zip(widths, depths, sides, strict=True))
    }


_IMAGENET_SIDES = (56, 28, 14, 7)  # conv2_x .. conv5_x at 224x224 (ResNet Table 1)
# model -> stage -> [(the unit holding the block, C, side of the map SE sees at the paper's input size)].
STAGES = {
    "se_resnet50": _resnet((64, 128, 256, 512), (3, 4, 6, 3), _IMAGENET_SIDES, expansion=4),
    "se_resnet18": _resnet((64, 128, 256, 512), (2, 2, 2, 2), _IMAGENET_SIDES),
    "se_resnext50_32x4d": _resnet((64, 128, 256, 512), (3, 4, 6, 3), _IMAGENET_SIDES, expansion=4),
    "senet154": _resnet((64, 128, 256, 512), (3, 8, 36, 3), _IMAGENET_SIDES, expansion=4),
    "se_resnet20_cifar": _resnet((16, 32, 64), (3, 3, 3), (32, 16, 8)),
    "se_resnet164_cifar": _resnet((16, 32, 64), (18, 18, 18), (32, 16, 8), expansion=4),
    "se_wrn16_8": _resnet((128, 256, 512), (2, 2, 2), (32, 16, 8)),
    # SE on each module's concatenated output; 3c and 4e down-sample, so their SE sees the smaller map.
    "se_bn_inception": {
        1: [("inception_3a", 256, 28), ("inception_3b", 320, 28), ("inception_3c", 576, 14)],
        2: [
            ("inception_4a", 576, 14),
            ("inception_4b", 576, 14),
            ("inception_4c", 608, 14),
            ("inception_4d", 608, 14),
            ("inception_4e", 1056, 7),
        ],
        3: [("inception_5a", 1024, 7), ("inception_5b", 1024, 7)],
    },
    # The A, B, C residual blocks at 35, 17, 8 (299x299 input); the reduction modules have no SE.
    "se_inception_resnet_v2": {
        1: _blocks("repeat", 10, 320, 35),
        2: _blocks("repeat_1", 20, 1088, 17),
        3: _blocks("repeat_2", 9, 2080, 8) + [("block8", 2080, 8)],
    },
    # No stem: stage s is the s-th block of convs between pools; SE follows each
    # conv's ReLU (torchvision indices).
    "se_vgg16_bn": {
        1: [("features.2", 64, 224), ("features.5", 64, 224)],
        2: [("features.9", 128, 112), ("features.12", 128, 112)],
        3: [(f"features.{i}", 256, 56) for i in (16, 19, 22)],
        4: [(f"features.{i}", 512, 28) for i in (26, 29, 32)],
        5: [(f"features.{i}", 512, 14) for i in (36, 39, 42)],
    },
    # A stage per resolution after the 3x3/2 stem conv: 112, 56, 28, 14, 7 (Howard Table 1).
    "se_mobilenet": {
        1: [("blocks.0", 64, 112)],
        2: [("blocks.1", 128, 56), ("blocks.2", 128, 56)],
        3: [("blocks.3", 256, 28), ("blocks.4", 256, 28)],
        4: [(f"blocks.{i}", 512, 14) for i in range(5, 11)],
        5: [("blocks.11", 1024, 7), ("blocks.12", 1024, 7)],
    },
    # Zhang's Stage2..4; SE on the branch, out - in channels wide in each stage's first (stride-2) unit.
    "se_shufflenet": {
        s: [(f"stage{s + 1}.0", width - inp, side)] + _blocks(f"stage{s + 1}", n, width, side)[1:]
        for s, (inp, width, n, side) in enumerate([(24, 240, 4, 28), (240, 480, 8, 14), (480, 960, 4, 7)], 1)
    },
    "se_shake_shake26_2x96d": _resnet((96, 192, 384), (4, 4, 4), (32, 16, 8)),
    "se_shake_even29_2x4x64d": _resnet((256, 512, 1024), (3, 3, 3), (32, 16, 8)),
}


def _se_inputs(model: nn.Module, size: int) -> dict[str, tuple[int, int, int]]:
    """The unit holding each SE block -> the (C, H, W) the block sees, from one
    forward pass on the meta device.

    Every path of the block (``forward``, ``scale_and_add``, ``norm_scale_and_add``) computes its gates with
    ``gates`` in eval mode, so that is where the map is read."""
    seen = {}
    for name, block in model.named_modules():
        if isinstance(block, SqueezeExcite):
            unit = name.rsplit(".se", 1)[0]
            block.gates = lambda x, unit=unit, gates=block.gates: (
                seen.setdefault(unit, tuple(x.shape[1:])) and gates(x)
            )
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device="meta"))
    return seen


def _se_units(model: nn.Module) -> set[str]:
    return {name.rsplit(".se", 1)[0] for name, m in model.named_modules() if isinstance(m, SqueezeExcite)}


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_numbers_select_the_documented_blocks_at_the_documented_resolution(name):
    size = senet.model_info(name).paper.input_size
    expected = {unit: (c, side, side) for blocks in STAGES[name].values() for unit, c, side in blocks}
    assert _se_inputs(_meta(name), size) == expected
    for stage, blocks in STAGES[name].items():
        assert _se_units(_meta(name, se_stages=stage)) == {unit for unit, _, _ in blocks}, (
            f"se_stages={stage}"
        )


def test_the_papers_stage_names_are_the_imagenet_resnet_stages():
    for name in ("se_resnet50", "se_resnext50_32x4d", "senet154", "se_resnet18"):
        for number, paper_name in enumerate(("conv2_x", "conv3_x", "conv4_x", "conv5_x"), 1):
            model = _meta(name, se_stages=paper_name)
            assert model.se_config.stages == (number,)  # what a checkpoint's model records: ints
            assert _se_units(model) == {unit for unit, _, _ in STAGES[name][number]}
    assert _meta("se_resnet50", se_stages=["conv5_x", 2]).se_config.stages == (2, 4)  # sorted ints


SE_MODELS = [n for n in senet.list_models() if n.startswith(("se_", "seresne")) or n == "senet154"]
# One model per builder layout, for the tests that build the network: deeper twins take the same code paths.
LAYOUTS = [n for n in SE_MODELS if not any(depth in n for depth in ("101", "152", "56_", "110_"))]
NUM_STAGES = {name: len(stages) for name, stages in STAGES.items()}
RESNET_NAMES = " or 'conv2_x', 'conv3_x', 'conv4_x', 'conv5_x'"


@functools.lru_cache(maxsize=None)
def _num_stages(name: str) -> int:
    model = _meta(name)
    return len(model.stages()) if hasattr(model, "stages") else NUM_STAGES[name]


def _imagenet_resnet(name: str) -> bool:
    return senet.model_info(name).family == "resnet" and senet.model_info(name).paper.input_size == 224


@pytest.mark.parametrize("name", SE_MODELS)
@pytest.mark.parametrize(
    "stages, problem",
    [
        ((), "it selects no SE block"),
        ((9,), "there is no stage 9"),
        (0, "there is no stage 0"),
        ((-1,), "there is no stage -1"),
        ((2, 2), "stage 2 is selected twice"),
        (False, "False is not a stage number"),
        ("stage1", "'stage1' is not a stage name of this network"),
    ],
)
def test_every_family_refuses_a_selection_it_cannot_honour_naming_its_stages(name, stages, problem):
    valid = ", ".join(str(s) for s in range(1, _num_stages(name) + 1))
    names = RESNET_NAMES if _imagenet_resnet(name) else ""
    with pytest.raises(
        ValueError, match=rf"^{name}: \w+ got se_stages=.*; {problem}.*: use {valid} \(.*\){names}$"
    ) as error:
        _meta(name, se_stages=stages)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", LAYOUTS)
def test_the_papers_stage_names_mean_nothing_outside_the_imagenet_resnets(name):
    if _imagenet_resnet(name):
        assert _meta(name, se_stages=("conv2_x", "conv4_x")).se_config.stages == (1, 3)
        with pytest.raises(
            ValueError, match=f"^{name}: ResNet got se_stages=.*'conv1_x' is not a stage name"
        ):
            _meta(name, se_stages="conv1_x")  # the stem has no SE block
    else:
        with pytest.raises(
            ValueError, match=f"^{name}: .*conv2_x..conv5_x are the ImageNet ResNets': use 1, "
        ):
            _meta(name, se_stages="conv2_x")


def test_a_stage_without_blocks_is_refused():
    # Inception-ResNet-v2 with no A blocks has no stage 1; MobileNet's stages follow its units.
    with pytest.raises(
        ValueError, match=r"there is no stage 1: use 2, 3 \(2 = B blocks: repeat_1, 3 = C blocks"
    ):
        _meta("se_inception_resnet_v2", depths=(0, 2, 1), se_stages=1)
    with pytest.raises(ValueError, match=r"there is no stage 3: use 1, 2 \(1 = blocks.0, 2 = blocks.1-2\)"):
        _meta("se_mobilenet", units=((16, 1), (32, 2), (32, 1)), se_stages=3)
    with pytest.raises(ValueError, match="se_mobilenet: MobileNet built no SE block"):
        _meta("se_mobilenet", units=())


# Fig. 5's positions are defined for residual units; ShuffleNet's units add or
# concatenate, so SE may follow them.
POSITIONS = {"resnet": ("standard", "pre", "post", "identity", "3x3"), "se_shufflenet": ("standard", "post")}


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("position", ["pre", "post", "identity", "3x3"])
def test_every_family_refuses_the_positions_it_does_not_define(name, position):
    allowed = POSITIONS.get(name, POSITIONS.get(senet.model_info(name).family, ("standard",)))
    if position in allowed:
        assert _meta(name, se_position=position).se_config.position == position
    else:
        with pytest.raises(ValueError, match=f"^{name}: .* supports se_position .*, got '{position}'$"):
            _meta(name, se_position=position)


@pytest.mark.parametrize("name", LAYOUTS)
def test_recompute_norm_is_refused_outside_post_activation_resnets(name):
    # Only a post-activation residual branch ends in a BatchNorm that SE can recompute (standard position).
    post_activation = _imagenet_resnet(name)
    for value in (True, False):
        if post_activation:
            assert _meta(name, se_recompute_norm=value).se_config.recompute_norm is value
            with pytest.raises(
                ValueError, match=f"^{name}: ResNet \\(3x3 SE\\) got se_recompute_norm={value}"
            ):
                _meta(name, se_recompute_norm=value, se_position="3x3")
            with pytest.raises(ValueError, match=f"se_recompute_norm={value}; .*se_squeeze='max' never does"):
                _meta(name, se_recompute_norm=value, se_squeeze="max")
        else:
            with pytest.raises(
                ValueError, match=f"^{name}: .*got se_recompute_norm={value}; .*leave it out$"
            ):
                _meta(name, se_recompute_norm=value)


def test_the_hidden_width_is_c_over_r_and_at_least_one():
    # The paper's formula C // r; a block narrower than r keeps one hidden unit (CIFAR stage 1 at r = 32), as
    # the default r = 16 must still build tiny networks (widths 4/8/8 in tests and demos).
    model = _meta("se_resnet20_cifar", se_reduction=32)
    hidden = [b.fc1.out_channels for b in model.modules() if isinstance(b, SqueezeExcite)]
    assert hidden == [1] * 3 + [32 // 32] * 3 + [64 // 32] * 3  # 16 // 32 = 0 is raised to 1
    tiny = _meta("se_resnet20_cifar", widths=(4, 8, 8))
    assert {b.fc1.out_channels for b in tiny.modules() if isinstance(b, SqueezeExcite)} == {1}
    for bad in (0, -4, 2.5, True, "16"):
        with pytest.raises(
            ValueError, match=f"^se_resnet50: SE blocks got se_reduction={bad!r}; use an integer >= 1"
        ):
            _meta("se_resnet50", se_reduction=bad)


# A tiny member of each SE family, for the options that only show in what the network computes.
TINY_SE = [
    ("se_resnet50", {"widths": (8, 8, 8, 8)}, 32),
    ("se_resnet20_cifar", {"widths": (8, 8, 8)}, 16),
    ("se_vgg16_bn", {"widths": (8, 8, 16, 16, 16), "mlp_width": 16}, 32),
    ("se_mobilenet", {"units": ((16, 1), (32, 2))}, 16),
    ("se_shufflenet", {"widths": (48, 96, 192)}, 32),
    ("se_bn_inception", {}, 32),
    ("se_inception_resnet_v2", {"depths": (1, 1, 1)}, 75),
    ("se_shake_shake26_2x96d", {"base_width": 8}, 16),
    ("se_shake_even29_2x4x64d", {"base_width": 4}, 16),
]


@pytest.mark.parametrize("name, options, size", TINY_SE)
def test_every_family_honours_the_block_options(name, options, size):
    # Same weights, another squeeze or gate: the features must change (an ignored option would leave them), in
    # eval and, for the gate, in training (the fused operator). float64: ReLU gates above 1 can blow up deep
    # random nets in float32.
    torch.manual_seed(0)
    base = senet.create_model(name, num_classes=3, se_reduction=2, **options).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    variants = [({"se_squeeze": "max"}, False), ({"se_squeeze": "none"}, False), ({"se_gate": "relu"}, False)]
    for variant, training in variants + [({"se_gate": "tanh"}, False), ({"se_gate": "tanh"}, True)]:
        model = senet.create_model(name, num_classes=3, se_reduction=2, **options, **variant).double()
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            ours, theirs = model.train(training).forward_features(x), base.train(training).forward_features(x)
        assert (ours - theirs).abs().max() > 1e-3 * theirs.abs().max(), (variant, training)
    # The block's shape options: hidden width C // r (at least 1), no biases.
    model = _meta(name, se_reduction=4, se_bias=False, **options)
    blocks = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert blocks and all(
        b.fc1.out_channels == max(1, b.channels // 4) and b.fc1.bias is None for b in blocks
    )
    assert all(b.fc2.bias is None for b in blocks)
