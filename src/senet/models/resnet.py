"""ResNet, ResNeXt, SE-ResNet, SE-ResNeXt and SENet-154: one family, one class (paper Sec. 4, Table 1).

Key names follow torchvision's ``models/resnet.py`` (``conv1``, ``layer1.0.conv2``, ``downsample.0``...),
so torchvision state dicts load strictly into the non-SE models; SE models add ``.se.fc1`` / ``.se.fc2``.

Two layout options matter for matching published numbers and weights:

* ``stride_in_1x1``: the stride-2 of a down-sampling bottleneck sits in its first 1x1 conv (original
  Caffe ResNet and the authors' SE-ResNets; 3.86 GFLOPs for ResNet-50) or in its 3x3 conv
  (torchvision, ResNeXt, SENet-154; 4.09 GFLOPs for ResNet-50).
* ``stem_pool``: ``"caffe"`` max-pools 3x3/2 without padding, rounding up (the released models), and
  ``"torchvision"`` pads by 1. Both give 56x56 at 224x224 but different values.

``create_model("resnet50", stride_in_1x1=False, stem_pool="torchvision")`` is torchvision's resnet50.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn

from senet.layers.squeeze_excite import SEConfig, SqueezeExcite
from senet.models.base import (
    FeatureStage,
    PooledClassifier,
    check_common_options,
    check_option,
    check_positive,
    init_weights,
    present,
)
from senet.models.registry import PaperFigures, register_model

StemType = Literal["7x7", "deep", "cifar"]
StemPool = Literal["torchvision", "caffe"]
STEMS: tuple[str, ...] = ("7x7", "deep", "cifar")
STEM_POOLS: tuple[str, ...] = ("torchvision", "caffe")


class _ResidualUnit(nn.Module):
    """What every residual unit shares: ``join(branch(x), shortcut(x))``, and where its SE block acts (paper
    Fig. 5, Tables 14-15): ``standard`` on the residual branch before the sum; ``pre`` on the unit's input;
    ``post`` after the sum and its ReLU; ``identity`` on the shortcut, in parallel to the branch; ``3x3``
    inside the branch, right after the 3x3 conv (each unit's :meth:`branch` places it).

    A unit's :meth:`branch` runs up to (not including) its last BatchNorm, which :meth:`join` applies: so SE,
    the sum and the ReLU can take it into one operator (:meth:`SqueezeExcite.norm_scale_and_add`).
    Pre-activation units (He et al. 2016b) end their branch in a conv and add without a ReLU.
    """

    se: nn.Module | None
    se_position: str | None  # None: no SE block
    preact = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.se_position == "pre":
            x = self.se(x)
        out = self.join(self.branch(x), shortcut)
        if self.se_position == "post":
            out = self.se(out)
        return out

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def last_norm(self) -> nn.Module | None:
        """The BatchNorm that ends the branch; None for pre-activation units (their branch ends in a conv)."""
        raise NotImplementedError

    @property
    def activation(self) -> nn.Module | None:
        """The ReLU after the sum; none for pre-activation units."""
        return None if self.preact else self.relu

    def join(self, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """The branch's last BatchNorm, SE where it acts at the join, the sum and the ReLU."""
        if self.se_position == "standard":
            return self._se_on_branch(out, shortcut)
        if self.se_position == "identity":
            return self._se_on_shortcut(out, shortcut)
        return self._activate(self._end_branch(out) + shortcut)

    def _se_on_branch(self, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """BN, SE on the branch, sum, ReLU: one operator in training (paper Fig. 3). An SE block replaced by
        another module (``nn.Identity``, a wrapper) is called as it is."""
        if not isinstance(self.se, SqueezeExcite):
            return self._activate(self.se(self._end_branch(out)) + shortcut)
        if self.last_norm is None:
            return self.se.scale_and_add(out, shortcut, self.activation)
        return self.se.norm_scale_and_add(out, self.last_norm, shortcut, self.activation)

    def _se_on_shortcut(self, out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """BN, SE on the shortcut, sum, ReLU (Fig. 5e, the "identity" integration)."""
        if not isinstance(self.se, SqueezeExcite):
            return self._activate(self._end_branch(out) + self.se(shortcut))
        return self.se.scale_and_add(shortcut, self._end_branch(out), self.activation)

    def _end_branch(self, out: torch.Tensor) -> torch.Tensor:
        norm = self.last_norm
        return out if norm is None else norm(out)

    def _activate(self, out: torch.Tensor) -> torch.Tensor:
        return self.activation(out) if self.activation is not None else out

    def _attach_se(self, se: SEConfig | None, inplanes: int, width: int, out_channels: int) -> None:
        self.se_position = se.position if se is not None else None
        channels = {"pre": inplanes, "3x3": width}.get(self.se_position, out_channels)
        self.se = se.block(channels) if se is not None else None


class BasicBlock(_ResidualUnit):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR ResNets). ``3x3`` SE acts after the first conv."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        se: SEConfig | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        first_conv_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64 or first_conv_ratio != 1.0:
            raise ValueError("BasicBlock supports only groups=1, base_width=64, first_conv_ratio=1.0")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self._attach_se(se, inplanes, planes, planes)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.se_position == "3x3":
            out = self.se(out)
        return self.conv2(out)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2


class Bottleneck(_ResidualUnit):
    """1x1 reduce -> 3x3 (grouped for ResNeXt) -> 1x1 expand, with optional SE (paper Table 1).

    ``first_conv_ratio=0.5`` halves the first 1x1 conv's width relative to the 3x3 (SENet-154, appendix a).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        se: SEConfig | None = None,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        first_conv_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        reduced = int(width * first_conv_ratio)
        out_channels = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, reduced, 1, stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(reduced)
        self.conv2 = nn.Conv2d(reduced, width, 3, stride_3x3, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self._attach_se(se, inplanes, width, out_channels)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.se_position == "3x3":
            out = self.se(out)
        return self.conv3(out)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3


class PreActBasicBlock(BasicBlock):
    """BN-ReLU-conv3x3 twice, identity added without a final ReLU (He et al. 2016b, "Identity mappings").

    The CIFAR ResNet-110 baseline of the paper's Table 4 (6.37% on CIFAR-10) is this network.
    """

    preact = True

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, **options
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, **options)
        self.bn1 = nn.BatchNorm2d(inplanes)  # normalises the unit's input, not conv1's output
        self.bn2 = nn.BatchNorm2d(planes)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        if self.se_position == "3x3":
            out = self.se(out)
        return self.conv2(self.relu(self.bn2(out)))

    @property
    def last_norm(self) -> None:
        return None


class PreActBottleneck(Bottleneck):
    """Pre-activation bottleneck (He et al. 2016b): the CIFAR ResNet-164 of the paper's Table 4 (5.46%)."""

    preact = True

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, **options
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, **options)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.bn2 = nn.BatchNorm2d(self.conv1.out_channels)
        self.bn3 = nn.BatchNorm2d(self.conv2.out_channels)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        if self.se_position == "3x3":
            out = self.se(out)
        return self.conv3(self.relu(self.bn3(out)))

    @property
    def last_norm(self) -> None:
        return None


class ResNet(PooledClassifier):
    """The whole family: a stem, ``len(depths)`` stages of residual units, global pooling, a classifier.

    Args:
        block: ``BasicBlock``, ``Bottleneck`` or their pre-activation forms; with a pre-activation block
            the stem has no BN/ReLU of its own and a final BN-ReLU precedes pooling.
        depths: units per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        widths: ``planes`` of each stage (the unit's output is ``planes * block.expansion``).
        groups, base_width: ResNeXt cardinality and width per group (32, 4 for 32x4d).
        first_conv_ratio: width of a bottleneck's first 1x1 conv relative to its 3x3 (0.5 in SENet-154).
        stem: ``"7x7"`` conv (ResNet), ``"deep"`` three 3x3 convs (SENet-154), ``"cifar"`` one 3x3 conv
            and no pooling.
        stem_width: output width of the stem's first conv (``deep`` ends at twice this).
        stem_pool: ``"caffe"`` or ``"torchvision"`` max pooling after the stem (see the module doc); ``None``
            (default) is ``"torchvision"``, or no pooling with the ``cifar`` stem, which refuses the option.
        stride_in_1x1: put a down-sampling bottleneck's stride in its first 1x1 conv, not its 3x3 (bottlenecks
            only: basic blocks have no 1x1 conv).
        down_kernel_size: kernel of stride-2 projection shortcuts (3 in SENet-154, appendix c).
        se: where and how SE blocks are used; ``None`` for the plain network.
        num_classes, in_chans, drop_rate: classifier size, input channels, dropout before the classifier.
        zero_init_residual: start each unit's last BN at zero, so units begin as identities (post-activation
            units only: a pre-activation branch ends in a conv).

    Options the chosen block or stem would ignore are refused (:func:`_check_options`).
    """

    def __init__(
        self,
        block: type[_ResidualUnit],
        depths: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        groups: int = 1,
        base_width: int = 64,
        first_conv_ratio: float = 1.0,
        stem: StemType = "7x7",
        stem_width: int = 64,
        stem_pool: StemPool | None = None,
        stride_in_1x1: bool = False,
        down_kernel_size: int = 1,
        se: SEConfig | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        check_common_options("ResNet", num_classes, in_chans, drop_rate)
        _check_options(
            block,
            depths,
            widths,
            groups=groups,
            base_width=base_width,
            first_conv_ratio=first_conv_ratio,
            stem=stem,
            stem_width=stem_width,
            stem_pool=stem_pool,
            stride_in_1x1=stride_in_1x1,
            down_kernel_size=down_kernel_size,
            zero_init_residual=zero_init_residual,
        )
        if se is not None and (block.preact or se.position != "standard"):
            se.require_no_recompute(
                ("pre-activation " if block.preact else "") + f"ResNet ({se.position} SE)"
            )
        if se is not None:
            # Stage s is layer<s>; with an ImageNet stem (4x down-sampling before layer1) it is the paper's
            # conv<s+1>_x (Table 1), a name the CIFAR stem's layers do not have.
            stage_numbers = range(1, len(depths) + 1)
            names = {f"conv{s + 1}_x": s for s in stage_numbers} if stem != "cifar" else None
            se = se.resolve_stages("ResNet", stage_numbers, names, f"layer1..layer{len(depths)}")
        self.se_config = se

        self.conv1, stem_out = _make_stem(stem, in_chans, stem_width)
        # He et al. 2016b: a pre-activation net's stem is a bare conv; the first unit's BN-ReLU activates it.
        self.bn1 = nn.Identity() if block.preact else nn.BatchNorm2d(stem_out)
        self.relu = nn.Identity() if block.preact else nn.ReLU(inplace=True)
        self.maxpool = _make_stem_pool(stem, stem_pool)
        self._stem_stride = 1 if stem == "cifar" else 2
        self._stage_channels = [stem_out]  # the stem's and each stage's output width, for feature_stages

        self._block = block
        self._unit_options = dict(
            groups=groups,
            base_width=base_width,
            stride_in_1x1=stride_in_1x1,
            first_conv_ratio=first_conv_ratio,
        )
        inplanes = stem_out
        for index, (depth, planes) in enumerate(zip(depths, widths, strict=True)):  # checked: one per stage
            stage = index + 1
            stride = 1 if stage == 1 else 2
            stage_se = se if se is not None and se.in_stage(stage) else None
            layer, inplanes = self._make_stage(inplanes, planes, depth, stride, stage_se, down_kernel_size)
            self.add_module(f"layer{stage}", layer)
            self._stage_channels.append(inplanes)
        self.num_stages = len(depths)
        self.final_act = (
            nn.Sequential(nn.BatchNorm2d(inplanes), nn.ReLU(inplace=True)) if block.preact else nn.Identity()
        )
        self._make_head(inplanes, num_classes, drop_rate)
        if se is not None:
            se.check_built("ResNet", self)
        init_weights(self)
        if zero_init_residual:
            self._zero_init_residual()

    def _make_stage(
        self, inplanes: int, planes: int, depth: int, stride: int, se: SEConfig | None, down_kernel_size: int
    ) -> tuple[nn.Sequential, int]:
        out_channels = planes * self._block.expansion
        downsample = None
        if stride != 1 or inplanes != out_channels:
            kernel = down_kernel_size if stride > 1 else 1
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, out_channels, kernel, stride, kernel // 2, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        units = [self._block(inplanes, planes, stride, downsample, se=se, **self._unit_options)]
        units += [self._block(out_channels, planes, se=se, **self._unit_options) for _ in range(1, depth)]
        return nn.Sequential(*units), out_channels

    def _zero_init_residual(self) -> None:
        for module in self.modules():
            # The last BN of a post-activation branch; pre-activation branches end in a conv.
            if isinstance(module, _ResidualUnit) and not module.preact:
                nn.init.zeros_(module.last_norm.weight)

    def layout_options(self) -> dict[str, Any]:
        """The build options a state dict cannot show (:mod:`senet.models.layout`): how the stem pools, and
        where a down-sampling bottleneck puts its stride."""
        layout: dict[str, Any] = {}
        if isinstance(self.maxpool, nn.MaxPool2d):  # the cifar stem has none
            layout["stem_pool"] = "caffe" if self.maxpool.ceil_mode else "torchvision"
        strided = (
            unit
            for unit in self.modules()
            if isinstance(unit, Bottleneck) and max(unit.conv1.stride + unit.conv2.stride) > 1
        )
        unit = next(strided, None)
        if unit is not None:
            layout["stride_in_1x1"] = unit.conv1.stride[0] > 1
        return layout

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def feature_stages(self) -> list[FeatureStage]:
        """0: the stem's conv-BN-ReLU, before its max-pool (timm's ``act1``; a bare conv in pre-activation
        networks); s: ``layer<s>``, stage 1 starting with the stem's max-pool; the last stage ends with the
        pre-activation networks' final BN-ReLU."""
        reduction = self._stem_stride
        stages = [FeatureStage(0, present(self, "conv1", "bn1", "relu"), self._stage_channels[0], reduction)]
        for s in range(1, self.num_stages + 1):
            first = present(self, "maxpool") if s == 1 else ()
            last = present(self, "final_act") if s == self.num_stages else ()
            reduction *= 2 ** len(first) if s == 1 else 2
            modules = (*first, f"layer{s}", *last)
            stages.append(FeatureStage(s, modules, self._stage_channels[s], reduction))
        return stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before global pooling: (N, num_features, H/32, W/32) at default strides."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return self.final_act(x)


def _check_options(block: type[_ResidualUnit], depths: Sequence[int], widths: Sequence[int], **o) -> None:
    """Refuse what the block or stem would silently ignore, or could not build."""
    basic = issubclass(block, BasicBlock)
    family = ("pre-activation " if block.preact else "") + ("ResNet with basic blocks" if basic else "ResNet")
    check_option(
        len(depths) == len(widths), family, "depths", tuple(depths), f"give one per width {tuple(widths)}"
    )
    check_positive(family, "depths", depths)  # a 0 would still build the stage's first unit
    check_positive(family, "widths", widths)
    check_positive(family, "stem_width", o["stem_width"])
    check_option(o["stem"] in STEMS, family, "stem", o["stem"], f"choose one of {', '.join(STEMS)}")
    pool = o["stem_pool"]
    if o["stem"] == "cifar":
        check_option(pool is None, family, "stem_pool", pool, "the cifar stem has no pooling; leave it out")
    else:
        check_option(
            pool in (None, *STEM_POOLS), family, "stem_pool", pool, f"choose {' or '.join(STEM_POOLS)}"
        )
    # An even kernel with padding k // 2 shifts the shortcut against the branch; one stage has no projection.
    kernel = o["down_kernel_size"]
    odd = isinstance(kernel, int) and kernel >= 1 and kernel % 2 == 1
    check_option(odd, family, "down_kernel_size", kernel, "use an odd kernel size: 1, or 3 as SENet-154")
    check_option(
        kernel == 1 or len(depths) > 1,
        family,
        "down_kernel_size",
        kernel,
        "a single stage has no stride-2 shortcut; leave it at 1",
    )
    if basic:
        neutral = {"stride_in_1x1": False, "groups": 1, "base_width": 64, "first_conv_ratio": 1.0}
        for option, value in neutral.items():
            check_option(
                o[option] == value,
                family,
                option,
                o[option],
                f"basic blocks have no 1x1 conv, no groups; leave it at {value!r} or use a bottleneck",
            )
    else:
        check_positive(family, "groups", o["groups"])
        check_positive(family, "base_width", o["base_width"])
        ratio = o["first_conv_ratio"]
        check_option(ratio > 0, family, "first_conv_ratio", ratio, "use a ratio > 0")
    if block.preact:
        check_option(
            not o["zero_init_residual"],
            family,
            "zero_init_residual",
            o["zero_init_residual"],
            "pre-activation branches end in a conv, not a BN; leave it False",
        )


def _make_stem(stem: StemType, in_chans: int, width: int) -> tuple[nn.Module, int]:
    if stem == "7x7":
        return nn.Conv2d(in_chans, width, 7, 2, 3, bias=False), width
    if stem == "deep":
        # SENet-154 (appendix b): three 3x3 convs replace the 7x7; the last BN/ReLU are the model's bn1/relu.
        layers = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width * 2, 3, 1, 1, bias=False),
        )
        return layers, width * 2
    if stem == "cifar":
        return nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), width
    raise ValueError(f"unknown stem {stem!r}; choose one of 7x7, deep, cifar")


