import pytest
import torch
import torchvision

import senet
from senet.analysis.complexity import count_macs, count_params, model_complexity

# Table 3 prints ShuffleNet 1x (g=3) as 1.8M / SE 2.4M; the architecture of Zhang et al. (and Megvii's own code)
# has 1.87M / 2.48M: the table truncates to 0.1M (4.23 -> 4.2, 4.72 -> 4.7 for MobileNet too). Kept as known gaps.
TRUNCATED_IN_TABLE_3 = {"shufflenet", "se_shufflenet"}
WITH_PAPER_PARAMS = [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="Table 3 truncates ShuffleNet's 1.87M to 1.8M"))
    if n in TRUNCATED_IN_TABLE_3 else n
    for n in senet.list_models() if senet.model_info(n).paper.params_m is not None
]
# Inception-ResNet-v2 as released (timm's 55,843,464 params) costs 13.16 GMACs at 299x299; Table 2 prints 11.75.
# The paper does not say how it counted; its SE delta (+0.01) matches ours (+0.0085). Kept as a known gap.
OVER_TABLE_2_GFLOPS = {"inception_resnet_v2", "se_inception_resnet_v2"}
WITH_PAPER_GFLOPS = [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="Inception-ResNet-v2 measures 13.16 GMACs vs Table 2's 11.75"))
    if n in OVER_TABLE_2_GFLOPS else n
    for n in senet.list_models() if senet.model_info(n).paper.gflops is not None
]


@pytest.mark.parametrize("name", WITH_PAPER_PARAMS)
def test_params_within_one_percent_of_the_paper(name):
    c = model_complexity(name)
    assert abs(c.params_diff) <= 0.01, f"{name}: {c.params_m:.2f}M vs paper {c.paper_params}M"


@pytest.mark.parametrize("name", WITH_PAPER_GFLOPS)
def test_gflops_within_three_percent_of_the_paper(name):
    c = model_complexity(name)
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


def test_se_adds_the_papers_parameter_formula():
    # Sec. 4: extra weights = (2/r) * sum_s N_s * C_s^2, plus the FC biases.
    plain, se = model_complexity("resnet50"), model_complexity("se_resnet50")
    weights = 2 * sum(n * c * c for n, c in [(3, 256), (4, 512), (6, 1024), (3, 2048)]) // 16
    biases = sum(n * (c + c // 16) for n, c in [(3, 256), (4, 512), (6, 1024), (3, 2048)])
    assert se.params - plain.params == weights + biases == 2_514_944 + 16_048


def test_the_ablation_variants_have_table_10_to_16_sizes():
    # The paper rounds to 0.1M from ResNet-50's 25.6M; we hold each variant to 1% of its printed size.
    def params_m(**se_options):
        return model_complexity("se_resnet50", **se_options).params_m

    assert params_m(se_stages=(1,)) == pytest.approx(25.6, rel=0.01)  # "SE Stage 2" (Table 13)
    assert params_m(se_stages=(2,)) == pytest.approx(25.7, rel=0.01)  # "SE Stage 3"
    assert params_m(se_stages=(3,)) == pytest.approx(26.4, rel=0.01)  # "SE Stage 4"
    assert params_m(se_position="3x3") == pytest.approx(25.8, rel=0.01)  # SE_3x3 (Table 15)
    assert params_m(se_reduction=2) == pytest.approx(45.7, rel=0.01)  # Table 10
    assert params_m(se_reduction=32) == pytest.approx(26.9, rel=0.01)
    no_squeeze = model_complexity("se_resnet50", se_squeeze="none")  # Table 16: 28.1M, 4.27 GFLOPs
    assert no_squeeze.params_m == pytest.approx(28.1, rel=0.01)
    assert no_squeeze.gflops == pytest.approx(4.27, rel=0.03)
