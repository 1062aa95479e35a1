"""The SE block's training computation as ``torch.library`` operators (paper Sec. 3, Eqs. 2-4).

``senet::se_scale``: squeeze (channel means), excitation (FC-ReLU-FC-gate) and ``residual + x * s`` in one node;
``senet::se_norm_scale``: the same preceded by the branch's BatchNorm in training, keeping the BatchNorm's input
instead of its output for the backward (it is recomputed there: one SE activation less in memory).

They take tensors, never modules, and have a fake (meta) kernel, an autograd formula and an autocast rule, so
eager, autocast (the AMP path), channels_last and ``torch.compile`` (no graph break) all go through them. The
backward is an operator of its own without a derivative: a second derivative raises instead of coming out wrong.
The implementations here are PyTorch ops (any device); the hand-written backward saves autograd's extra passes
over the (N, C, H, W) tensors (:func:`_backward`). Inference and export use the plain ops (senet's layers call
these operators only in training), so exported files never need senet.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

GATE_FUNCTIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
_GATE_DERIVATIVES = {
    "sigmoid": lambda g: g * (1 - g),
    "tanh": lambda g: 1 - g * g,
    "relu": lambda g: (g > 0).to(g.dtype),
}
Tensor = torch.Tensor


def excitation(z: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, gate: str):
    """FC -> ReLU -> FC -> gate on the squeezed (N, C) descriptor: the hidden layer and the gates s (Eq. 3)."""
    hidden = F.linear(z, w1, b1).relu_()
    return hidden, GATE_FUNCTIONS[gate](F.linear(hidden, w2, b2))


def _scale(x: Tensor, residual: Tensor | None, gates: Tensor) -> Tensor:
    """``residual + x * s`` in one pass, laid out as ``x`` (channels_last stays channels_last, as the fake
    kernel promises, whatever the residual's layout)."""
    scale = gates[:, :, None, None]
    if residual is None:
        return x * scale
    return torch.addcmul(residual, x, scale, out=torch.empty_like(x))


def _check_gate(gate: str) -> None:
    if gate not in GATE_FUNCTIONS:
        raise ValueError(f"unknown gate {gate!r}; choose one of {', '.join(GATE_FUNCTIONS)}")


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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(residual + x * s(x), z, hidden, s)``: the output and the (N, C)-sized values the backward needs."""
    _check_gate(gate)
    z = x.mean((2, 3))
    hidden, gates = excitation(z, w1, b1, w2, b2, gate)
    return _scale(x, residual, gates), z, hidden, gates


def _small_outputs(x: Tensor, w1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n, c = x.shape[:2]
    return x.new_empty(n, c), x.new_empty(n, w1.shape[0]), x.new_empty(n, c)


@se_scale.register_fake
def _(x, residual, w1, b1, w2, b2, gate):
    return (torch.empty_like(x), *_small_outputs(x, w1))


@torch.library.custom_op("senet::se_scale_backward", mutates_args=())
def se_scale_backward(
    grad: Tensor,
    y: Tensor,
    z: Tensor,
    hidden: Tensor,
    gates: Tensor,
    w1: Tensor,
    w2: Tensor,
    gate: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``residual + y * s(y)`` for y, w1, b1, w2, b2 (see :func:`_backward`)."""
    return _backward(grad, y, z, hidden, gates, w1, w2, gate)


@se_scale_backward.register_fake
def _(grad, y, z, hidden, gates, w1, w2, gate):
    return (
        torch.empty_like(y),
        torch.empty_like(w1),
        w1.new_empty(w1.shape[0]),
        torch.empty_like(w2),
        w2.new_empty(w2.shape[0]),
    )


def _backward(grad, y, z, hidden, gates, w1, w2, gate: str) -> tuple:
    """No full-size temporaries but the input gradient: ``ds = sum_hw(grad * y)`` is a batched dot product,
    ``dy = grad * s + dz / HW`` one ``addcmul``."""
    grad_gates = torch.einsum("nchw,nchw->nc", grad, y)
    d2 = grad_gates * _GATE_DERIVATIVES[gate](gates)
    d1 = (d2 @ w2) * (hidden > 0)
    dz = (d1 @ w1) / (y.shape[2] * y.shape[3])
    grad_y = torch.addcmul(dz[:, :, None, None].expand_as(y), grad, gates[:, :, None, None])
    return grad_y, d1.t() @ z, d1.sum(0), d2.t() @ hidden, d2.sum(0)


def _se_scale_setup(ctx, inputs, output) -> None:
    x, residual, w1, b1, w2, b2, gate = inputs
    _, z, hidden, gates = output
    ctx.mark_non_differentiable(z, hidden, gates)
    ctx.save_for_backward(x, z, hidden, gates, w1, w2)
    ctx.gate, ctx.has_residual, ctx.has_bias = gate, residual is not None, (b1 is not None, b2 is not None)


def _se_scale_autograd(ctx, grad, *unused):
    x, z, hidden, gates, w1, w2 = ctx.saved_tensors
    grad_x, gw1, gb1, gw2, gb2 = se_scale_backward(grad, x, z, hidden, gates, w1, w2, ctx.gate)
    return (
        grad_x,
        grad if ctx.has_residual else None,
        gw1,
        gb1 if ctx.has_bias[0] else None,
        gw2,
        gb2 if ctx.has_bias[1] else None,
        None,
    )


se_scale.register_autograd(_se_scale_autograd, setup_context=_se_scale_setup)


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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``residual + y * s(y)`` with ``y = BatchNorm(c)`` in training (batch statistics), and what the backward
    needs: the batch mean and inverse std, z, hidden, s. The operator is functional: the caller updates the
    running statistics from the batch ones (:func:`update_running_stats`), as ``nn.BatchNorm2d`` does."""
    _check_gate(gate)
    y, mean, invstd = torch.ops.aten.native_batch_norm(c, bn_weight, bn_bias, None, None, True, 0.0, eps)
    z = y.mean((2, 3))
    hidden, gates = excitation(z, w1, b1, w2, b2, gate)
    return _scale(y, residual, gates), mean, invstd, z, hidden, gates


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
def _(c, residual, bn_weight, bn_bias, eps, w1, b1, w2, b2, gate):
    stats = c.new_empty(
        c.shape[1], dtype=torch.float32 if c.dtype in (torch.float16, torch.bfloat16) else c.dtype
    )
    return (torch.empty_like(c), stats, torch.empty_like(stats), *_small_outputs(c, w1))


def _per_channel(values: Tensor) -> Tensor:
    return values[None, :, None, None]


@torch.library.custom_op("senet::se_norm_scale_backward", mutates_args=())
def se_norm_scale_backward(
    grad: Tensor,
    c: Tensor,
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Recompute y from c and the batch statistics (one pass), SE's backward, then BatchNorm's backward."""
    scale = _per_channel(invstd * bn_weight).to(c.dtype)
    y = torch.addcmul(_per_channel(bn_bias).to(c.dtype), c - _per_channel(mean).to(c.dtype), scale)
    grad_y, gw1, gb1, gw2, gb2 = _backward(grad, y, z, hidden, gates, w1, w2, gate)
    del y
    grad_c, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
        grad_y, c, bn_weight, None, None, mean, invstd, True, eps, [True, True, True]
    )
    return grad_c, grad_bn_weight, grad_bn_bias, gw1, gb1, gw2, gb2