def _make_stem_pool(stem: StemType, stem_pool: StemPool | None) -> nn.Module:
    if stem == "cifar":
        return nn.Identity()
    if stem_pool in ("torchvision", None):
        return nn.MaxPool2d(3, 2, padding=1)
    if stem_pool == "caffe":
        return nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)
    raise ValueError(f"unknown stem_pool {stem_pool!r}; choose torchvision or caffe")


# Layouts of the networks in the paper's Table 2; a builder's keyword options override them.
_PAPER_RESNET = dict(stride_in_1x1=True, stem_pool="caffe")  # original ResNet and the released SE-ResNets
_PAPER_RESNET_BASIC = dict(stem_pool="caffe")  # basic blocks have no 1x1 conv to take the stride
_RESNEXT_32X4D = dict(groups=32, base_width=4, stem_pool="caffe")


def _resnet(
    block: type[_ResidualUnit], depths: Sequence[int], se: bool, layout: dict, options: dict
) -> ResNet:
    options = {**layout, **options}
    se_config = SEConfig.pop_from(options, enabled=se)
    return ResNet(block, depths, se=se_config, **options)


@register_model()
def resnet18(**options) -> ResNet:
    """ResNet-18 (He et al. 2016), basic blocks; not in the SE paper."""
    return _resnet(BasicBlock, (2, 2, 2, 2), False, _PAPER_RESNET_BASIC, options)


