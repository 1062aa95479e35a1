import pytest
import torch

from senet.analysis.benchmark import (
    BenchSettings,
    benchmark,
    build_benchmark_model,
    format_results,
    split_specs,
)
from senet.analysis.report import saved_for_backward_mb

TINY = BenchSettings(batch=2, size=32, warmup=1, repeats=3, memory=False)


def test_specs_split_on_models_not_on_options():
    assert split_specs(
        "resnet50@stride_in_1x1=False,stem_pool='torchvision',se_resnet50,timm:seresnet50"
    ) == ["resnet50@stride_in_1x1=False,stem_pool='torchvision'", "se_resnet50", "timm:seresnet50"]


def test_spec_options_reach_the_builder_and_bad_sources_are_named():
    model = build_benchmark_model("resnet50@stride_in_1x1=False,stem_pool='torchvision'")
    assert model.layer2[0].conv1.stride == (1, 1) and model.maxpool.padding == 1
    assert isinstance(build_benchmark_model("torchvision:resnet18"), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown model source 'keras'"):
        build_benchmark_model("keras:resnet50")


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_benchmark_reports_every_figure_with_ratios_to_the_first(mode):
    results = benchmark(
        ["resnet18", "se_resnet18"], BenchSettings(**{**TINY.__dict__, "mode": mode, "memory": True})
    )
    assert [r.model for r in results] == ["resnet18", "se_resnet18"]
    assert results[0].ratios["latency"] == 1.0 and results[1].ratios["latency"] > 0
    assert all(r.images_per_s == pytest.approx(2000 / r.latency_ms) for r in results)
    assert all(r.peak_memory_mb > 0 for r in results)
    assert "| se_resnet18 |" in format_results(results, TINY)


def test_se_saves_the_branch_outputs_for_backward():
    plain, se = (
        saved_for_backward_mb("resnet18", batch=2, size=64),
        saved_for_backward_mb("se_resnet18", batch=2, size=64),
    )
    assert se > plain
