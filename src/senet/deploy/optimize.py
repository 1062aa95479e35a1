"""Inference-time optimisation: the same network, folded and compiled for speed (no retraining).

``optimize_for_inference`` (i) folds every BatchNorm into the preceding convolution (exact in real
arithmetic; float32 results differ by ~1e-6 relative), (ii) switches to channels_last, (iii) compiles with
torch.compile + Inductor's *freezing* (weights become constants, so Inductor can pre-pack them for oneDNN and
fuse the SE gate multiply with its neighbours), and (iv) runs in bfloat16 only where the CPU or GPU computes
it natively (bf16 changes logits by ~1e-2: documented in docs/benchmarks.md), and (v) on CUDA replays the
compiled network as CUDA graphs (Inductor's ``reduce-overhead``), so small batches are not bound by kernel
launches. A CUDA-graph output is overwritten by the next call of the same shape: PyTorch raises if an old
one is read afterwards; ``.clone()`` what you keep.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix arithmetic is done in hardware (AMX/AVX512-BF16 CPUs, Ampere+ GPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # oneDNN "supports" bf16 on any AVX-512 CPU by emulation, which is slower than fp32: ask for the real thing.
    try:
        with open("/proc/cpuinfo") as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with each conv -> BatchNorm pair folded into one conv.

    torch.fx finds the pairs wherever the conv's output feeds only the BatchNorm (SE-ResNets pass their last
    BN into the SE block's method: fx traces through it). A network fx cannot trace (VGG slices its classifier
    Sequential in ``forward``) has the conv -> BN neighbours of its Sequentials folded instead, which is exact
    because a Sequential feeds each child's output to the next and to nothing else. BatchNorms that follow
    something else (pre-activation units: an addition) stay as they are.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval(), inplace=True)
    except Exception:  # fx's tracing errors have no common type (NameError, TraceError...)
        return _fold_sequential_pairs(copy.deepcopy(model).eval())


def _fold_sequential_pairs(model: nn.Module) -> nn.Module:
    """Fold each ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an ``nn.Sequential``, in place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if (
                type(conv) is nn.Conv2d
                and type(norm) is nn.BatchNorm2d
                and norm.track_running_stats
                and not (conv._forward_hooks or norm._forward_hooks or norm._forward_pre_hooks)
            ):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return model


class _CastInput(nn.Module):
    """Runs ``module`` in ``dtype`` and returns float32, so callers keep passing and getting float32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype)).float()


def optimize_for_inference(
    model: nn.Module,
    example: torch.Tensor | None = None,
    *,
    compile: bool = True,
    channels_last: bool = True,
    bf16: bool | None = None,
    cuda_graphs: bool | None = None,
) -> nn.Module:
    """An inference-only version of ``model``: BN folded, channels_last, compiled with freezing, bf16 if native.

    ``bf16=None`` uses bf16 only where the hardware has it; ``cuda_graphs=None`` captures CUDA graphs on CUDA
    (with ``compile``). ``example`` (a batch) triggers compilation now
    rather than at the first call. The original model is left untouched.
    """
    device = next(model.parameters()).device
    optimized = fold_batchnorm(model)
    if channels_last:
        optimized = optimized.to(memory_format=torch.channels_last)
    if bf16 if bf16 is not None else native_bf16(device):
        optimized = _CastInput(optimized, torch.bfloat16)
    if cuda_graphs and (device.type != "cuda" or not compile):
        raise ValueError("cuda_graphs=True needs a model on a CUDA device and compile=True")
    if compile:
        graphs = cuda_graphs if cuda_graphs is not None else device.type == "cuda"
        optimized = torch.compile(optimized, options={"freezing": True, "triton.cudagraphs": graphs})
    if example is not None:
        with torch.inference_mode():
            optimized(example.contiguous(memory_format=torch.channels_last) if channels_last else example)
    return optimized