@register_model()
def se_resnet18(**options) -> ResNet:
    """SE-ResNet-18: ResNet-18 with SE on each residual branch; not in the SE paper."""
    return _resnet(BasicBlock, (2, 2, 2, 2), True, _PAPER_RESNET_BASIC, options)


@register_model()
def resnet34(**options) -> ResNet:
    """ResNet-34 (He et al. 2016), basic blocks; not in the SE paper."""
    return _resnet(BasicBlock, (3, 4, 6, 3), False, _PAPER_RESNET_BASIC, options)


@register_model()
def se_resnet34(**options) -> ResNet:
    """SE-ResNet-34: ResNet-34 with SE on each residual branch; not in the SE paper."""
    return _resnet(BasicBlock, (3, 4, 6, 3), True, _PAPER_RESNET_BASIC, options)


@register_model(
    paper=PaperFigures(25.6, 3.86, 24.80, 7.48, source="Table 2 re-impl.; params Tables 10/13/16")
)
def resnet50(**options) -> ResNet:
    """ResNet-50, stride in the first 1x1 conv as the paper's baseline (Table 1, left column)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), False, _PAPER_RESNET, options)


@register_model(paper=PaperFigures(None, 7.58, 23.17, 6.52, source="Table 2 re-impl."))
def resnet101(**options) -> ResNet:
    """ResNet-101, stride in the first 1x1 conv as the paper's baseline (Table 2)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), False, _PAPER_RESNET, options)


