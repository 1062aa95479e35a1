"""Inference-time optimisation: the same network, folded and compiled for speed (no retraining).

``optimize_for_inference`` (i) folds every BatchNorm into the preceding convolution (exact in real
arithmetic; float32 results differ by ~1e-6 relative), (ii) switches to channels_last, (iii) compiles with
torch.compile + Inductor's *freezing* (weights become constants, so Inductor can pre-pack them for oneDNN and
fuse the SE gate multiply with its neighbours), and (iv) on CUDA replays the compiled network as CUDA graphs
(Inductor's ``reduce-overhead``), so small batches are not bound by kernel launches. A CUDA-graph output is
overwritten by the next call of the same shape: PyTorch raises if an old one is read afterwards; ``.clone()``
what you keep.

It computes in float32, as the eager network does: outputs match eager within :data:`FP32_TOLERANCE` (tested
for every path). ``bf16=True`` runs in bfloat16 instead, a choice of the caller: bfloat16 keeps 8 significant
bits, so logits move by up to :data:`BF16_RELATIVE_TOLERANCE` of their scale (measured ~1e-2 on se_resnet50),
and it is only faster where the hardware computes it natively (:func:`native_bf16`); on other CPUs it is
several times slower.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

FP32_TOLERANCE = 1e-4  # largest |optimized - eager| of the logits in float32 (measured ~1e-6)
BF16_RELATIVE_TOLERANCE = 5e-2  # with bf16=True: of max(1, max |logit|); bfloat16 keeps 8 significant bits


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix arithmetic is done in hardware (AMX/AVX512-BF16 CPUs, Ampere+ GPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # oneDNN "supports" bf16 on any AVX-512 CPU by emulation, which is slower than fp32: ask for the real
    # thing.
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
        # strict=False: consecutive pairs, one fewer than the children
        for first, second in zip(names, names[1:], strict=False):
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
    bf16: bool = False,
    cuda_graphs: bool | None = None,
) -> nn.Module:
    """An inference-only version of ``model``: BN folded, channels_last, compiled with freezing, in float32.

    Its outputs match the eager network's within :data:`FP32_TOLERANCE`. ``bf16=True`` runs it in bfloat16
    (inputs and outputs stay float32), within :data:`BF16_RELATIVE_TOLERANCE` of the logits' scale: faster
    only where :func:`native_bf16` holds. ``cuda_graphs=None`` captures CUDA graphs on CUDA (with
    ``compile``). ``example`` (a batch) triggers compilation now rather than at the first call. The original
    model is left untouched; its ``pretrained_info`` (weights from :func:`senet.load_pretrained`) stays with
    the result, so :func:`senet.deploy.predict.predict` takes it.
    """
    for name, value in (("compile", compile), ("channels_last", channels_last), ("bf16", bf16)):
        if not isinstance(value, bool):
            raise ValueError(f"optimize_for_inference got {name}={value!r}; use True or False")
    device = next(model.parameters()).device
    if cuda_graphs and (device.type != "cuda" or not compile):
        raise ValueError("cuda_graphs=True needs a model on a CUDA device and compile=True")
    optimized = fold_batchnorm(model)
    if channels_last:
        optimized = optimized.to(memory_format=torch.channels_last)
    if bf16:
        optimized = _CastInput(optimized, torch.bfloat16)
    if compile:
        graphs = cuda_graphs if cuda_graphs is not None else device.type == "cuda"
        optimized = torch.compile(optimized, options={"freezing": True, "triton.cudagraphs": graphs})
    info = getattr(model, "pretrained_info", None)
    if info is not None:  # the weights' preprocessing and labels, which predict() and export need
        optimized.pretrained_info = info
    if example is not None:
        with torch.inference_mode():
            optimized(example.contiguous(memory_format=torch.channels_last) if channels_last else example)
    return optimized
