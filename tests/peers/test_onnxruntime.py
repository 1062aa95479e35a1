"""Every family's ONNX export run by onnxruntime itself, against the eager PyTorch network: max |difference|
of the logits <= 1e-4 (float32), at two batch sizes of a dynamic-batch file.

The files are written by ``senet.deploy.export.export_module`` with its own check switched off, and read here
by a fresh ``onnxruntime.InferenceSession``: the comparison is this file's, on inputs the export never saw.
Each network is tiny where its builder allows, with BatchNorm statistics taken from a batch (so that every
layer's activations are O(1), and folding the BNs has real statistics to fold) and its classifier scaled to
logits of spread 0.05 (500x the tolerance), so that what a wrong file changes is far above 1e-4. What the
written files hold (metadata, BN folded, runs without senet, the failed-check cases) is
tests/deploy/test_export.py's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import senet
from senet.deploy.export import FP32_TOLERANCE, export_module

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

# Spread (standard deviation over inputs) of the logits: 500x the tolerance, and small enough that float32's
# rounding in the deepest network here (senet154, 50 units) stays below the tolerance (measured 2.7e-5; the
# other families 1e-7 to 6e-6).
SPREAD = 0.05
FAMILIES = [  # (model, options that keep it small, smallest convenient input)
    ("resnet18", {"widths": (8, 8, 8, 8)}, 32),  # the plain twin: basic blocks, no SE
    ("se_resnet50", {"widths": (8, 8, 8, 8)}, 32),
    ("se_resnext50_32x4d", {"widths": (16, 16, 16, 16), "groups": 4, "base_width": 16}, 32),
    ("senet154", {"widths": (16, 16, 16, 16), "groups": 4, "base_width": 16, "stem_width": 8}, 32),
    ("se_vgg16_bn", {"widths": (8, 8, 16, 16, 16), "mlp_width": 32}, 32),
    ("se_bn_inception", {}, 64),  # no width options: the real 11.9M-parameter network
    ("se_inception_resnet_v2", {"depths": (1, 1, 1)}, 75),
    ("se_mobilenet", {"units": ((16, 1), (32, 2), (32, 1))}, 32),
    ("se_shufflenet", {"widths": (48, 96, 192)}, 32),
    ("se_resnet20_cifar", {"widths": (4, 8, 8)}, 32),  # pre-activation: BNs that follow no conv stay
    ("se_wrn16_8", {"widths": (8, 16, 32)}, 32),
    ("se_shake_shake26_2x96d", {"base_width": 8}, 32),
    ("se_shake_even29_2x4x64d", {"base_width": 4}, 32),
]


def _healthy(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """``model`` in eval mode with the BN statistics of a random batch, random BN affine parameters (gains
    0.2-0.6, as trained residual branches have, so that a deep residual stream does not swamp what the input
    changes), and the last linear layer scaled to logits of spread :data:`SPREAD` on that batch."""
    generator = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # the batch's own statistics, not a blend with 0 / 1
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) * 0.4 + 0.2)
            norm.bias.copy_(torch.rand(norm.bias.shape, generator=generator) * 0.4 - 0.2)
        batch = torch.randn(8, 3, size, size, generator=generator)
        model.train()(batch)
        model.eval()
        for norm in norms:
            # A channel that barely varied (a ReLU's dead output) would get a gain of up to 1/sqrt(eps),
            # amplifying float32 rounding far beyond what trained networks see: floor its variance.
            norm.running_var.clamp_(min=0.1 * norm.running_var.mean().item())
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        scale = model(batch).std(dim=0).mean() / SPREAD
        classifier.weight.div_(scale)
        classifier.bias.div_(scale)
    return model


def _session(path) -> object:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _worst_difference(session, model: torch.nn.Module, batch: int, size: int) -> float:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert got.shape == expected.shape and got.dtype == np.float32
    # The logits tell inputs apart, by far more than the tolerance: a file that mishandles its input fails.
    assert batch == 1 or expected.std(axis=0).mean() > SPREAD / 5
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("name, options, size", FAMILIES, ids=[family[0] for family in FAMILIES])
def test_onnxruntime_runs_each_family_as_eager_pytorch(name, options, size, tmp_path):
    torch.manual_seed(0)
    model = _healthy(senet.create_model(name, num_classes=5, **options), size)
    report = export_module(
        model, tmp_path / f"{name}.onnx", "onnx", input_shape=(3, size, size), dynamic_batch=True, check=False
    )
    assert report.max_abs_diff is None  # not checked by the export: the comparison below is the only one
    session = _session(report.path)
    for batch in (1, 3):
        assert _worst_difference(session, model, batch, size) <= FP32_TOLERANCE


def test_the_full_se_resnet50_in_onnxruntime(tmp_path):
    """The full-size se_resnet50 (224 x 224, every BN folded) in onnxruntime within 1e-4 of eager PyTorch."""
    torch.manual_seed(0)
    model = _healthy(senet.create_model("se_resnet50"), 224)
    report = export_module(
        model, tmp_path / "se_resnet50.onnx", "onnx", input_shape=(3, 224, 224), check=False
    )
    assert report.batchnorms_folded == 53 and report.batchnorms_kept == 0
    graph = onnx.load(str(report.path), load_external_data=False).graph
    assert "BatchNormalization" not in {node.op_type for node in graph.node}
    assert _worst_difference(_session(report.path), model, 2, 224) <= FP32_TOLERANCE