@register_model(paper=PaperFigures(None, 11.30, 22.42, 6.34, source="Table 2 re-impl."))
def resnet152(**options) -> ResNet:
    """ResNet-152, stride in the first 1x1 conv as the paper's baseline (Table 2)."""
    return _resnet(Bottleneck, (3, 8, 36, 3), False, _PAPER_RESNET, options)


@register_model(
    paper=PaperFigures(28.09, 3.87, 23.29, 6.62, source="Table 2; params released prototxt (paper: 28.1)"),
    aliases=("legacy_seresnet50",),
)
def se_resnet50(**options) -> ResNet:
    """SE-ResNet-50 (paper Table 1, middle column)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), True, _PAPER_RESNET, options)


@register_model(
    paper=PaperFigures(49.33, 7.60, 22.38, 6.07, source="Table 2; params released prototxt"),
    aliases=("legacy_seresnet101",),
)
def se_resnet101(**options) -> ResNet:
    """SE-ResNet-101 (paper Table 2)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), True, _PAPER_RESNET, options)


@register_model(
    paper=PaperFigures(66.82, 11.32, 21.57, 5.73, source="Table 2; params released prototxt"),
    aliases=("legacy_seresnet152",),
)
def se_resnet152(**options) -> ResNet:
    """SE-ResNet-152 (paper Table 2)."""
    return _resnet(Bottleneck, (3, 8, 36, 3), True, _PAPER_RESNET, options)


