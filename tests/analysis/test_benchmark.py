import pytest
import torch

import senet
from senet.analysis.benchmark import (
    BenchSettings,
    benchmark,
    build_benchmark_model,
    format_results,
    split_specs,
)
from senet.analysis.optimize import fold_batchnorm, optimize_for_inference
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


def test_folded_batchnorm_keeps_the_outputs():
    model = senet.create_model("se_resnet18", num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():  # non-trivial statistics, so folding has something to fold
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
        fast = optimize_for_inference(model, compile=False, bf16=False)
        torch.testing.assert_close(
            fast(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=1e-4, atol=1e-5
        )
