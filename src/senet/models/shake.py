"""Shake-Shake regularised ResNets and their SE twins (Gastaldi 2017; SE paper Tables 4 and 5).

Two networks of Gastaldi's "Shake-Shake regularization" (arXiv 1705.07485) are the strongest CIFAR
baselines of the SE paper, each trained with Cutout (DeVries & Taylor 2017; ``senet train --cutout``):

* **Shake-Shake-Image 26 2x96d** (CIFAR-10, Table 4): a 3x3 stem of 16 channels, 3 stages of 4 residual
  blocks of 96/192/384 channels; each block has 2 branches ReLU-conv3x3-BN-ReLU-conv3x3-BN; no ReLU after
  the sum (the next branch starts with one), a final ReLU before pooling.
* **Shake-Even-Image 29 2x4x64d** (CIFAR-100, Table 5): Gastaldi's ResNeXt-29 form: a 3x3 stem of 64
  channels with BN-ReLU, 3 stages of 3 blocks with outputs 256/512/1024; each block has 2 post-activation
  ResNeXt bottleneck branches (1x1 -> 3x3 with 4 groups of 64/128/256 channels -> 1x1, each followed by
  BN) and a ReLU after the sum.

"Shake-Shake-Image" / "Shake-Even-Image" are Gastaldi's Forward-Backward-Level names: in training the
forward pass combines the two branches as ``alpha * b1 + (1 - alpha) * b2`` with ``alpha ~ U(0, 1)`` drawn
per image; the backward pass scales the gradient reaching the branches by ``beta`` and ``1 - beta``,
where ``beta`` is drawn independently of ``alpha`` ("Shake"), fixed at 0.5 ("Even") or equal to alpha
("Keep"). At test time both coefficients are 0.5. The CIFAR-100 network is "Even" in the backward pass
(Gastaldi's README: ``-forwardShake true -backwardShake false -shakeImage true``).

Shortcuts, where the width or resolution changes, follow Gastaldi's code (xgastaldi/shake-shake):

* basic blocks: ReLU, then two paths, each a 1x1 "average pool" of stride s (a subsampling) and a 1x1 conv
  to half the output width, the second path on the input shifted one pixel right and down (so it sees the
  pixels the first skips), concatenated, then BN;
* bottleneck blocks: ResNeXt's projection, a strided 1x1 conv and BN.

SE (paper Sec. 1: "F_tr is the non-identity branch"): the SE block rescales the *combined* residual, after
the shake combination of the two branches and before the shortcut is added, with C = the block's output
channels and r = 16.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from senet.layers.squeeze_excite import SEConfig
from senet.models.base import (
    FeatureStage,
    PooledClassifier,
    check_common_options,
    check_positive,
    init_weights,
    present,
)
from senet.models.registry import PaperFigures, register_model

BranchType = Literal["basic", "bottleneck"]
ForwardMode = Literal["shake", "even"]
BackwardMode = Literal["shake", "even", "keep"]
Level = Literal["image", "batch"]

FORWARD_MODES: tuple[str, ...] = ("shake", "even")
BACKWARD_MODES: tuple[str, ...] = ("shake", "even", "keep")
LEVELS: tuple[str, ...] = ("image", "batch")


class ShakeShake(torch.autograd.Function):
    """``alpha * x1 + (1 - alpha) * x2`` forward; gradients ``beta * g`` and ``(1 - beta) * g`` backward.

    ``alpha`` and ``beta`` broadcast against the branches: (N, 1, 1, 1) per image, (1, 1, 1, 1) per batch.
    The coefficients are inputs rather than drawn inside, so the function is deterministic and testable;
    :func:`shake_shake` draws them.
    """

    @staticmethod
    def forward(
        ctx, x1: torch.Tensor, x2: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(beta)
        return alpha * x1 + (1 - alpha) * x2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (beta,) = ctx.saved_tensors
        return grad * beta, grad * (1 - beta), None, None


def shake_shake(
    x1: torch.Tensor,
    x2: torch.Tensor,
    training: bool,
    forward: ForwardMode = "shake",
    backward: BackwardMode = "shake",
    level: Level = "image",
) -> torch.Tensor:
    """Combine two residual branches as Gastaldi 2017 (Sec. 2): random in training, the mean at test time."""
    if not training:
        return 0.5 * (x1 + x2)
    # Both coefficients are drawn here, in the forward pass, so a seed fixes a whole training step.
    shape = (x1.shape[0] if level == "image" else 1,) + (1,) * (x1.dim() - 1)
    even = torch.full(shape, 0.5, dtype=x1.dtype, device=x1.device)
    alpha = torch.rand(shape, dtype=x1.dtype, device=x1.device) if forward == "shake" else even
    if backward == "shake":
        beta = torch.rand(shape, dtype=x1.dtype, device=x1.device)
    else:
        beta = alpha if backward == "keep" else even
    return ShakeShake.apply(x1, x2, alpha, beta)


class ShakeShortcut(nn.Module):
    """The shortcut of a block whose width or resolution changes (Gastaldi's code; see the module doc).

    ``shifted=True``: ReLU, two half-width 1x1 convs on the input subsampled by ``stride``, the second on
    the input shifted one pixel right and down, concatenated, BN. ``shifted=False``: a strided 1x1 conv
    and BN (ResNeXt's projection), with no ReLU (bottleneck blocks already end in one).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, shifted: bool) -> None:
        super().__init__()
        self.stride = stride
        self.shifted = shifted
        if shifted:
            if out_channels % 2:
                raise ValueError(f"a shifted shortcut needs an even output width, got {out_channels}")
            self.conv1 = nn.Conv2d(in_channels, out_channels // 2, 1, bias=False)
            self.conv2 = nn.Conv2d(in_channels, out_channels // 2, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shifted:
            return self.bn(self.conv1(x))
        x = F.relu(x)  # not in place: the block's branches read x too
        s = self.stride
        # A 1x1 average pool of stride s is a subsampling. Torch's SpatialZeroPadding(1, -1, 1, -1) in
        # Gastaldi's code = F.pad with (left 1, right -1, top 1, bottom -1): one pixel right and down.
        path1 = self.conv1(x[:, :, ::s, ::s])
        path2 = self.conv2(F.pad(x, (1, -1, 1, -1))[:, :, ::s, ::s])
        return self.bn(torch.cat((path1, path2), dim=1))


def _basic_branch(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """ReLU-conv3x3-BN-ReLU-conv3x3-BN (Gastaldi Sec. 2.2, CIFAR-10)."""
    return nn.Sequential(
        OrderedDict(
            relu0=nn.ReLU(),  # not in place: the shortcut and the other branch read the block input
            conv1=nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            bn1=nn.BatchNorm2d(out_channels),
            relu1=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            bn2=nn.BatchNorm2d(out_channels),
        )
    )


def _bottleneck_branch(
    in_channels: int, out_channels: int, stride: int, width: int, groups: int
) -> nn.Sequential:
    """ResNeXt bottleneck, form (c): conv1x1-BN-ReLU-grouped conv3x3-BN-ReLU-conv1x1-BN
    (Gastaldi Sec. 3, CIFAR-100)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, width, 1, bias=False),
            bn1=nn.BatchNorm2d(width),
            relu1=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False),
            bn2=nn.BatchNorm2d(width),
            relu2=nn.ReLU(inplace=True),
            conv3=nn.Conv2d(width, out_channels, 1, bias=False),
            bn3=nn.BatchNorm2d(out_channels),
        )
    )


class ShakeBlock(nn.Module):
    """Two residual branches combined by :func:`shake_shake`, optional SE on the combination, a shortcut.

    ``basic`` blocks are Gastaldi's CIFAR-10 form (branches start with a ReLU, none after the sum, the
    shifted shortcut); ``bottleneck`` blocks his CIFAR-100 ResNeXt form (post-activation branches, a ReLU
    after the sum, the projection shortcut). ``width``/``groups``: the bottleneck's inner width (all groups)
    and cardinality, per branch.
    """

    def __init__(
        self,
        branch: BranchType,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        width: int = 0,
        groups: int = 1,
        se: SEConfig | None = None,
        shake_forward: ForwardMode = "shake",
        shake_backward: BackwardMode = "shake",
        shake_level: Level = "image",
    ) -> None:
        super().__init__()
        if branch == "basic":
            self.branch1 = _basic_branch(in_channels, out_channels, stride)
            self.branch2 = _basic_branch(in_channels, out_channels, stride)
        elif branch == "bottleneck":
            self.branch1 = _bottleneck_branch(in_channels, out_channels, stride, width, groups)
            self.branch2 = _bottleneck_branch(in_channels, out_channels, stride, width, groups)
        else:
            raise ValueError(f"unknown branch type {branch!r}; choose basic or bottleneck")
        self.preact = branch == "basic"
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            ShakeShortcut(in_channels, out_channels, stride, shifted=self.preact)
            if needs_projection
            else None
        )
        self.se = se.block(out_channels) if se is not None else None
        self.relu = nn.Identity() if self.preact else nn.ReLU(inplace=True)
        self.shake_forward = shake_forward
        self.shake_backward = shake_backward
        self.shake_level = shake_level

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The combined residual: the shake combination of both branches, then SE (the SE-ResNet rule)."""
        out = shake_shake(
            self.branch1(x),
            self.branch2(x),
            self.training,
            self.shake_forward,
            self.shake_backward,
            self.shake_level,
        )
        return self.se(out) if self.se is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.residual(x) + shortcut)

    def extra_repr(self) -> str:
        return f"forward={self.shake_forward!r}, backward={self.shake_backward!r}, level={self.shake_level!r}"


class ShakeResNet(PooledClassifier):
    """Both Shake-Shake networks of Gastaldi 2017: a 3x3 stem, stages of :class:`ShakeBlock`, pooling, FC.

    Args:
        branch: ``"basic"`` (CIFAR-10, 26 2xKd) or ``"bottleneck"`` (CIFAR-100, ResNeXt-29 2xCxDd); also
            decides the stem (``bottleneck``: conv-BN-ReLU; ``basic``: conv-BN) and the final ReLU (``basic``
            only, as its blocks end without one).
        depths: blocks per stage, e.g. ``(4, 4, 4)`` for depth 26.
        widths: output channels of each stage's blocks; stages after the first down-sample by 2.
        inner_widths: for bottleneck branches, each stage's 3x3 width (all groups together).
        groups: the bottleneck branch's cardinality (4 in 2x4x64d).
        stem_width: output channels of the 3x3 stem conv.
        shake_forward, shake_backward, shake_level: Gastaldi's Forward-Backward-Level mode (see
            :func:`shake_shake`).
        se: SE options (``None`` for the plain network); ``se.stages`` picks stages (1-based), and only the
            ``standard`` position (on the combined residual) is defined here.
        num_classes, in_chans, drop_rate: classifier size, input channels, dropout before the classifier.
    """

    def __init__(
        self,
        branch: BranchType,
        depths: Sequence[int],
        widths: Sequence[int],
        *,
        inner_widths: Sequence[int] | None = None,
        groups: int = 1,
        stem_width: int = 16,
        shake_forward: ForwardMode = "shake",
        shake_backward: BackwardMode = "shake",
        shake_level: Level = "image",
        se: SEConfig | None = None,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_common_options("ShakeResNet", num_classes, in_chans, drop_rate)
        if len(depths) != len(widths):
            raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)} differ in length")
        # A depth of 0 would still build the stage's first block.
        for option, values in dict(depths=depths, widths=widths, stem_width=stem_width).items():
            check_positive("ShakeResNet", option, values)
        if branch == "bottleneck" and (inner_widths is None or len(inner_widths) != len(widths)):
            raise ValueError("bottleneck branches need inner_widths, one per stage")
        if branch == "basic" and (inner_widths is not None or groups != 1):
            raise ValueError("basic branches take no inner_widths or groups; use branch='bottleneck'")
        if shake_forward not in FORWARD_MODES:
            raise ValueError(
                f"unknown shake_forward {shake_forward!r}; choose one of {', '.join(FORWARD_MODES)}"
            )
        if shake_backward not in BACKWARD_MODES:
            raise ValueError(
                f"unknown shake_backward {shake_backward!r}; choose one of {', '.join(BACKWARD_MODES)}"
            )
        if shake_level not in LEVELS:
            raise ValueError(f"unknown shake_level {shake_level!r}; choose one of {', '.join(LEVELS)}")
        if se is not None:
            se.require_position("Shake-Shake")  # SE on the combined residual
            stages = range(1, len(depths) + 1)  # stage s is layer<s>, as in the ResNets
            se = se.resolve_stages("ShakeResNet", stages, meaning=f"layer1..layer{len(depths)}")
        self.se_config = se

        preact = branch == "basic"
        self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.Identity() if preact else nn.ReLU(inplace=True)

        in_channels = stem_width
        for index, (depth, out_channels) in enumerate(zip(depths, widths, strict=True)):
            stage = index + 1
            stage_se = se if se is not None and se.in_stage(stage) else None
            options = dict(
                width=inner_widths[index] if inner_widths is not None else 0,
                groups=groups,
                se=stage_se,
                shake_forward=shake_forward,
                shake_backward=shake_backward,
                shake_level=shake_level,
            )
            stride = 1 if stage == 1 else 2
            blocks = [ShakeBlock(branch, in_channels, out_channels, stride, **options)]
            blocks += [ShakeBlock(branch, out_channels, out_channels, 1, **options) for _ in range(1, depth)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            in_channels = out_channels
        self.num_stages = len(depths)
        self._widths = (stem_width, *widths)
        # Basic blocks end without a ReLU; Gastaldi adds one before pooling.
        self.final_act = nn.ReLU(inplace=True) if preact else nn.Identity()
        self._make_head(in_channels, num_classes, drop_rate)
        if se is not None:
            se.check_built("ShakeResNet", self)
        init_weights(self)  # Gastaldi's N(0, sqrt(2 / (k * k * out))) is He init with mode="fan_out"

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def feature_stages(self) -> list[FeatureStage]:
        """0: the 3x3 stem conv-BN(-ReLU) at full resolution; s: ``layer<s>`` (1, 1/2, 1/4), the last one
        ending with the basic networks' final ReLU."""
        stages = [FeatureStage(0, present(self, "conv1", "bn1", "relu"), self._widths[0], 1)]
        for s in range(1, self.num_stages + 1):
            last = present(self, "final_act") if s == self.num_stages else ()
            stages.append(FeatureStage(s, (f"layer{s}", *last), self._widths[s], 2 ** (s - 1)))
        return stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before global pooling: (N, num_features, H/4, W/4)."""
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.stages():
            x = stage(x)
        return self.final_act(x)


def _shake(branch: BranchType, depths: Sequence[int], se: bool, layout: dict, options: dict) -> ShakeResNet:
    """Build a layout; ``base_width`` (the "96d" / "64d" of the name) scales every width with it."""
    options = {**layout, **options}
    se_config = SEConfig.pop_from(options, enabled=se)
    base = options.pop("base_width")
    check_positive("ShakeResNet", "base_width", base)
    scale = (1, 2, 4)  # widths double at each down-sampling stage
    if branch == "basic":
        # "26 2x96d": the first stage's blocks are 96 wide (Gastaldi's -baseWidth); the stem stays 16.
        widths = tuple(base * s for s in scale)
        inner = None
    else:
        # "29 2x4x64d": 4 groups of 64 channels in stage 1's 3x3 (-baseWidth 64 -groups 4); as in ResNeXt-29
        # the blocks put out 4x the group width (256/512/1024) and the stem is as wide as the group width.
        groups = options.get("groups", 1)
        widths = tuple(4 * base * s for s in scale)
        inner = tuple(groups * base * s for s in scale)
        options.setdefault("stem_width", base)
    return ShakeResNet(branch, depths, widths, inner_widths=inner, se=se_config, **options)


# Gastaldi 2017: the CIFAR-10 network (Sec. 2.2) and the CIFAR-100 one (Sec. 3; -backwardShake false).
_SHAKE_26_2X96D = dict(base_width=96, stem_width=16, shake_forward="shake", shake_backward="shake")
_SHAKE_29_2X4X64D = dict(base_width=64, groups=4, shake_forward="shake", shake_backward="even")


@register_model(
    paper=PaperFigures(
        26.2,
        None,
        2.56,
        input_size=32,
        source="Table 4 (CIFAR-10 error, with Cutout); params Gastaldi 2017 (26.2M)",
    ),
    num_classes=10,
)
def shake_shake26_2x96d(**options) -> ShakeResNet:
    """Shake-Shake-Image 26 2x96d for CIFAR-10 (Gastaldi 2017; paper Table 4 with Cutout)."""
    return _shake("basic", (4, 4, 4), False, _SHAKE_26_2X96D, options)


@register_model(
    paper=PaperFigures(None, None, 2.12, input_size=32, source="Table 4 (CIFAR-10 error, with Cutout)"),
    num_classes=10,
)
def se_shake_shake26_2x96d(**options) -> ShakeResNet:
    """SE-Shake-Shake-Image 26 2x96d: SE on each block's combined residual (paper Table 4, with Cutout)."""
    return _shake("basic", (4, 4, 4), True, _SHAKE_26_2X96D, options)


@register_model(
    paper=PaperFigures(
        34.4,
        None,
        15.85,
        input_size=32,
        source="Table 5 (CIFAR-100 error, with Cutout); params Gastaldi 2017 (34.4M)",
    ),
    num_classes=100,
)
def shake_even29_2x4x64d(**options) -> ShakeResNet:
    """Shake-Even-Image 29 2x4x64d ResNeXt for CIFAR-100 (Gastaldi 2017; paper Table 5 with Cutout)."""
    return _shake("bottleneck", (3, 3, 3), False, _SHAKE_29_2X4X64D, options)


@register_model(
    paper=PaperFigures(None, None, 15.41, input_size=32, source="Table 5 (CIFAR-100 error, with Cutout)"),
    num_classes=100,
)
def se_shake_even29_2x4x64d(**options) -> ShakeResNet:
    """SE-Shake-Even-Image 29 2x4x64d: SE on each block's combined residual (paper Table 5, with Cutout)."""
    return _shake("bottleneck", (3, 3, 3), True, _SHAKE_29_2X4X64D, options)