@register_model(paper=PaperFigures(None, 4.24, 22.11, 5.90, source="Table 2 re-impl."))
def resnext50_32x4d(**options) -> ResNet:
    """ResNeXt-50 (32x4d): 32 groups of width 4 in stage 1, stride in the 3x3 conv (Table 1, left of SE)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), False, _RESNEXT_32X4D, options)


@register_model(paper=PaperFigures(None, 7.99, 21.18, 5.57, source="Table 2 re-impl."))
def resnext101_32x4d(**options) -> ResNet:
    """ResNeXt-101 (32x4d), stride in the 3x3 conv (Table 2)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), False, _RESNEXT_32X4D, options)


@register_model(
    paper=PaperFigures(27.56, 4.25, 21.10, 5.49, source="Table 2; params released prototxt"),
    aliases=("legacy_seresnext50_32x4d",),
)
def se_resnext50_32x4d(**options) -> ResNet:
    """SE-ResNeXt-50 (32x4d) (paper Table 1, right column)."""
    return _resnet(Bottleneck, (3, 4, 6, 3), True, _RESNEXT_32X4D, options)


@register_model(
    paper=PaperFigures(48.96, 8.00, 20.70, 5.01, source="Table 2; params released prototxt"),
    aliases=("legacy_seresnext101_32x4d",),
)
def se_resnext101_32x4d(**options) -> ResNet:
    """SE-ResNeXt-101 (32x4d) (paper Table 2)."""
    return _resnet(Bottleneck, (3, 4, 23, 3), True, _RESNEXT_32X4D, options)


