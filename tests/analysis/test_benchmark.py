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


@pytest.mark.parametrize(
    "spelling, bias", [("off", False), ("No", False), ("0", False), ("on", True), ("TRUE", True)]
)
def test_a_boolean_spec_option_reads_as_the_model_opt_flag_reads_it(spelling, bias):
    model = build_benchmark_model(f"se_resnet20_cifar@se_bias={spelling}", num_classes=10)
    assert (model.layer1[0].se.fc1.bias is not None) == bias
    with pytest.raises(ValueError, match=r"se_bias='maybe': se_bias is true or false; write true/false"):
        build_benchmark_model("se_resnet20_cifar@se_bias=maybe", num_classes=10)


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_benchmark_reports_every_figure_with_ratios_to_the_first(mode):
    results = benchmark(
        ["resnet18", "se_resnet18"], BenchSettings(**{**TINY.__dict__, "mode": mode, "memory": True})
    )
    assert [r.model for r in results] == ["resnet18", "se_resnet18"]
    assert all(r.images_per_s == pytest.approx(2000 / r.latency_ms) for r in results)
    assert all(r.peak_memory_mb > 0 for r in results)
    # Every ratio is the row's own figure over the first row's, from the figures the benchmark reports.
    first = results[0]
    for r in results:
        assert r.ratios == pytest.approx(
            {
                "latency": r.latency_ms / first.latency_ms,
                "p90": r.p90_ms / first.p90_ms,
                "images_per_s": r.images_per_s / first.images_per_s,
                "memory": r.peak_memory_mb / first.peak_memory_mb,
            },
            rel=1e-12,
        )
    table = format_results(results, TINY).splitlines()
    for r in results:
        (row,) = [line for line in table if line.startswith(f"| {r.model} |")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells == [
            r.model,
            f"{r.latency_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.images_per_s:.1f}",
            f"{r.peak_memory_mb:.0f}",
            f"{r.latency_ms / first.latency_ms:.3f}",
            f"{r.peak_memory_mb / first.peak_memory_mb:.3f}",
        ]


def test_se_saves_the_branch_outputs_for_backward():
    plain, se = (
        saved_for_backward_mb("resnet18", batch=2, size=64),
        saved_for_backward_mb("se_resnet18", batch=2, size=64),
    )
    assert se > plain
