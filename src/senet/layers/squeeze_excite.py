"""The Squeeze-and-Excitation block (paper Sec. 3) and the options its ablations vary (Sec. 6).

One module serves every network family: a family decides *where* the block goes (``SEConfig.position``,
``SEConfig.stages``); the block itself only decides *how* channels are recalibrated.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import nn

Squeeze = Literal["avg", "max", "none"]
Gate = Literal["sigmoid", "tanh", "relu"]
Position = Literal["standard", "pre", "post", "identity", "3x3"]

SQUEEZES: tuple[str, ...] = ("avg", "max", "none")
GATES: tuple[str, ...] = ("sigmoid", "tanh", "relu")
POSITIONS: tuple[str, ...] = ("standard", "pre", "post", "identity", "3x3")

_GATE_FUNCTIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class SqueezeExcite(nn.Module):
    """Squeeze (global pooling) -> excitation (FC-ReLU-FC-gate) -> channel-wise rescale. Paper Sec. 3.

    Args:
        channels: C, the number of channels of the input (and output).
        reduction: r, the excitation bottleneck ratio; the hidden width is ``C // r`` (at least 1).
            r = 16 is the paper's default (Table 10).
        squeeze: ``"avg"`` global average pooling (paper), ``"max"`` global max pooling (Table 11), or
            ``"none"``: no pooling, the FCs act as 1x1 convs on every position (NoSqueeze, Table 16).
        gate: the excitation non-linearity: ``"sigmoid"`` (paper), ``"tanh"`` or ``"relu"`` (Table 12).
        bias: whether ``fc1``/``fc2`` have biases. The released models have them; the ResNet ablations
            drop them (Sec. 6).
        hidden_channels: explicit hidden width, overriding ``channels // reduction``.

    The two FC layers are 1x1 convolutions named ``fc1``/``fc2``, as in the released Caffe models, so
    the same weights serve the squeezed (N, C, 1, 1) and the NoSqueeze (N, C, H, W) cases.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        squeeze: Squeeze = "avg",
        gate: Gate = "sigmoid",
        bias: bool = True,
        hidden_channels: int | None = None,
    ) -> None:
        super().__init__()
        if squeeze not in SQUEEZES:
            raise ValueError(f"unknown squeeze {squeeze!r}; choose one of {', '.join(SQUEEZES)}")
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; choose one of {', '.join(GATES)}")
        if not (_is_int(reduction) and reduction >= 1):
            raise ValueError(f"SqueezeExcite got reduction={reduction!r}; use an integer >= 1 (paper: 16)")
        if not (_is_int(channels) and channels >= 1):
            raise ValueError(f"SqueezeExcite got channels={channels!r}; use an integer >= 1")
        # A 0-wide bottleneck would build and gate every channel at the constant gate(fc2.bias).
        if hidden_channels is not None and not (_is_int(hidden_channels) and hidden_channels >= 1):
            raise ValueError(
                f"SqueezeExcite got hidden_channels={hidden_channels!r}; use an integer >= 1, "
                "or None for channels // reduction"
            )
        hidden = hidden_channels if hidden_channels is not None else max(1, channels // reduction)
        self.channels = channels
        self.squeeze = squeeze
        self.gate = gate
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)
        self._gate_fn = _GATE_FUNCTIONS[gate]

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The excitation s of Eq. 3: (N, C, 1, 1), or (N, C, H, W) with ``squeeze="none"``."""
        if self.squeeze == "none":
            return self._gate_fn(self.fc2(self.relu(self.fc1(x))))
        # On a squeezed (N, C) vector the 1x1 convs are matrix products: F.linear skips the convolution
        # machinery (oneDNN primitive look-up, layout reorders), which dominates at this size.
        z = x.mean((2, 3)) if self.squeeze == "avg" else x.amax((2, 3))
        return _excitation(z, *self._fc_weights(), self.gate)[1][:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused_backward(x):
            return _SqueezeExciteFunction.apply(x, None, *self._fc_weights(), self.gate)
        return x * self.gates(x)

    def scale_and_add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + x * gates(x)`` in one pass over memory: the released models' fused "Axpy" layer."""
        if self._fused_backward(x):
            return _SqueezeExciteFunction.apply(x, residual, *self._fc_weights(), self.gate)
        return torch.addcmul(residual, x, self.gates(x))

    # Training: recompute the BN output in the backward instead of saving it (see _NormSqueezeExciteFunction).
    # None = on CPU only, where it is faster too (SE-ResNet-50 step 1.18x -> 1.04x of ResNet-50); on an H100 it
    # saves the same memory (1.27x -> 1.00x) but the step goes from 1.15x to 1.26x (docs/performance.md).
    recompute_norm: bool | None = None

    def norm_scale_and_add(
        self, c: torch.Tensor, norm: nn.BatchNorm2d, residual: torch.Tensor
    ) -> torch.Tensor:
        """``residual + y * gates(y)`` with ``y = norm(c)``: in training, without keeping y for the backward."""
        # An empty batch (N = 0) steps aside: native_batch_norm refuses it, nn.BatchNorm2d passes it through.
        if not (
            self._fused_backward(c)
            and c.numel() > 0
            and norm.training
            and norm.affine
            and norm.track_running_stats
            and norm.momentum is not None
            and (self.recompute_norm if self.recompute_norm is not None else c.device.type == "cpu")
        ):
            return self.scale_and_add(norm(c), residual)
        norm.num_batches_tracked.add_(1)
        return _NormSqueezeExciteFunction.apply(
            c,
            residual,
            norm.weight,
            norm.bias,
            norm.running_mean,
            norm.running_var,
            norm.momentum,
            norm.eps,
            *self._fc_weights(),
            self.gate,
        )

    def _fc_weights(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        return self.fc1.weight.flatten(1), self.fc1.bias, self.fc2.weight.flatten(1), self.fc2.bias

    def _fused_backward(self, x: torch.Tensor) -> bool:
        """Training with the paper's average squeeze: one autograd node with a hand-written backward.
        In eval mode, or without autograd, the plain ops are as fast and stay traceable.
        Mixed precision and compiled graphs keep the plain path, which autocast and Inductor handle."""
        return (
            self.squeeze == "avg"
            and self.training
            and torch.is_grad_enabled()
            and isinstance(x, torch.Tensor)  # not a torch.fx proxy being traced
            and not torch.is_autocast_enabled(x.device.type)
            and not torch.compiler.is_compiling()
        )


_GATE_DERIVATIVES = {
    "sigmoid": lambda g: g * (1 - g),
    "tanh": lambda g: 1 - g * g,
    "relu": lambda g: (g > 0).to(g.dtype),
}


def _excitation(z: torch.Tensor, w1, b1, w2, b2, gate: str) -> tuple[torch.Tensor, torch.Tensor]:
    """FC -> ReLU -> FC -> gate on the squeezed (N, C) descriptor: the hidden layer and the gates s (Eq. 3)."""
    hidden = nn.functional.linear(z, w1, b1).relu_()
    return hidden, _GATE_FUNCTIONS[gate](nn.functional.linear(hidden, w2, b2))


def _excite(y: torch.Tensor, w1, b1, w2, b2, gate: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squeeze (channel means z) and excitation of ``y``: z, the hidden layer, the gates s."""
    z = y.mean((2, 3))
    return (z, *_excitation(z, w1, b1, w2, b2, gate))


def _excite_backward(grad, y, z, hidden, gates, w1, w2, gate: str, has_bias: tuple[bool, bool]) -> tuple:
    """Gradients of ``residual + y * s(y)`` for y and the FC parameters, with no full-size temporaries but
    the input gradient: ``ds = sum_hw(grad * y)`` is a batched dot product, ``dy = grad * s + dz / HW`` one
    ``addcmul``."""
    grad_gates = torch.einsum("nchw,nchw->nc", grad, y)
    d2 = grad_gates * _GATE_DERIVATIVES[gate](gates)
    d1 = (d2 @ w2) * (hidden > 0)
    dz = (d1 @ w1) / (y.shape[2] * y.shape[3])
    grad_y = torch.addcmul(dz[:, :, None, None].expand_as(y), grad, gates[:, :, None, None])
    return (
        grad_y,
        d1.t() @ z,
        d1.sum(0) if has_bias[0] else None,
        d2.t() @ hidden,
        d2.sum(0) if has_bias[1] else None,
    )


class _SqueezeExciteFunction(torch.autograd.Function):
    """Squeeze, excitation and ``residual + x * s`` as one autograd node (paper Sec. 3, Eqs. 2-4).

    Autograd's own graph for these few ops makes three extra passes over the (N, C, H, W) tensors in the
    backward: it materialises ``grad * x`` before summing it, and adds the squeeze's broadcast gradient to
    the rescale's gradient separately (see :func:`_excite_backward`).
    """

    @staticmethod
    def forward(ctx, x, residual, w1, b1, w2, b2, gate):  # type: ignore[override]
        z, hidden, gates = _excite(x, w1, b1, w2, b2, gate)
        scale = gates[:, :, None, None]
        out = x * scale if residual is None else torch.addcmul(residual, x, scale)
        ctx.save_for_backward(x, z, hidden, gates, w1, w2)
        ctx.gate, ctx.has_residual, ctx.has_bias = (
            gate,
            residual is not None,
            (b1 is not None, b2 is not None),
        )
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, z, hidden, gates, w1, w2 = ctx.saved_tensors
        grad_x, gw1, gb1, gw2, gb2 = _excite_backward(
            grad, x, z, hidden, gates, w1, w2, ctx.gate, ctx.has_bias
        )
        return grad_x, grad if ctx.has_residual else None, gw1, gb1, gw2, gb2, None


def _per_channel(values: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, 1), to broadcast over a batch of feature maps."""
    return values[None, :, None, None]


class _NormSqueezeExciteFunction(torch.autograd.Function):
    """``residual + y * s(y)`` with ``y = BatchNorm(c)`` in training, saving ``c`` instead of ``y``.

    The gate gradient needs the rescaled tensor y, so SE would keep one more activation per block for the
    backward (+23% saved memory for SE-ResNet-50). BatchNorm keeps its input c anyway: y is recomputed from
    c and the batch statistics in the backward (one extra pass), and BatchNorm's backward runs here too.
    Running statistics are updated exactly as ``nn.BatchNorm2d`` does.
    """

    @staticmethod
    def forward(
        ctx,
        c,
        residual,
        bn_weight,
        bn_bias,
        running_mean,
        running_var,
        momentum,
        eps,  # type: ignore[override]
        w1,
        b1,
        w2,
        b2,
        gate,
    ):
        y, mean, invstd = torch.ops.aten.native_batch_norm(c, bn_weight, bn_bias, None, None, True, 0.0, eps)
        with torch.no_grad():
            count = c.numel() // c.shape[1]
            var = (invstd.pow(-2) - eps) * (count / max(count - 1, 1))  # unbiased, as nn.BatchNorm2d keeps it
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var, momentum)
        z, hidden, gates = _excite(y, w1, b1, w2, b2, gate)
        out = torch.addcmul(residual, y, gates[:, :, None, None])
        ctx.save_for_backward(c, mean, invstd, bn_weight, bn_bias, z, hidden, gates, w1, w2)
        ctx.gate, ctx.eps, ctx.has_bias = gate, eps, (b1 is not None, b2 is not None)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        c, mean, invstd, bn_weight, bn_bias, z, hidden, gates, w1, w2 = ctx.saved_tensors
        y = torch.addcmul(_per_channel(bn_bias), c - _per_channel(mean), _per_channel(invstd * bn_weight))
        grad_y, gw1, gb1, gw2, gb2 = _excite_backward(
            grad, y, z, hidden, gates, w1, w2, ctx.gate, ctx.has_bias
        )
        del y
        grad_c, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y, c, bn_weight, None, None, mean, invstd, True, ctx.eps, [True, True, True]
        )
        return grad_c, grad, grad_bn_weight, grad_bn_bias, None, None, None, None, gw1, gb1, gw2, gb2, None


