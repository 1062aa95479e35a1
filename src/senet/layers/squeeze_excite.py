"""The Squeeze-and-Excitation block (paper Sec. 3) and the options its ablations vary (Sec. 6).

One module serves every network family: a family decides *where* the block goes (``SEConfig.position``,
``SEConfig.stages``); the block itself only decides *how* channels are recalibrated.
"""

from __future__ import annotations

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
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
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
        if self.squeeze == "avg":
            z = x.mean((2, 3), keepdim=True)
        elif self.squeeze == "max":
            z = x.amax((2, 3), keepdim=True)
        else:
            z = x
        return self._gate_fn(self.fc2(self.relu(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gates(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, squeeze={self.squeeze!r}, gate={self.gate!r}"


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
        if self.position not in POSITIONS:
            raise ValueError(f"unknown SE position {self.position!r}; choose one of {', '.join(POSITIONS)}")
        # Fail at build time rather than deep inside the first block.
        SqueezeExcite(1, self.reduction, self.squeeze, self.gate)

    def block(self, channels: int) -> SqueezeExcite:
        return SqueezeExcite(channels, self.reduction, self.squeeze, self.gate, self.bias)

    def require_position(self, family: str, allowed: tuple[str, ...] = ("standard",)) -> None:
        """Refuse positions a family does not define (Fig. 5's variants are defined for residual units)."""
        if self.position not in allowed:
            raise ValueError(f"{family} supports se_position {', '.join(map(repr, allowed))}, got {self.position!r}")

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
