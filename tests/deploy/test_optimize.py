"""``optimize_for_inference``: every path (BN folded, channels_last, compiled, bf16) against the eager
network's own outputs, float32 by default wherever it runs, and the weights' record kept."""

import pytest
import torch

import senet
import senet.deploy.optimize as optimize
from senet.deploy.optimize import (
    BF16_RELATIVE_TOLERANCE,
    FP32_TOLERANCE,
    fold_batchnorm,
    optimize_for_inference,
)
from senet.layers.squeeze_excite import SEConfig
from senet.models.resnet import BasicBlock, ResNet

TINY = dict(widths=(8, 8, 16, 16), stem_width=8)  # se_resnet18's layout, 8-16 channels wide


def _randomise_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding has something to get wrong."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomise_batchnorms(senet.create_model("se_resnet18", num_classes=10, **TINY))


def _max_diff(module: torch.nn.Module, eager: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Largest |module(x) - eager(x)| and the scale of eager's logits (a wrong
    network differs at that scale)."""
    with torch.no_grad():
        expected = eager(x)
        got = module(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    return (got - expected).abs().max().item(), expected.abs().max().item()


def test_folded_batchnorm_keeps_the_outputs(tiny):
    folded = fold_batchnorm(tiny)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    difference, scale = _max_diff(folded, tiny, torch.randn(2, 3, 64, 64))
    assert difference <= FP32_TOLERANCE and scale > 0.1


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_uncompiled_paths_match_eager_in_float32_for_either_input_layout(tiny, channels_last):
    fast = optimize_for_inference(tiny, compile=False, channels_last=channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    conv = fast.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
    x = torch.randn(2, 3, 64, 64)
    for layout in (torch.contiguous_format, torch.channels_last):
        difference, scale = _max_diff(fast, tiny, x.contiguous(memory_format=layout))
        assert difference <= FP32_TOLERANCE and scale > 0.1


def test_float32_stays_the_default_on_hardware_with_native_bf16(tiny, monkeypatch):
    """On a CPU or GPU with native bf16 the default once switched to bf16 (logits off by ~1e-2)."""
    monkeypatch.setattr(optimize, "native_bf16", lambda device: True)
    fast = optimize_for_inference(tiny, compile=False)
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    difference, _ = _max_diff(fast, tiny, torch.randn(2, 3, 64, 64))
    assert difference <= FP32_TOLERANCE


def test_bf16_on_request_runs_in_bfloat16_within_its_stated_tolerance(tiny):
    fast = optimize_for_inference(tiny, compile=False, bf16=True)
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    difference, scale = _max_diff(fast, tiny, torch.randn(2, 3, 64, 64))
    # Really rounded to bfloat16 (differs), yet within the stated share of the logits' scale.
    assert FP32_TOLERANCE < difference <= BF16_RELATIVE_TOLERANCE * max(1.0, scale)


def test_the_compiled_path_matches_eager(tmp_path):
    """The real path (Inductor with freezing, channels_last, BN folded) on the smallest network that still has
    every kind of layer of an SE-ResNet: one SE unit at 8 x 8. A cold compile takes ~15 s on 2 cores."""
    torch.manual_seed(0)
    unit = ResNet(BasicBlock, (1,), widths=(4,), stem="cifar", stem_width=4, se=SEConfig(reduction=2))
    model = _randomise_batchnorms(unit)
    model.pretrained_info = "the weights' record"
    x = torch.randn(2, 3, 8, 8)
    compiled = optimize_for_inference(model, example=x)
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.pretrained_info == "the weights' record"
    with torch.inference_mode():  # freezing compiles for inference; channels_last inputs as the example's
        for batch in (x, torch.randn(2, 3, 8, 8)):
            batch = batch.contiguous(memory_format=torch.channels_last)
            difference, scale = _max_diff(compiled, model, batch)
            assert difference <= FP32_TOLERANCE and scale > 0.1


def test_the_weights_record_stays_with_the_optimized_network(tiny):
    tiny.pretrained_info = record = "the weights' record"
    try:
        for bf16 in (False, True):
            assert optimize_for_inference(tiny, compile=False, bf16=bf16).pretrained_info == record
    finally:
        del tiny.pretrained_info
    assert not hasattr(optimize_for_inference(tiny, compile=False), "pretrained_info")


def test_networks_fx_cannot_trace_have_their_sequential_pairs_folded():
    """VGG slices its classifier Sequential in forward, which torch.fx cannot trace: conv -> BN neighbours in
    its Sequentials are folded instead, and the outputs stay those of the unfolded network."""
    model = senet.create_model("se_vgg16_bn", widths=(8, 8, 16, 16, 16), mlp_width=32, pool_size=1)
    _randomise_batchnorms(model)
    with pytest.raises(NameError):  # the reason for the fallback; if fx learns to trace VGG, drop this line
        torch.fx.symbolic_trace(model)
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 13
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    difference, _ = _max_diff(folded, model, torch.randn(2, 3, 32, 32))
    assert difference <= FP32_TOLERANCE


def test_options_it_cannot_honour_are_refused():
    model = senet.create_model("se_resnet20_cifar", widths=(4, 8, 8))
    with pytest.raises(ValueError, match="cuda_graphs=True needs a model on a CUDA device"):
        senet.optimize_for_inference(model, cuda_graphs=True)
    with pytest.raises(ValueError, match=r"bf16=None; use True or False"):
        senet.optimize_for_inference(model, bf16=None)