@dataclass(frozen=True)
class SEConfig:
    """How a network uses SE blocks: the block's options plus where the family puts them.

    ``position`` (paper Fig. 5, Tables 14-15) and ``stages`` (Table 13, 1-based, ``None`` = all) are
    read by the network families; the other fields go to :class:`SqueezeExcite`.
    """

    reduction: int = 16
    squeeze: Squeeze = "avg"
    gate: Gate = "sigmoid"
    bias: bool = True
    position: Position = "standard"
    stages: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Fail at build time, in the terms of the se_* build options, rather than deep inside the first block.
        checks = [
            ("reduction", _is_int(self.reduction) and self.reduction >= 1, "use an integer >= 1 (paper: 16)"),
            ("squeeze", self.squeeze in SQUEEZES, f"choose one of {', '.join(SQUEEZES)}"),
            ("gate", self.gate in GATES, f"choose one of {', '.join(GATES)}"),
            ("bias", isinstance(self.bias, bool), "use True or False"),  # a truthy string would give biases
            ("position", self.position in POSITIONS, f"choose one of {', '.join(POSITIONS)}"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise ValueError(f"SE blocks got se_{name}={getattr(self, name)!r}; {fix}")

    def block(self, channels: int) -> SqueezeExcite:
        return SqueezeExcite(channels, self.reduction, self.squeeze, self.gate, self.bias)

    def require_position(self, family: str, allowed: tuple[str, ...] = ("standard",)) -> None:
        """Refuse positions a family does not define (Fig. 5's variants are defined for residual units)."""
        if self.position not in allowed:
            raise ValueError(
                f"{family} supports se_position {', '.join(map(repr, allowed))}, got {self.position!r}"
            )

    def in_stage(self, stage: int) -> bool:
        return self.stages is None or stage in self.stages

    @classmethod
    def pop_from(cls, options: dict[str, Any], enabled: bool) -> SEConfig | None:
        """Take the ``se_*`` build options (``se_reduction=8``, ``se_stages=(1, 2)``...) out of ``options``.

        Returns ``None`` for a network without SE, and refuses SE options given to one.
        """
        given = {f.name: options.pop(f"se_{f.name}") for f in fields(cls) if f"se_{f.name}" in options}
        if not enabled:
            if given:
                names = ", ".join(f"se_{k}" for k in given)
                raise ValueError(f"{names} given to a network without SE blocks; use its se_ twin")
            return None
        if "stages" in given and given["stages"] is not None:
            given["stages"] = tuple(int(s) for s in given["stages"])
        return replace(cls(), **given)
