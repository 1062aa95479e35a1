import functools

import pytest
import torch
import torchvision

import senet
from senet.analysis.complexity import count_macs, count_params, model_complexity

# Table 3 prints ShuffleNet 1x (g=3) as 1.8M / SE 2.4M; the architecture of Zhang et al. (and
# Megvii's own code) has 1.87M / 2.48M: the table truncates to 0.1M (4.23 -> 4.2, 4.72 -> 4.7 for
# MobileNet too). Kept as known gaps.
TRUNCATED_IN_TABLE_3 = {"shufflenet", "se_shufflenet"}
WITH_PAPER_PARAMS = [
    pytest.param(
        n, marks=pytest.mark.xfail(strict=True, reason="Table 3 truncates ShuffleNet's 1.87M to 1.8M")
    )
    if n in TRUNCATED_IN_TABLE_3
    else n
    for n in senet.list_models()
    if senet.model_info(n).paper.params_m is not None
]
# Inception-ResNet-v2 as released (timm's 55,843,464 params) costs 13.16 GMACs at 299x299; Table 2
# prints 11.75. The paper does not say how it counted; its SE delta (+0.01) matches ours
# (+0.0085). Kept as a known gap.
OVER_TABLE_2_GFLOPS = {"inception_resnet_v2", "se_inception_resnet_v2"}
WITH_PAPER_GFLOPS = [
    pytest.param(
        n,
        marks=pytest.mark.xfail(
            strict=True, reason="Inception-ResNet-v2 measures 13.16 GMACs vs Table 2's 11.75"
        ),
    )
    if n in OVER_TABLE_2_GFLOPS
    else n
    for n in senet.list_models()
    if senet.model_info(n).paper.gflops is not None
]


@pytest.mark.parametrize("name", WITH_PAPER_PARAMS)
def test_params_within_one_percent_of_the_paper(name):
    c = _complexity(name)
    assert abs(c.params_diff) <= 0.01, f"{name}: {c.params_m:.2f}M vs paper {c.paper_params}M"


@pytest.mark.parametrize("name", WITH_PAPER_GFLOPS)
def test_gflops_within_three_percent_of_the_paper(name):
    c = _complexity(name)
    assert abs(c.gflops_diff) <= 0.03, f"{name}: {c.gflops:.2f} vs paper {c.paper_gflops} GFLOPs"


def test_counts_agree_with_torchvision_published_figures():
    # torchvision publishes resnet50's 25,557,032 params and 4.089 GMACs (stride in the 3x3 conv).
    model = torchvision.models.resnet50()
    assert count_params(model) == 25_557_032
    assert round(count_macs(model) / 1e9, 3) == 4.089
    ours = model_complexity("resnet50", stride_in_1x1=False, stem_pool="torchvision")
    assert ours.params == 25_557_032 and round(ours.gflops, 3) == 4.089


def test_counting_a_real_model_restores_its_mode():
    model = senet.create_model("se_resnet18", num_classes=10).train()
    assert count_macs(model, input_size=32) > 0
    assert model.training


# Where each network puts its SE blocks, as (number of blocks, C) from the papers, not from our modules:
# Table 1 and the released prototxts (reference Sec. 9), Howard/Zhang Table 1, TF-slim's Inception-ResNet-v2.
RESNET50_SE = [(3, 256), (4, 512), (6, 1024), (3, 2048)]
RESNET101_SE = [(3, 256), (4, 512), (23, 1024), (3, 2048)]
SE_BLOCKS = {
    "se_resnet50": RESNET50_SE,
    "se_resnet101": RESNET101_SE,
    "se_resnet152": [(3, 256), (8, 512), (36, 1024), (3, 2048)],
    "se_resnext50_32x4d": RESNET50_SE,  # Table 1: the same fc widths as SE-ResNet-50
    "se_resnext101_32x4d": RESNET101_SE,
    "se_vgg16_bn": [(2, 64), (2, 128), (3, 256), (6, 512)],  # one per conv
    "se_bn_inception": [(1, 256), (1, 320), (3, 576), (2, 608), (1, 1056), (2, 1024)],  # modules 3a..5b
    "se_inception_resnet_v2": [(10, 320), (20, 1088), (10, 2080)],  # the 40 residual blocks
    "se_mobilenet": [(1, 64), (2, 128), (2, 256), (6, 512), (2, 1024)],  # the 13 unit outputs
    # ShuffleNet: the branch, out - in wide in the first (stride-2) unit of each stage.
    "se_shufflenet": [(1, 216), (3, 240), (1, 240), (7, 480), (1, 480), (3, 960)],
    "se_resnet110_cifar": [(18, 16), (18, 32), (18, 64)],
    "se_wrn16_8": [(2, 128), (2, 256), (2, 512)],
}