@register_model(
    paper=PaperFigures(115.09, None, 18.68, 4.47, source="Table 8; params released prototxt"),
    aliases=("legacy_senet154",),
)
def senet154(**options) -> ResNet:
    """SENet-154: SE-ResNeXt-152 (64x4d) with halved first 1x1 convs, a 3x3 stem, 3x3 stride-2 shortcuts and
    dropout 0.2 (appendix)."""
    layout = dict(
        groups=64,
        base_width=4,
        first_conv_ratio=0.5,
        stem="deep",
        stem_pool="caffe",
        down_kernel_size=3,
        drop_rate=0.2,
    )
    return _resnet(Bottleneck, (3, 8, 36, 3), True, layout, options)


# timm's SE-ResNet(X)s under timm's names: torchvision's layout (stride in the 3x3 conv, padded stem pooling)
# with SE on every residual branch. timm rounds the SE width C/16 to a multiple of 8, which every bottleneck
# width already is (not so with basic blocks: timm's seresnet18/34 differ from ours, and are not offered).
# Their parameter names are timm's; the legacy_* aliases above are the paper layout of the Caffe models.
_TIMM_RESNET = dict(stride_in_1x1=False, stem_pool="torchvision")
_TIMM_RESNEXT_32X4D = dict(groups=32, base_width=4, stem_pool="torchvision")


