"""The SE kernels compiled for real GPUs (sm_80, sm_90) ahead of time, on this CPU-only machine.

Triton's interpreter (``TRITON_INTERPRET=1``, how tests/ops/test_triton_kernels.py runs the kernels here)
executes them as numpy and accepts code the GPU compiler rejects. So the launch plans our launchers choose for
the real shapes of a 224 x 224 training step and of inference are compiled here for Ampere and Hopper through
Triton's own compiler and the ptxas it bundles:

- the plans: se_resnet50, se_resnext50_32x4d and senet154 run once on the meta device (no memory, no compute)
  to find their distinct SE unit calls; each is then replayed through the layer's own methods with the
  kernels' device set to "meta", and every launch is recorded at ``_triton_se._launch`` instead of run.
  Training: the operators' Triton branch, forward and backward, with the BatchNorm fused (the CUDA default)
  and apart (a SyncBatchNorm, ``se_recompute_norm=False``); inference in eval mode under ``no_grad`` (the
  layer calls the kernels itself), with an eval BatchNorm and with one folded away.
- fp32, fp16 and bf16 (AMP: the layer hands the operators the autocast dtype, which is what the tensors carry
  here; (N, C) coefficients stay fp32 in both cases), NCHW and channels_last. ``torch.compile`` passes a
  custom op tensors in eager's stride order, so compiled training launches the same plans (a padded layout
  would be copied by the launcher into one of these first).
- a subprocess without the interpreter specialises each recorded launch with Triton's own binder (dtypes,
  divisibility by 16, integers equal to 1) for the target, and compiles each
  distinct specialisation to a cubin.
"""

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import senet
from senet.layers.squeeze_excite import SqueezeExcite
from senet.ops import squeeze_excite as ops

triton = pytest.importorskip("triton")
_triton_se = pytest.importorskip("senet.ops._triton_se")

NETWORKS = ("se_resnet50", "se_resnext50_32x4d", "senet154")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ARCHS = (80, 90)
COMPILER = Path(__file__).with_name("_compile_plans.py")


def _replay_training(kernels):
    """Wrappers of the two training operators that run their Triton branch, forward and backward, on the
    call's meta tensors (the operators themselves would dispatch to their fake kernels on meta). The incoming
    gradient is laid out as the output, as the next layer's backward gives it."""

    def se_norm_scale(c, residual, bn_weight, bn_bias, eps, w1, b1, w2, b2, gate, relu=False):
        out, mean, invstd, z, hidden, gates = ops._norm_scale_triton(
            kernels, c, residual, bn_weight, bn_bias, eps, w1, b1, w2, b2, gate, relu
        )
        ops._norm_scale_backward_triton(
            kernels, torch.empty_like(out), c, out if relu else None, mean, invstd, bn_weight, bn_bias, z,
            hidden, gates, w1, w2, gate,
        )  # fmt: skip
        return out, mean, invstd, z, hidden, gates

    def se_scale(x, residual, w1, b1, w2, b2, gate, relu=False):
        out, z, hidden, gates = ops._scale_triton(kernels, x, residual, w1, b1, w2, b2, gate, relu)
        relu_out, grad = out if relu else None, torch.empty_like(out)
        ops._scale_backward_triton(
            kernels, grad, x, relu_out, z, hidden, gates, w1, w2, gate, residual is not None
        )
        return out, z, hidden, gates

    return se_norm_scale, se_scale


def _unit_calls(monkeypatch, name: str) -> list[tuple]:
    """The distinct calls a network's units make to their SE blocks in a 224 x 224 forward (shapes only: the
    network runs on the meta device)."""
    calls = {}
    original = SqueezeExcite.norm_scale_and_add

    def record(se, c, norm, residual, activation=None):
        calls.setdefault((c.shape, residual.shape, se.fc1.weight.shape), (se, norm, activation, c, residual))
        return original(se, c, norm, residual, activation)

    with torch.device("meta"):
        network = senet.create_model(name)
    with monkeypatch.context() as patch:
        patch.setattr(SqueezeExcite, "norm_scale_and_add", record)
        network(torch.empty(2, 3, 224, 224, device="meta"))
    assert calls, f"{name}: no unit fused its BatchNorm into the SE block"
    return list(calls.values())


def _launch_plans(monkeypatch) -> list[dict]:
    """Every kernel launch of a training step and of inference of each network's distinct SE units, in each
    dtype and layout, through the layer's own methods."""
    plans = []

    def record(kernel, grid, *args, **constexprs):
        described = [{"dtype": str(a.dtype)} if isinstance(a, torch.Tensor) else a for a in args]
        plans.append({"kernel": kernel.fn.__name__, "args": described, "constexprs": constexprs})

    monkeypatch.setattr(ops, "TRITON_DEVICES", {"cuda", "meta"})
    monkeypatch.setattr(_triton_se, "_launch", record)
    se_norm_scale, se_scale = _replay_training(_triton_se)
    monkeypatch.setattr(ops, "se_norm_scale", se_norm_scale)
    monkeypatch.setattr(ops, "se_scale", se_scale)
    calls = [call for name in NETWORKS for call in _unit_calls(monkeypatch, name)]
    for (se, norm, activation, c, residual), dtype, memory_format in itertools.product(
        calls, DTYPES, (torch.contiguous_format, torch.channels_last)
    ):
        c, residual = (t.to(dtype).contiguous(memory_format=memory_format) for t in (c, residual))
        se.to(dtype)  # as under AMP: the layer hands the operators the autocast dtype; BatchNorm stays fp32
        # training: the BatchNorm fused into the operator (the default on CUDA), and apart (a SyncBatchNorm
        # under DDP, or se_recompute_norm=False), which takes se_scale
        for recompute_norm in (True, False):
            se.recompute_norm = recompute_norm
            before = len(plans)
            se.train().norm_scale_and_add(c, norm.train(), residual, activation)
            assert len(plans) > before, "the training step did not take the Triton kernels"
        # inference: the eval BatchNorm applied by the kernels, and a BatchNorm folded away (an identity)
        with torch.no_grad():
            for inference_norm in (norm.eval(), torch.nn.Identity()):
                before = len(plans)
                se.eval().norm_scale_and_add(c, inference_norm, residual, activation)
                assert len(plans) > before, "inference did not take the Triton kernels"
    return plans


def test_every_launch_plan_of_real_networks_compiles_for_ampere_and_hopper(monkeypatch, tmp_path):
    plans = _launch_plans(monkeypatch)
    kernels = {plan["kernel"] for plan in plans}
    assert kernels == {"_channel_sums_kernel", "_scale_kernel", "_grad_sums_kernel", "_grad_apply_kernel"}
    plans_file = tmp_path / "plans.json"
    plans_file.write_text(json.dumps(plans))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compiled in this run, not found in a cache
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(COMPILER), str(plans_file), *map(str, ARCHS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{len(plans)} launches, {report['distinct']} distinct plans x {len(ARCHS)} archs compiled "
          f"in {time.perf_counter() - started:.1f} s")  # fmt: skip
    assert report["failures"] == [], report["failures"][:3]
    assert report["compiled"] == report["distinct"] * len(ARCHS)
    # the rescale's variants these networks use (HAS_RESIDUAL, HAS_SHIFT, RELU): with the BatchNorm's shift
    # (its fused training and eval forms), and without (after a separate BatchNorm)
    assert report["scale_flags"] == [[True, False, True], [True, True, True]]
