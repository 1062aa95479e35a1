"""The SE block's training computation as ``torch.library`` operators (paper Sec. 3, Eqs. 2-4).

``senet::se_scale``: squeeze (channel means), excitation (FC-ReLU-FC-gate) and ``relu?(residual + x * s)`` in
one node; ``senet::se_norm_scale``: the same preceded by the branch's BatchNorm in training, keeping the
BatchNorm's input instead of its output for the backward.

They take tensors, never modules, and have a fake (meta) kernel and an autograd formula, so eager, autocast
(the AMP path), channels_last and ``torch.compile`` (no graph break) all go through them. They compute in
their inputs' dtype: under autocast, :class:`senet.SqueezeExcite` passes them the autocast dtype (fp16 or
bf16, the one the user chose) rather than a fixed-dtype ``register_autocast`` rule. The backward is an
operator of its own without a derivative: a second derivative raises instead of coming out wrong.

Two implementations compute the same thing: Triton kernels (:mod:`senet.ops._triton_se`) for CUDA tensors,
one pass over memory per step the SE block needs, and PyTorch ops elsewhere (CPU, float64, installs without
Triton), whose hand-written backward still saves autograd's extra passes. Eager inference on CUDA goes through
the same kernels (:func:`se_inference`); CPU inference, tracing, compiling and exporting use the plain ops, so
exported files never need senet."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.nn import functional as F

from senet.ops.triton_switch import triton_enabled


def _two_sigmoid(x: Tensor) -> Tensor:
    """``2 * sigmoid(x)``: 1 at x = 0, so an SE block whose last FC is zero starts as the identity
    (``senet.add_se(..., init="identity")``); its range (0, 2) can also amplify a channel."""
    return 2 * torch.sigmoid(x)


GATE_FUNCTIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "2sigmoid": _two_sigmoid}
# Each gate's derivative, written in its output g (what the backward keeps).
_GATE_DERIVATIVES = {
    "sigmoid": lambda g: g * (1 - g),
    "tanh": lambda g: 1 - g * g,
    "relu": lambda g: (g > 0).to(g.dtype),
    "2sigmoid": lambda g: g * (1 - g / 2),  # g = 2s: d(2s)/dx = 2s(1 - s) = g(1 - g/2)
}
Tensor = torch.Tensor

# Devices whose tensors go through the Triton kernels (senet.ops._triton_se). The tests add "cpu" under
# TRITON_INTERPRET=1; without Triton (CPU-only installs) every device uses the PyTorch implementation.
TRITON_DEVICES = {"cuda"}


def triton_kernels(x: Tensor) -> Any | None:
    """The Triton kernel module for ``x``, or None where the PyTorch implementation runs (CPU, float64,
    no Triton installed, or turned off by the switch in :mod:`senet.ops.triton_switch`)."""
    if not triton_enabled() or x.device.type not in TRITON_DEVICES:
        return None
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    try:
        from senet.ops import _triton_se
    except ImportError:  # Triton is not installed: the PyTorch implementation computes the same
        return None
    return _triton_se


def excitation(z: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, gate: str):
    """FC -> ReLU -> FC -> gate on the squeezed (N, C) descriptor: the hidden layer and the
    gates s (Eq. 3)."""
    hidden = F.linear(z, w1, b1).relu_()
    return hidden, GATE_FUNCTIONS[gate](F.linear(hidden, w2, b2))


def _excitation_backward(grad_gates: Tensor, z, hidden, gates, w1, w2, gate: str, hw: int):
    """From ``ds = sum_hw(grad * y)`` to the squeeze's gradient ``dz / HW`` and the FC weights' gradients."""
    d2 = grad_gates.to(gates.dtype) * _GATE_DERIVATIVES[gate](gates)
    d1 = (d2 @ w2) * (hidden > 0)
    return (d1 @ w1) / hw, (d1.t() @ z, d1.sum(0), d2.t() @ hidden, d2.sum(0))


def _per_channel(values: Tensor) -> Tensor:
    return values[..., None, None] if values.dim() == 2 else values[None, :, None, None]


def _scale(x: Tensor, residual: Tensor | None, gates: Tensor, relu: bool) -> Tensor:
    """``relu?(residual + x * s)`` laid out as ``x`` (channels_last stays channels_last, as the fake kernel
    promises, whatever the residual's layout)."""
    if residual is None:
        out = x * _per_channel(gates)
    else:
        out = torch.addcmul(residual, x, _per_channel(gates), out=torch.empty_like(x))
    return out.relu_() if relu else out


def _check_gate(gate: str) -> None:
    if gate not in GATE_FUNCTIONS:
        raise ValueError(f"unknown gate {gate!r}; choose one of {', '.join(GATE_FUNCTIONS)}")


def _no_residual_grad(x: Tensor) -> Tensor:
    """The residual's gradient where it is the incoming one unchanged (no fused ReLU): the autograd formula
    passes that through, since an operator may not return its own input."""
    return x.new_empty(0)


# --------------------------------------------------------------------------------------------- se_scale


@torch.library.custom_op("senet::se_scale", mutates_args=())
def se_scale(
    x: Tensor,
    residual: Optional[Tensor],
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    gate: str,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(relu?(residual + x * s(x)), z, hidden, s)``: the output and the (N, C)-sized values the
    backward needs."""
    _check_gate(gate)
    kernels = triton_kernels(x)
    if kernels is not None:
        return _scale_triton(kernels, x, residual, w1, b1, w2, b2, gate, relu)
    z = x.mean((2, 3))
    hidden, gates = excitation(z, w1, b1, w2, b2, gate)
    return _scale(x, residual, gates, relu), z, hidden, gates


def _scale_triton(kernels, x, residual, w1, b1, w2, b2, gate, relu):
    z = _channel_means(kernels, x).to(x.dtype)
    hidden, gates = excitation(z, w1, b1, w2, b2, gate)
    return kernels.scale(x, residual, gates, None, relu), z, hidden, gates


def _channel_means(kernels, x: Tensor) -> Tensor:
    """The squeeze in fp32: per (n, c) means, from one pass of the kernels over x."""
    return kernels.channel_sums(x)[0] / (x.shape[2] * x.shape[3])


def _small_outputs(x: Tensor, w1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n, c = x.shape[:2]
    return x.new_empty(n, c), x.new_empty(n, w1.shape[0]), x.new_empty(n, c)


@se_scale.register_fake
def _(x, residual, w1, b1, w2, b2, gate, relu=False):
    return (torch.empty_like(x), *_small_outputs(x, w1))


def _weight_grads_like(w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.empty_like(w1), w1.new_empty(w1.shape[0]), torch.empty_like(w2), w2.new_empty(w2.shape[0])


def _residual_grad_like(x: Tensor, out: Tensor | None, residual_grad: bool) -> Tensor:
    return torch.empty_like(x) if residual_grad and out is not None else x.new_empty(0)


@torch.library.custom_op("senet::se_scale_backward", mutates_args=())
def se_scale_backward(
    grad: Tensor,
    y: Tensor,
    out: Optional[Tensor],
    z: Tensor,
    hidden: Tensor,
    gates: Tensor,
    w1: Tensor,
    w2: Tensor,
    gate: str,
    residual_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``relu?(residual + y * s(y))`` for y, the residual (where the ReLU makes it differ from
    ``grad``; ``out`` is given when the ReLU was fused), w1, b1, w2, b2."""
    hw = y.shape[2] * y.shape[3]
    kernels = triton_kernels(y)
    if kernels is not None:
        return _scale_backward_triton(kernels, grad, y, out, z, hidden, gates, w1, w2, gate, residual_grad)
    # No full-size temporaries but the input gradient: ds is a batched dot product, dy one addcmul.
    if out is not None:
        grad = torch.ops.aten.threshold_backward(grad, out, 0)  # ReLU's own backward: one pass
    dz, weight_grads = _excitation_backward(
        torch.einsum("nchw,nchw->nc", grad, y), z, hidden, gates, w1, w2, gate, hw
    )
    grad_y = torch.addcmul(_per_channel(dz).expand_as(y), grad, _per_channel(gates))
    grad_residual = grad if residual_grad and out is not None else _no_residual_grad(y)
    return grad_y, grad_residual, *weight_grads


def _scale_backward_triton(kernels, grad, y, out, z, hidden, gates, w1, w2, gate, residual_grad):
    grad_gates = kernels.grad_sums(grad, out, y)[1]
    hw = y.shape[2] * y.shape[3]
    dz, weight_grads = _excitation_backward(grad_gates, z, hidden, gates, w1, w2, gate, hw)
    grad_y, grad_residual = kernels.grad_apply(
        grad, out, y, gates, None, dz, residual_grad and out is not None
    )
    return grad_y, grad_residual if grad_residual is not None else _no_residual_grad(y), *weight_grads


@se_scale_backward.register_fake
def _(grad, y, out, z, hidden, gates, w1, w2, gate, residual_grad):
    return torch.empty_like(y), _residual_grad_like(y, out, residual_grad), *_weight_grads_like(w1, w2)


def _se_scale_setup(ctx, inputs, output) -> None:
    x, residual, w1, b1, w2, b2, gate, relu = inputs
    out, z, hidden, gates = output
    ctx.mark_non_differentiable(z, hidden, gates)
    ctx.save_for_backward(x, out if relu else None, z, hidden, gates, w1, w2)
    ctx.gate, ctx.has_residual, ctx.has_bias = gate, residual is not None, (b1 is not None, b2 is not None)


def _se_scale_autograd(ctx, grad, *unused):
    x, out, z, hidden, gates, w1, w2 = ctx.saved_tensors
    grad_x, grad_residual, gw1, gb1, gw2, gb2 = se_scale_backward(
        grad, x, out, z, hidden, gates, w1, w2, ctx.gate, ctx.has_residual
    )
    if ctx.has_residual and out is None:
        grad_residual = grad
    return (
        grad_x,
        grad_residual if ctx.has_residual else None,
        gw1,
        gb1 if ctx.has_bias[0] else None,
        gw2,
        gb2 if ctx.has_bias[1] else None,
        None,
        None,
    )


se_scale.register_autograd(_se_scale_autograd, setup_context=_se_scale_setup)


# ------------------------------------------------------------------------------------------- inference


def se_inference(
    kernels: Any,
    x: Tensor,
    residual: Tensor | None,
    weights: list[Tensor | None],
    gate: str,
    relu: bool,
    norm: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Inference through the Triton kernels (no autograd): ``relu?(residual + y * s(y))`` with ``y = x``, or
    ``y = a * x + b`` for ``norm = (a, b)``, an eval-mode BatchNorm's per-channel affine. Two passes over
    memory, the squeeze's and the output's, where the plain ops make four (five with the BatchNorm): the
    training operators' forward, less what only backward needs."""
    if norm is None:
        return _scale_triton(kernels, x, residual, *weights, gate, relu)[0]
    return _affine_scale_triton(
        kernels, x, residual, _channel_means(kernels, x), *norm, *weights, gate, relu
    )[0]


# ----------------------------------------------------------------------------------------- se_norm_scale


@torch.library.custom_op("senet::se_norm_scale", mutates_args=())
def se_norm_scale(
    c: Tensor,
    residual: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    eps: float,
    w1: Tensor,
    b1: Optional[Tensor],
    w2: Tensor,
    b2: Optional[Tensor],
    gate: str,
    relu: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``relu?(residual + y * s(y))`` with ``y = BatchNorm(c)`` in training (batch statistics), and what the
    backward needs: the batch mean and inverse std, z, hidden, s. The operator is functional: the caller
    updates the running statistics from the batch ones (:func:`update_running_stats`), as ``nn.BatchNorm2d``
    does. y is never stored: with the Triton kernels it is not even written (one pass for the statistics and
    the squeeze, which is their per-sample share, one for the output)."""
    _check_gate(gate)
    kernels = triton_kernels(c)
    if kernels is not None:
        return _norm_scale_triton(kernels, c, residual, bn_weight, bn_bias, eps, w1, b1, w2, b2, gate, relu)
    y, mean, invstd = torch.ops.aten.native_batch_norm(c, bn_weight, bn_bias, None, None, True, 0.0, eps)
    z = y.mean((2, 3))
    hidden, gates = excitation(z, w1, b1, w2, b2, gate)
    return _scale(y, residual, gates, relu), mean, invstd, z, hidden, gates


def _norm_scale_triton(kernels, c, residual, bn_weight, bn_bias, eps, w1, b1, w2, b2, gate, relu):
    n, hw = c.shape[0], c.shape[2] * c.shape[3]
    sums, squares, shift = kernels.channel_sums(c, squares=True)
    row_mean = shift + sums / hw
    mean = row_mean.mean(0)
    # Chan et al.'s pairwise combination of the per-sample (shifted) moments: no E[x^2] - E[x]^2 cancellation.
    var = ((squares - sums * sums / hw).sum(0) + hw * (row_mean - mean).square().sum(0)) / (n * hw)
    invstd = torch.rsqrt(var + eps)
    a, b = _norm_affine(bn_weight, bn_bias, mean, invstd)
    out, z, hidden, gates = _affine_scale_triton(
        kernels, c, residual, row_mean, a, b, w1, b1, w2, b2, gate, relu
    )
    stats_dtype = mean.dtype if c.dtype in (torch.float16, torch.bfloat16) else c.dtype
    return out, mean.to(stats_dtype), invstd.to(stats_dtype), z, hidden, gates


def _affine_scale_triton(kernels, c, residual, row_mean, a, b, w1, b1, w2, b2, gate, relu):
    """``relu?(residual + y * s(y))`` for ``y = a * c + b`` per channel, from c's per-sample means: y is
    never written, the kernels apply the affine on the way. Returns the output, z, hidden and s."""
    z = (row_mean * a + b).to(c.dtype)  # the squeeze of y
    hidden, gates = excitation(z, w1, b1, w2, b2, gate)
    s = gates.float()
    return kernels.scale(c, residual, a * s, b * s, relu), z, hidden, gates


def _norm_affine(bn_weight: Tensor, bn_bias: Tensor, mean: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """BatchNorm in training as ``y = a * c + b`` per channel (in fp32, or float64 for float64 inputs)."""
    dtype = torch.promote_types(bn_weight.dtype, torch.float32)
    a = bn_weight.to(dtype) * invstd.to(dtype)
    return a, bn_bias.to(dtype) - mean.to(dtype) * a


@torch.no_grad()
def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    invstd: Tensor,
    eps: float,
    count: int,
    momentum: float,
) -> None:
    """``nn.BatchNorm2d``'s update from a batch of ``count`` values per channel (the unbiased variance)."""
    var = (invstd.pow(-2) - eps) * (count / max(count - 1, 1))
    running_mean.lerp_(mean.to(running_mean.dtype), momentum)
    running_var.lerp_(var.to(running_var.dtype), momentum)


@se_norm_scale.register_fake
def _(c, residual, bn_weight, bn_bias, eps, w1, b1, w2, b2, gate, relu=False):
    stats = c.new_empty(
        c.shape[1], dtype=torch.float32 if c.dtype in (torch.float16, torch.bfloat16) else c.dtype
    )
    return (torch.empty_like(c), stats, torch.empty_like(stats), *_small_outputs(c, w1))


@torch.library.custom_op("senet::se_norm_scale_backward", mutates_args=())
def se_norm_scale_backward(
    grad: Tensor,
    c: Tensor,
    out: Optional[Tensor],
    mean: Tensor,
    invstd: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    z: Tensor,
    hidden: Tensor,
    gates: Tensor,
    w1: Tensor,
    w2: Tensor,
    eps: float,
    gate: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients for c, the residual (with a fused ReLU; see se_scale_backward), the BatchNorm's weight and
    bias, w1, b1, w2, b2: y is recomputed from c and the batch statistics (PyTorch), or never formed at all
    (Triton: BatchNorm's and SE's reductions come from one read of grad and c)."""
    kernels = triton_kernels(c)
    if kernels is not None:
        return _norm_scale_backward_triton(kernels, grad, c, out, mean, invstd, bn_weight, bn_bias, z, hidden,
                                           gates, w1, w2, gate)  # fmt: skip
    a, b = _norm_affine(bn_weight, bn_bias, mean, invstd)
    y = torch.addcmul(_per_channel(b).to(c.dtype), c, _per_channel(a).to(c.dtype))
    grad_y, grad_residual, *weight_grads = se_scale_backward(
        grad, y, out, z, hidden, gates, w1, w2, gate, True
    )
    del y
    grad_c, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
        grad_y, c, bn_weight, None, None, mean, invstd, True, eps, [True, True, True]
    )
    return grad_c, grad_residual, grad_bn_weight, grad_bn_bias, *weight_grads


def _norm_scale_backward_triton(kernels, grad, c, out, mean, invstd, bn_weight, bn_bias, z, hidden, gates,
                                w1, w2, gate):  # fmt: skip
    """BatchNorm's backward ``dc = a * (dy - mean(dy) - xhat * mean(dy * xhat))`` with ``dy = g * s + dz``
    written as ``g * p[n, c] + c * q[c] + r[n, c]``; its channel sums follow from the per-(n, c) sums of g,
    g * c and c."""
    n, hw = c.shape[0], c.shape[2] * c.shape[3]
    count = n * hw
    g_sum, gc_sum, c_sum = kernels.grad_sums(grad, out, c, x_sums=True)
    mean, invstd = mean.float(), invstd.float()
    a, b = _norm_affine(bn_weight, bn_bias, mean, invstd)
    dz, weight_grads = _excitation_backward(a * gc_sum + b * g_sum, z, hidden, gates, w1, w2, gate, hw)
    s, dz = gates.float(), dz.float()
    grad_bias = (s * g_sum).sum(0) + hw * dz.sum(0)
    grad_weight = invstd * ((s * (gc_sum - mean * g_sum)).sum(0) + (dz * (c_sum - hw * mean)).sum(0))
    q = -a * invstd * grad_weight / count
    r = a * (dz - grad_bias / count + mean * invstd * grad_weight / count)
    grad_c, grad_residual = kernels.grad_apply(grad, out, c, a * s, q, r, out is not None)
    return (
        grad_c,
        grad_residual if grad_residual is not None else _no_residual_grad(c),
        grad_weight.to(bn_weight.dtype),
        grad_bias.to(bn_bias.dtype),
        *weight_grads,
    )


@se_norm_scale_backward.register_fake
def _(grad, c, out, mean, invstd, bn_weight, bn_bias, z, hidden, gates, w1, w2, eps, gate):
    return (
        torch.empty_like(c),
        _residual_grad_like(c, out, True),
        torch.empty_like(bn_weight),
        torch.empty_like(bn_bias),
        *_weight_grads_like(w1, w2),
    )


def _se_norm_scale_setup(ctx, inputs, output) -> None:
    c, residual, bn_weight, bn_bias, eps, w1, b1, w2, b2, gate, relu = inputs
    out, mean, invstd, z, hidden, gates = output
    ctx.mark_non_differentiable(mean, invstd, z, hidden, gates)
    ctx.save_for_backward(
        c, out if relu else None, mean, invstd, bn_weight, bn_bias, z, hidden, gates, w1, w2
    )
    ctx.gate, ctx.eps, ctx.has_bias = gate, eps, (b1 is not None, b2 is not None)


def _se_norm_scale_autograd(ctx, grad, *unused):
    c, out, *rest = ctx.saved_tensors
    grads = se_norm_scale_backward(grad, c, out, *rest, ctx.eps, ctx.gate)
    grad_c, grad_residual, grad_bn_weight, grad_bn_bias, gw1, gb1, gw2, gb2 = grads
    b1 = gb1 if ctx.has_bias[0] else None
    b2 = gb2 if ctx.has_bias[1] else None
    grad_residual = grad_residual if out is not None else grad
    return grad_c, grad_residual, grad_bn_weight, grad_bn_bias, None, gw1, b1, gw2, b2, None, None


se_norm_scale.register_autograd(_se_norm_scale_autograd, setup_context=_se_norm_scale_setup)


def _no_second_derivative(ctx, *grads):
    raise RuntimeError(
        "senet's SE operator has no second derivative (double backward, e.g. a gradient penalty, or "
        "torch.autograd.grad(..., create_graph=True) followed by a backward through the result)"
    )


for _backward_op in (se_scale_backward, se_norm_scale_backward):
    _backward_op.register_autograd(_no_second_derivative)
