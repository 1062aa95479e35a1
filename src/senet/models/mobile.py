"""MobileNet v1, ShuffleNet v1 and their SE twins (paper Table 3).

The paper only says the SE mobile models are "constructed by following similar schemes" to SE-ResNet
(reference §1). We read that as: SE recalibrates the output of each building unit's transformation.

* MobileNet (Howard et al. 2017, "1.0 MobileNet-224"): a 3x3/2 stem conv and 13 depthwise-separable units;
  SE acts on each unit's output, after the pointwise conv + BN + ReLU (MobileNet has no shortcut, so this is
  the plain-network placement of VGG, one block per unit).
* ShuffleNet (Zhang et al. 2018, "ShuffleNet 1x (g = 3)"): residual units; SE acts on the residual branch
  before the add / concat, as in SE-ResNet (``se_position="post"`` moves it to the unit's output).

Neither network is in torchvision (it has MobileNet v2/v3 and ShuffleNet v2), so key names follow
torchvision's style: ``stem``, ``blocks.N`` / ``stage2..stage4`` (ShuffleNet paper Table 1), ``fc``; SE
blocks are ``<unit>.se.fc1`` / ``.se.fc2``.

SE stages (``se_stages``, 1-based) are the resolution stages: for MobileNet a new stage starts at each
stride-2 unit (stage 1 = the first unit at 112x112 ... stage 5 = the two units at 7x7); for ShuffleNet stage
1 is the paper's Stage2, as ``se_stages=(1,)`` of ResNet is conv2_x.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from senet.layers.squeeze_excite import SEConfig
from senet.models.base import (
    FeatureStage,
    PooledClassifier,
    check_common_options,
    check_option,
    check_positive,
    init_weights,
)
from senet.models.registry import PaperFigures, register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Zhang et al. Sec. 3.1: split the channels into ``groups``, transpose, flatten back.

    After it, each group of the next grouped conv sees channels from every group of the previous one.
    """
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelShuffle(nn.Module):
    """:func:`channel_shuffle` as a module, so it shows in the network's printout."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


# --------------------------------------------------------------------------------------------- MobileNet


class DepthwiseSeparable(nn.Module):
    """Howard et al. Fig. 3: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU, then SE on the output."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, se: SEConfig | None = None) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se: nn.Module = se.block(out_channels) if se is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv_dw(x)))
        return self.se(self.relu(self.bn2(self.conv_pw(x))))