@functools.lru_cache(maxsize=None)
def _complexity(name: str, **options):
    return model_complexity(name, **options)


@functools.lru_cache(maxsize=None)
def _macs(name: str, **options) -> int:
    """Exact multiply-adds (model_complexity's GFLOPs are a rounded float)."""
    with torch.device("meta"):
        model = senet.create_model(name, **options)
    return count_macs(model, senet.model_info(name).paper.input_size)


def _se_params(blocks, r: int = 16, bias: bool = True) -> int:
    """Sec. 3: W1 is (C/r) x C and W2 C x (C/r); with biases, C/r + C more per block."""
    return sum(n * (2 * c * (c // r) + (c // r + c if bias else 0)) for n, c in blocks)


def _se_fc_macs(blocks, r: int = 16, side_of=None) -> int:
    """The two FCs' multiply-adds: on the squeezed 1x1 vector, or at every position of an HxW map."""
    return sum(n * 2 * c * (c // r) * (side_of(c) ** 2 if side_of else 1) for n, c in blocks)


def test_se_adds_the_papers_parameter_formula():
    # Sec. 4: extra weights = (2/r) * sum_s N_s * C_s^2, plus the FC biases; the reference's arithmetic.
    plain, se = _complexity("resnet50"), _complexity("se_resnet50")
    assert se.params - plain.params == _se_params(RESNET50_SE) == 2_514_944 + 16_048


@pytest.mark.parametrize("se_name", list(SE_BLOCKS))
def test_se_twin_adds_exactly_its_se_fcs_in_params_and_macs(se_name):
    # The 3% GFLOPs test cannot see SE (0.26% of ResNet-50): the difference to the plain twin, exactly, can.
    plain_name = se_name[3:]
    blocks = SE_BLOCKS[se_name]
    assert _complexity(se_name).params - _complexity(plain_name).params == _se_params(blocks)
    assert _macs(se_name) - _macs(plain_name) == _se_fc_macs(blocks)


@pytest.mark.parametrize(
    "options, blocks",
    [
        ({"se_stages": (1,)}, RESNET50_SE[:1]),  # "SE Stage 2" (Table 13): conv2_x only
        ({"se_stages": (2,)}, RESNET50_SE[1:2]),  # "SE Stage 3"
        ({"se_stages": (3,)}, RESNET50_SE[2:3]),  # "SE Stage 4"
        (
            {"se_position": "3x3"},
            [(3, 64), (4, 128), (6, 256), (3, 512)],
        ),  # SE_3x3 (Table 15): the 3x3 widths
        ({"se_bias": False}, RESNET50_SE),  # the ablations' bias-free FCs (Sec. 6)
    ],
)
def test_the_ablation_variants_add_exactly_the_se_formula(options, blocks):
    added = _complexity("se_resnet50", **options).params - _complexity("resnet50").params
    assert added == _se_params(blocks, bias=options.get("se_bias", True))


@pytest.mark.parametrize("r, table_10", [(2, 45.7), (4, 35.7), (8, 30.7), (32, 26.9)])
def test_reduction_ratios_add_the_formula_and_land_on_table_10(r, table_10):
    se = _complexity("se_resnet50", se_reduction=r)
    assert se.params - _complexity("resnet50").params == _se_params(RESNET50_SE, r)
    assert se.params_m == pytest.approx(table_10, rel=0.01)  # the paper rounds from ResNet-50's 25.6M


def test_no_squeeze_costs_the_fcs_at_every_position_as_table_16():
    # Table 16: NoSqueeze applies the FCs as 1x1 convs on the 56/28/14/7 maps: 4.27 GFLOPs, 28.1M params.
    side = {256: 56, 512: 28, 1024: 14, 2048: 7}.get
    added = _macs("se_resnet50", se_squeeze="none") - _macs("resnet50")
    assert added == _se_fc_macs(RESNET50_SE, side_of=side) == 411_041_792
    assert round((_macs("resnet50") + added) / 1e9, 2) == 4.27
    assert _complexity("se_resnet50", se_squeeze="none").params == _complexity("se_resnet50").params