@register_model()
def seresnet50(**options) -> ResNet:
    """timm's seresnet50: SE-ResNet-50 in torchvision's layout."""
    return _resnet(Bottleneck, (3, 4, 6, 3), True, _TIMM_RESNET, options)


@register_model()
def seresnet101(**options) -> ResNet:
    """timm's seresnet101: SE-ResNet-101 in torchvision's layout."""
    return _resnet(Bottleneck, (3, 4, 23, 3), True, _TIMM_RESNET, options)


@register_model()
def seresnet152(**options) -> ResNet:
    """timm's seresnet152: SE-ResNet-152 in torchvision's layout."""
    return _resnet(Bottleneck, (3, 8, 36, 3), True, _TIMM_RESNET, options)


@register_model()
def seresnext50_32x4d(**options) -> ResNet:
    """timm's seresnext50_32x4d: SE-ResNeXt-50 (32x4d) with torchvision's padded stem pooling."""
    return _resnet(Bottleneck, (3, 4, 6, 3), True, _TIMM_RESNEXT_32X4D, options)


@register_model()
def seresnext101_32x4d(**options) -> ResNet:
    """timm's seresnext101_32x4d: SE-ResNeXt-101 (32x4d) with torchvision's padded stem pooling."""
    return _resnet(Bottleneck, (3, 4, 23, 3), True, _TIMM_RESNEXT_32X4D, options)


# CIFAR ResNets (He et al. 2016a/b): a 3x3 stem, three stages of 16/32/64 planes, pre-activation units.
_CIFAR_RESNET = dict(widths=(16, 32, 64), stem="cifar", stem_width=16)


@register_model(
    paper=PaperFigures(0.27, input_size=32, source="He et al. 2016a (ResNet-20: 0.27M)"), num_classes=10
)
def resnet20_cifar(**options) -> ResNet:
    """ResNet-20 for 32x32 inputs: 3 stages of 3 pre-activation basic units."""
    return _resnet(PreActBasicBlock, (3, 3, 3), False, _CIFAR_RESNET, options)