class MobileNet(PooledClassifier):
    """MobileNet v1: a 3x3/2 conv stem, depthwise-separable units, global pooling, one FC.

    Args:
        units: ``(out_channels, stride)`` of each depthwise-separable unit (the stride is the depthwise
            conv's), e.g. :data:`MOBILENET_V1_UNITS`.
        stem_width: output channels of the stem conv (32).
        se: SE on each unit's output; ``None`` for the plain network.
        num_classes, in_chans, drop_rate: classifier size, input channels, dropout before the classifier.
    """

    def __init__(
        self,
        units: Sequence[tuple[int, int]],
        *,
        stem_width: int = 32,
        se: SEConfig | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_common_options("MobileNet", num_classes, in_chans, drop_rate)
        check_positive("MobileNet", "stem_width", stem_width)
        check_option(
            all(len(u) == 2 and min(u) >= 1 for u in units),
            "MobileNet",
            "units",
            tuple(units),
            "give (out_channels, stride) pairs of integers >= 1",
        )
        unit_stages = _unit_stages([stride for _, stride in units])
        if se is not None:
            se.require_position("MobileNet")
            stages = sorted(set(unit_stages))
            spans = [[i for i, s in enumerate(unit_stages) if s == stage] for stage in stages]
            meaning = ", ".join(
                f"{stage} = blocks.{span[0]}" + (f"-{span[-1]}" if len(span) > 1 else "")
                for stage, span in zip(stages, spans, strict=True)
            )
            se = se.resolve_stages("MobileNet", stages, meaning=meaning)
        self.se_config = se
        self.stem = nn.Sequential(*_conv_bn(in_chans, stem_width, 3, 2), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        channels = stem_width
        for (width, stride), stage in zip(units, unit_stages, strict=True):
            unit_se = se if se is not None and se.in_stage(stage) else None
            blocks.append(DepthwiseSeparable(channels, width, stride, unit_se))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self._make_head(channels, num_classes, drop_rate)
        if se is not None:
            se.check_built("MobileNet", self)
        init_weights(self, linear_std=0.01)

    def feature_stages(self) -> list[FeatureStage]:
        """0: the stem conv (1/2); stage s: the units of ``se_stages``'s stage s, one per output stride (v1:
        ``blocks.0`` at 1/2, ``1-2`` at 1/4 ... ``11-12`` at 1/32; timm's ``mobilenetv1_100`` stages 0-4)."""
        stages = [FeatureStage(0, ("stem",), self.stem[0].out_channels, 2)]
        reduction = 2
        strides = [unit.conv_dw.stride[0] for unit in self.blocks]
        for index, (unit, stage, stride) in enumerate(
            zip(self.blocks, _unit_stages(strides), strides, strict=True)
        ):
            reduction *= stride
            earlier = stages.pop().modules if stages[-1].index == stage else ()
            modules = (*earlier, f"blocks.{index}")
            stages.append(FeatureStage(stage, modules, unit.conv_pw.out_channels, reduction))
        return stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before pooling: (N, num_features, H/32, W/32) for MobileNet v1."""
        return self.blocks(self.stem(x))


def _unit_stages(strides: Sequence[int]) -> list[int]:
    """Each MobileNet unit's stage: 1 from the first unit after the stem conv, a new resolution stage at each
    down-sampling unit after it (v1: 112, 56, 28, 14, 7 at 224x224)."""
    stages, stage = [], 1
    for index, stride in enumerate(strides):
        stage += int(stride > 1 and index > 0)
        stages.append(stage)
    return stages


# Howard et al. Table 1. Its last depthwise row reads "s2" at 7x7 input, a known typo: the output stays 7x7
# (and 569M multiply-adds only come out with stride 1), so the last unit has stride 1, as in every port.
MOBILENET_V1_UNITS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)


def _mobilenet(se: bool, options: dict) -> MobileNet:
    se_config = SEConfig.pop_from(options, enabled=se)
    return MobileNet(options.pop("units", MOBILENET_V1_UNITS), se=se_config, **options)


@register_model(paper=PaperFigures(4.2, 0.569, 28.4, 9.4, source="Table 3 re-impl. (1.0 MobileNet-224)"))
def mobilenet(**options) -> MobileNet:
    """MobileNet v1, width 1.0, 224x224 (Howard et al. 2017; paper Table 3)."""
    return _mobilenet(False, options)


@register_model(paper=PaperFigures(4.7, 0.572, 25.3, 7.7, source="Table 3"))
def se_mobilenet(**options) -> MobileNet:
    """SE-MobileNet: an SE block on the output of each depthwise-separable unit (paper Table 3)."""
    return _mobilenet(True, options)


# -------------------------------------------------------------------------------------------- ShuffleNet


class ShuffleUnit(nn.Module):
    """Zhang et al. Fig. 2 (b, c): grouped 1x1 + BN + ReLU, shuffle, depthwise 3x3 + BN, grouped 1x1 + BN.

    Stride 1: ``relu(x + branch(x))``. Stride 2: ``relu(concat(avgpool3x3/2(x), branch(x)))``, so the
    branch outputs ``out_channels - in_channels`` channels. The bottleneck is a quarter of the unit's
    ``out_channels`` (Zhang et al. Sec. 3.3). ``first_groups`` is the first 1x1 conv's groups (1 in the
    network's very first unit, whose 24 input channels are too few to split).

    SE (``se.position``): ``"standard"`` rescales the branch before the add / concat (as SE-ResNet);
    ``"post"`` rescales the unit's output, after the final ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        first_groups: int | None = None,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 ShuffleUnit adds its input: in {in_channels} != out {out_channels}")
        self.stride = stride
        branch_channels = out_channels - in_channels if stride > 1 else out_channels
        mid = out_channels // 4
        self.conv1 = nn.Conv2d(
            in_channels, mid, 1, groups=groups if first_groups is None else first_groups, bias=False
        )
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride > 1 else nn.Identity()
        self.se_position = se.position if se is not None else "standard"
        se_channels = out_channels if self.se_position == "post" else branch_channels
        self.se: nn.Module = se.block(se_channels) if se is not None else nn.Identity()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))  # no ReLU after the depthwise conv (Zhang et al. Sec. 3.2)
        return self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.se_position == "standard":
            out = self.se(out)
        shortcut = self.shortcut(x)
        # Zhang et al. Fig. 2c puts the ReLU after the concat; on the pooled shortcut it changes nothing, as
        # the unit's input is already the output of a ReLU.
        out = self.relu(torch.cat((shortcut, out), 1) if self.stride > 1 else out + shortcut)
        return self.se(out) if self.se_position == "post" else out