@se_norm_scale_backward.register_fake
def _(grad, c, mean, invstd, bn_weight, bn_bias, z, hidden, gates, w1, w2, eps, gate):
    return (
        torch.empty_like(c),
        torch.empty_like(bn_weight),
        torch.empty_like(bn_bias),
        torch.empty_like(w1),
        w1.new_empty(w1.shape[0]),
        torch.empty_like(w2),
        w2.new_empty(w2.shape[0]),
    )


def _se_norm_scale_setup(ctx, inputs, output) -> None:
    c, residual, bn_weight, bn_bias, eps, w1, b1, w2, b2, gate = inputs
    _, mean, invstd, z, hidden, gates = output
    ctx.mark_non_differentiable(mean, invstd, z, hidden, gates)
    ctx.save_for_backward(c, mean, invstd, bn_weight, bn_bias, z, hidden, gates, w1, w2)
    ctx.gate, ctx.eps, ctx.has_bias = gate, eps, (b1 is not None, b2 is not None)


def _se_norm_scale_autograd(ctx, grad, *unused):
    grads = se_norm_scale_backward(grad, *ctx.saved_tensors, ctx.eps, ctx.gate)
    grad_c, grad_bn_weight, grad_bn_bias, gw1, gb1, gw2, gb2 = grads
    b1 = gb1 if ctx.has_bias[0] else None
    b2 = gb2 if ctx.has_bias[1] else None
    return grad_c, grad, grad_bn_weight, grad_bn_bias, None, gw1, b1, gw2, b2, None


se_norm_scale.register_autograd(_se_norm_scale_autograd, setup_context=_se_norm_scale_setup)


def _no_second_derivative(ctx, *grads):
    raise RuntimeError(
        "senet's SE operator has no second derivative (double backward, e.g. a gradient penalty, or "
        "torch.autograd.grad(..., create_graph=True) followed by a backward through the result)"
    )


for _backward_op in (se_scale_backward, se_norm_scale_backward):
    _backward_op.register_autograd(_no_second_derivative)


# Under autocast the operators run in the autocast dtype, as the convolutions around them do: this is the AMP
# path (the plain ops would be autocast op by op, with fp32 temporaries between them).
for _device, _dtype in (("cuda", torch.float16), ("cpu", torch.bfloat16)):
    torch.library.register_autocast("senet::se_scale", _device, _dtype)