@register_model(paper=PaperFigures(input_size=32), num_classes=10)
def se_resnet20_cifar(**options) -> ResNet:
    """SE-ResNet-20 for 32x32 inputs."""
    return _resnet(PreActBasicBlock, (3, 3, 3), True, _CIFAR_RESNET, options)


@register_model(
    paper=PaperFigures(0.85, input_size=32, source="He et al. 2016a (ResNet-56: 0.85M)"), num_classes=10
)
def resnet56_cifar(**options) -> ResNet:
    """ResNet-56 for 32x32 inputs: 3 stages of 9 pre-activation basic units."""
    return _resnet(PreActBasicBlock, (9, 9, 9), False, _CIFAR_RESNET, options)


@register_model(paper=PaperFigures(input_size=32), num_classes=10)
def se_resnet56_cifar(**options) -> ResNet:
    """SE-ResNet-56 for 32x32 inputs."""
    return _resnet(PreActBasicBlock, (9, 9, 9), True, _CIFAR_RESNET, options)


@register_model(
    paper=PaperFigures(
        1.73,
        None,
        6.37,
        input_size=32,
        source="Table 4 (CIFAR-10 error); params He et al. 2016a (1.7M; 1.73M unrounded)",
    ),
    num_classes=10,
)
def resnet110_cifar(**options) -> ResNet:
    """ResNet-110 for CIFAR: 3 stages of 18 pre-activation basic units (paper Table 4)."""
    return _resnet(PreActBasicBlock, (18, 18, 18), False, _CIFAR_RESNET, options)


@register_model(
    paper=PaperFigures(None, None, 5.21, input_size=32, source="Table 4 (CIFAR-10 error)"), num_classes=10
)
def se_resnet110_cifar(**options) -> ResNet:
    """SE-ResNet-110 for CIFAR (paper Table 4)."""
    return _resnet(PreActBasicBlock, (18, 18, 18), True, _CIFAR_RESNET, options)


@register_model(
    paper=PaperFigures(
        1.7, None, 5.46, input_size=32, source="Table 4 (CIFAR-10 error); params He et al. 2016b"
    ),
    num_classes=10,
)
def resnet164_cifar(**options) -> ResNet:
    """ResNet-164 for CIFAR: 3 stages of 18 pre-activation bottlenecks (paper Table 4)."""
    return _resnet(PreActBottleneck, (18, 18, 18), False, _CIFAR_RESNET, options)


@register_model(
    paper=PaperFigures(None, None, 4.39, input_size=32, source="Table 4 (CIFAR-10 error)"), num_classes=10
)
def se_resnet164_cifar(**options) -> ResNet:
    """SE-ResNet-164 for CIFAR (paper Table 4)."""
    return _resnet(PreActBottleneck, (18, 18, 18), True, _CIFAR_RESNET, options)


# Wide ResNet (Zagoruyko & Komodakis 2016): the CIFAR pre-activation ResNet with k-times wider stages.
_WRN_16_8 = dict(widths=(16 * 8, 32 * 8, 64 * 8), stem="cifar", stem_width=16)


@register_model(
    paper=PaperFigures(
        11.0, None, 4.27, input_size=32, source="Table 4 (CIFAR-10 error); params Zagoruyko & Komodakis 2016"
    ),
    num_classes=10,
)
def wrn16_8(**options) -> ResNet:
    """WRN-16-8: depth 16 (2 pre-activation basic units per stage), widening factor 8 (paper Table 4)."""
    return _resnet(PreActBasicBlock, (2, 2, 2), False, _WRN_16_8, options)


@register_model(
    paper=PaperFigures(None, None, 3.88, input_size=32, source="Table 4 (CIFAR-10 error)"), num_classes=10
)
def se_wrn16_8(**options) -> ResNet:
    """SE-WRN-16-8 (paper Table 4)."""
    return _resnet(PreActBasicBlock, (2, 2, 2), True, _WRN_16_8, options)