class ShuffleNet(PooledClassifier):
    """ShuffleNet v1: 3x3/2 conv + 3x3/2 max-pool stem, stages of ShuffleUnits, global pooling, one FC.

    Args:
        depths: units per stage, ``(4, 8, 4)`` (Zhang et al. Table 1: Stage2..Stage4).
        widths: output channels of each stage (240, 480, 960 for 1x, g = 3).
        groups: g, the groups of the pointwise convs (and of the channel shuffle).
        stem_width: output channels of the stem conv (24).
        se: SE blocks of the units; ``None`` for the plain network.
        num_classes, in_chans, drop_rate: classifier size, input channels, dropout before the classifier.

    The first unit of each stage has stride 2; the first unit of the network has a non-grouped first 1x1.
    """

    def __init__(
        self,
        depths: Sequence[int],
        *,
        widths: Sequence[int] = (240, 480, 960),
        groups: int = 3,
        stem_width: int = 24,
        se: SEConfig | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_common_options("ShuffleNet", num_classes, in_chans, drop_rate)
        if len(depths) != len(widths):
            raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)} differ in length")
        # A stage of depth 0 would leave its width unbuilt.
        for option, values in dict(
            depths=depths, widths=widths, groups=groups, stem_width=stem_width
        ).items():
            check_positive("ShuffleNet", option, values)
        if se is not None:
            se.require_position("ShuffleNet", ("standard", "post"))
            # Stage s is Zhang et al.'s Stage<s+1> (module stage<s+1>): their Stage1 is the stem.
            stages = range(1, len(depths) + 1)
            meaning = f"modules stage2..stage{len(depths) + 1}"
            se = se.resolve_stages("ShuffleNet", stages, meaning=meaning)
        self.se_config = se
        self.stem = nn.Sequential(*_conv_bn(in_chans, stem_width, 3, 2), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = stem_width
        for index, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            stage_se = se if se is not None and se.in_stage(index + 1) else None
            units = [
                ShuffleUnit(
                    channels if i == 0 else width,
                    width,
                    stride=2 if i == 0 else 1,
                    groups=groups,
                    first_groups=1 if index == 0 and i == 0 else None,
                    se=stage_se,
                )
                for i in range(depth)
            ]
            self.add_module(f"stage{index + 2}", nn.Sequential(*units))  # Zhang et al. name them Stage2..4
            channels = width
        self.num_stages = len(depths)
        self._widths = tuple(widths)
        self._make_head(channels, num_classes, drop_rate)
        if se is not None:
            se.check_built("ShuffleNet", self)
        init_weights(self, linear_std=0.01)

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"stage{i + 2}") for i in range(self.num_stages)]

    def feature_stages(self) -> list[FeatureStage]:
        """0: the stem conv (1/2, before the max-pool, as ResNet's); stage s: Zhang et al.'s Stage<s+1> (1/8,
        1/16, 1/32), stage 1 starting with the stem's max-pool."""
        stages = [FeatureStage(0, ("stem",), self.stem[0].out_channels, 2)]
        for s, width in enumerate(self._widths, start=1):
            modules = ("maxpool", "stage2") if s == 1 else (f"stage{s + 1}",)
            stages.append(FeatureStage(s, modules, width, 2 ** (s + 2)))
        return stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before pooling: (N, num_features, H/32, W/32) for three stages."""
        x = self.maxpool(self.stem(x))
        for stage in self.stages():
            x = stage(x)
        return x


# Zhang et al. Table 1, "1x" column for g = 3.
_SHUFFLENET_1X_G3 = dict(widths=(240, 480, 960), groups=3)


def _shufflenet(se: bool, layout: dict, options: dict) -> ShuffleNet:
    options = {**layout, **options}
    se_config = SEConfig.pop_from(options, enabled=se)
    return ShuffleNet(options.pop("depths", (4, 8, 4)), se=se_config, **options)


@register_model(paper=PaperFigures(1.8, 0.140, 32.6, 12.5, source="Table 3 re-impl. (ShuffleNet 1x, g=3)"))
def shufflenet(**options) -> ShuffleNet:
    """ShuffleNet v1 1x, g = 3 (Zhang et al. 2018; paper Table 3)."""
    return _shufflenet(False, _SHUFFLENET_1X_G3, options)


@register_model(paper=PaperFigures(2.4, 0.142, 31.0, 11.1, source="Table 3"))
def se_shufflenet(**options) -> ShuffleNet:
    """SE-ShuffleNet 1x, g = 3: an SE block on each unit's residual branch, before the add / concat (paper
    Table 3)."""
    return _shufflenet(True, _SHUFFLENET_1X_G3, options)
