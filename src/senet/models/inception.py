"""BN-Inception, Inception-ResNet-v2 and their SE twins (paper Sec. 3, Fig. 2-3, Table 2).

Two families share the building block :class:`ConvBN` (conv -> BN -> ReLU) and nothing else:

**BN-Inception** (Ioffe & Szegedy 2015, the GoogLeNet with BN and every 5x5 conv replaced by two 3x3
convs; the layout of the authors' released SE-BN-Inception prototxt and of Cadene's ``bninception``).
Ten Inception modules (3a, 3b, 3c, 4a-4e, 5a, 5b) are ten rows of :data:`BN_INCEPTION_MODULES`, each
built by the one class :class:`InceptionModule`. SE-BN-Inception puts an SE block on the *concatenated*
output of every module (paper Fig. 2, reference Sec. 9), the pass-through pooling branch of the
stride-2 modules 3c and 4e included. State-dict keys, with the layer names of the released prototxt
(``SE-BN-Inception.prototxt``; Cadene's ``bninception`` uses the same names with ``_`` for ``/`` and
``double_3x3_1`` / ``double_3x3_2`` for ``double3x3a`` / ``double3x3b``)::

    conv1.conv / conv1.bn                     conv1/7x7_s2 / conv1/7x7_s2/bn (+ /bn/scale)
    conv2_reduce.conv, conv2.conv             conv2/3x3_reduce, conv2/3x3
    inception_3a.branch1x1.conv               inception_3a/1x1
    inception_3a.branch3x3.{0,1}.conv         inception_3a/3x3_reduce, inception_3a/3x3
    inception_3a.branch3x3dbl.{0,1,2}.conv    inception_3a/double3x3_reduce, /double3x3a, /double3x3b
    inception_3a.branch_pool.1.conv           inception_3a/pool_proj  (``branch_pool.0`` is the pooling)
    inception_3a.se.fc1 / .se.fc2             inception_3a_1x1_down / inception_3a_1x1_up (SE twin only)
    fc                                        classifier (Cadene: last_linear)

(``.bn`` next to each ``.conv`` holds the layer's BatchNorm + Scale.) The released SE-BN-Inception has
no conv biases (``bias_term: false``, 11.93M parameters, reference Sec. 9); ``conv_bias=True`` gives the
biased convs of the older BN-Inception port Cadene's ``bninception`` loads (11.30M parameters).

**Inception-ResNet-v2** (Szegedy et al. 2017) as released with TF-slim and ported by Cadene and timm
(``inception_resnet_v2``, 55,843,464 parameters): stem, mixed_5b, 10 x block35 (Inception-ResNet-A,
scale 0.17), mixed_6a (reduction-A), 20 x block17 (B, scale 0.10), mixed_7a (reduction-B),
9 x block8 (C, scale 0.20) + a last block8 without ReLU (scale 1.0, as TF-slim), a 1x1 conv to 1536,
pooling, classifier. Every branch layout is a line of data (:data:`IRV2_BLOCK35` ...); the
concatenating modules are one class (:class:`MixedBlock`) and the residual blocks another
(:class:`InceptionResNetBlock`). State-dict keys follow timm's module names (``conv2d_1a.conv``,
``repeat.0.branch1.0.conv``, ``repeat_1.3.conv2d``, ``block8``, ``conv2d_7b``, ``classif``), read from timm's
source, so its checkpoints should load into the plain network; SE adds ``<block>.se.fc1`` / ``.se.fc2``.

SE-Inception-ResNet-v2 puts the SE block on the residual branch before the sum with the identity
(paper Sec. 3, "SE-Inception-ResNet"): on the output of the branch's final 1x1 conv and *before* the
residual scaling, so the gates see the branch's unscaled response (the scaling only damps what is added
to the identity). Only the 40 residual blocks get SE blocks; the reduction modules have no identity path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence, Union

import torch
from torch import nn

from senet.layers.squeeze_excite import SEConfig
from senet.models.base import (
    FeatureStage,
    PooledClassifier,
    check_common_options,
    check_option,
    init_weights,
)
from senet.models.registry import PaperFigures, register_model

IntPair = Union[int, tuple[int, int]]


class ConvBN(nn.Module):
    """Conv -> BatchNorm -> ReLU, the unit every Inception branch is made of."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: int = 1,
        padding: IntPair = 0,
        *,
        bias: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


# --------------------------------------------------------------------------------------------------
# BN-Inception
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InceptionSpec:
    """Branch widths of one BN-Inception module (Ioffe & Szegedy 2015, Fig. 5).

    ``ch1x1 = 0`` drops the 1x1 branch and ``pool_proj = 0`` passes the pooled input through without a
    projection: both hold for the stride-2 modules 3c and 4e, whose pooling branch is a 3x3/2 max pool.
    """

    name: str
    ch1x1: int
    ch3x3_reduce: int
    ch3x3: int
    ch3x3dbl_reduce: int
    ch3x3dbl: int
    pool: Literal["avg", "max"]
    pool_proj: int
    stride: int = 1

    @property
    def stage(self) -> int:
        """1-based stage for ``se_stages``: modules 3x -> 1, 4x -> 2, 5x -> 3."""
        return int(self.name[0]) - 2

    def out_channels(self, in_channels: int) -> int:
        return self.ch1x1 + self.ch3x3 + self.ch3x3dbl + (self.pool_proj or in_channels)


# The ten modules of BN-Inception, as in the released SE-BN-Inception prototxt and Cadene's bninception.
BN_INCEPTION_MODULES: tuple[InceptionSpec, ...] = (
    InceptionSpec("3a", 64, 64, 64, 64, 96, "avg", 32),  # 256 out
    InceptionSpec("3b", 64, 64, 96, 64, 96, "avg", 64),  # 320
    InceptionSpec("3c", 0, 128, 160, 64, 96, "max", 0, stride=2),  # 576
    InceptionSpec("4a", 224, 64, 96, 96, 128, "avg", 128),  # 576
    InceptionSpec("4b", 192, 96, 128, 96, 128, "avg", 128),  # 576
    InceptionSpec("4c", 160, 128, 160, 128, 160, "avg", 128),  # 608
    InceptionSpec("4d", 96, 128, 192, 160, 192, "avg", 128),  # 608
    InceptionSpec("4e", 0, 128, 192, 192, 256, "max", 0, stride=2),  # 1056
    InceptionSpec("5a", 352, 192, 320, 160, 224, "avg", 128),  # 1024
    InceptionSpec("5b", 352, 192, 320, 192, 224, "max", 128),  # 1024
)


class InceptionModule(nn.Module):
    """One BN-Inception module: 1x1 | 1x1->3x3 | 1x1->3x3->3x3 | pool(->1x1), concatenated, then SE.

    The SE block rescales the whole concatenation (paper Fig. 2: F_tr is the entire module). A stride-2
    module puts its stride on the last conv of each conv branch and max-pools 3x3/2 (Caffe rounding).
    """

    def __init__(
        self, in_channels: int, spec: InceptionSpec, *, se: SEConfig | None = None, conv_bias: bool = False
    ):
        super().__init__()
        s = self.stride = spec.stride

        def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> ConvBN:
            return ConvBN(cin, cout, kernel, stride, kernel // 2, bias=conv_bias)

        self.branch1x1 = conv(in_channels, spec.ch1x1, 1) if spec.ch1x1 else None
        self.branch3x3 = nn.Sequential(
            conv(in_channels, spec.ch3x3_reduce, 1), conv(spec.ch3x3_reduce, spec.ch3x3, 3, s)
        )
        self.branch3x3dbl = nn.Sequential(
            conv(in_channels, spec.ch3x3dbl_reduce, 1),
            conv(spec.ch3x3dbl_reduce, spec.ch3x3dbl, 3),
            conv(spec.ch3x3dbl, spec.ch3x3dbl, 3, s),
        )
        if spec.pool == "avg":
            # Caffe's AVE pooling counts the zero padding, as PyTorch's default does.
            pool: nn.Module = nn.AvgPool2d(3, s, 1, ceil_mode=True, count_include_pad=True)
        else:
            pool = nn.MaxPool2d(3, s, 1 if s == 1 else 0, ceil_mode=True)
        self.branch_pool = (
            nn.Sequential(pool, conv(in_channels, spec.pool_proj, 1)) if spec.pool_proj else pool
        )
        self.out_channels = spec.out_channels(in_channels)
        self.se = se.block(self.out_channels) if se is not None else None

    def concat(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output before SE: its branches, concatenated along channels."""
        branches = [self.branch1x1] if self.branch1x1 is not None else []
        branches += [self.branch3x3, self.branch3x3dbl, self.branch_pool]
        return torch.cat([branch(x) for branch in branches], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.concat(x)
        return self.se(out) if self.se is not None else out


class BNInception(PooledClassifier):
    """BN-Inception: 7x7 stem, 1x1 + 3x3 convs, ten Inception modules, global pooling, classifier.

    Args:
        modules: the Inception modules in order (default :data:`BN_INCEPTION_MODULES`).
        se: where and how SE blocks are used (``se.stages`` 1/2/3 = modules 3x/4x/5x); ``None``: plain.
        conv_bias: give every conv a bias (Cadene's ``bninception``; the SE authors' prototxt has none).
        num_classes, in_chans, drop_rate: classifier size, input channels, dropout before the classifier.

    The feature map is 1/32 of the input (7x7 at 224). Stride-2 stages round up as Caffe does, so the
    maps entering 3c and 4e must have even sizes (true for inputs that are multiples of 32).
    """

    def __init__(
        self,
        modules: Sequence[InceptionSpec] = BN_INCEPTION_MODULES,
        *,
        se: SEConfig | None = None,
        conv_bias: bool = False,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_common_options("BNInception", num_classes, in_chans, drop_rate)
        if se is not None:
            se.require_position(type(self).__name__)
            stages = sorted({spec.stage for spec in modules})  # module group 3x is stage 1, 4x 2, 5x 3
            meaning = f"modules inception_{stages[0] + 2}x..{stages[-1] + 2}x" if stages else ""
            se = se.resolve_stages("BNInception", stages, meaning=meaning)
        self.se_config = se

        self.conv1 = ConvBN(in_chans, 64, 7, 2, 3, bias=conv_bias)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2_reduce = ConvBN(64, 64, 1, bias=conv_bias)
        self.conv2 = ConvBN(64, 192, 3, 1, 1, bias=conv_bias)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)

        self.module_names: list[str] = []
        channels = 192
        for spec in modules:
            module_se = se if se is not None and se.in_stage(spec.stage) else None
            module = InceptionModule(channels, spec, se=module_se, conv_bias=conv_bias)
            self.add_module(f"inception_{spec.name}", module)
            self.module_names.append(f"inception_{spec.name}")
            channels = module.out_channels
        self._make_head(channels, num_classes, drop_rate)
        if se is not None:
            se.check_built("BNInception", self)
        init_weights(self)

    def inception_modules(self) -> list[InceptionModule]:
        return [getattr(self, name) for name in self.module_names]

    def feature_stages(self) -> list[FeatureStage]:
        """One stage per resolution, as timm's Inception-v3: 0 is the stem up to conv2 (1/4, before pool2);
        stage 1 is pool2 and the modules at 1/8 (3a, 3b); each stride-2 module starts the next stage (3c-4d at
        1/16, 4e-5b at 1/32): each map is the last one at its resolution. ``se_stages`` groups the modules by
        name instead (3a-3c, 4a-4e, 5a-5b)."""
        width = self.conv2.conv.out_channels
        stages = [FeatureStage(0, ("conv1", "pool1", "conv2_reduce", "conv2"), width, 4)]
        modules, channels, reduction = ["pool2"], width, 8
        for name, module in zip(self.module_names, self.inception_modules(), strict=True):
            if module.stride > 1 and modules != ["pool2"]:
                stages.append(FeatureStage(len(stages), tuple(modules), channels, reduction))
                modules = []
            modules.append(name)
            channels, reduction = module.out_channels, reduction * module.stride
        stages.append(FeatureStage(len(stages), tuple(modules), channels, reduction))
        return stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before global pooling: (N, 1024, H/32, W/32)."""
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(self.conv2_reduce(x)))
        for module in self.inception_modules():
            x = module(x)
        return x


def _bn_inception(se: bool, options: dict) -> BNInception:
    se_config = SEConfig.pop_from(options, enabled=se)
    return BNInception(se=se_config, **options)


@register_model(
    paper=PaperFigures(None, 2.03, 25.38, 7.89, source="Table 2 re-impl."), aliases=("bninception",)
)
def bn_inception(**options) -> BNInception:
    """BN-Inception (Ioffe & Szegedy 2015), the paper's Table 2 baseline."""
    return _bn_inception(False, options)


@register_model(paper=PaperFigures(11.93, 2.04, 24.23, 7.14, source="Table 2; params released prototxt"))
def se_bn_inception(**options) -> BNInception:
    """SE-BN-Inception: SE on the output of every Inception module (paper Fig. 2, Table 2)."""
    return _bn_inception(True, options)


# --------------------------------------------------------------------------------------------------
# Inception-ResNet-v2
# --------------------------------------------------------------------------------------------------


class Conv(NamedTuple):
    """One conv of a branch: output width, kernel, stride, padding (TF-slim 'VALID' = padding 0)."""

    out: int
    kernel: IntPair = 1
    stride: int = 1
    padding: IntPair = 0


# Pooling layers inside branches: the 3x3 average pool of mixed_5b (TF-slim excludes the padding) and
# the 3x3/2 max pool of the reduction modules.
AVG_POOL = "avg_pool"
MAX_POOL = "max_pool"
Layer = Union[Conv, str]
Branches = tuple[tuple[Layer, ...], ...]

IRV2_BN_EPS = 1e-3  # TF-slim's batch-norm epsilon

IRV2_MIXED_5B: Branches = (
    (Conv(96),),
    (Conv(48), Conv(64, 5, padding=2)),
    (Conv(64), Conv(96, 3, padding=1), Conv(96, 3, padding=1)),
    (AVG_POOL, Conv(64)),
)  # 192 -> 320 channels, 35x35
IRV2_BLOCK35: Branches = (
    (Conv(32),),
    (Conv(32), Conv(32, 3, padding=1)),
    (Conv(32), Conv(48, 3, padding=1), Conv(64, 3, padding=1)),
)  # Inception-ResNet-A: 128 -> 1x1 to 320
IRV2_MIXED_6A: Branches = (
    (Conv(384, 3, 2),),
    (Conv(256), Conv(256, 3, padding=1), Conv(384, 3, 2)),
    (MAX_POOL,),
)  # reduction-A: 320 -> 1088 channels, 17x17
IRV2_BLOCK17: Branches = (
    (Conv(192),),
    (Conv(128), Conv(160, (1, 7), padding=(0, 3)), Conv(192, (7, 1), padding=(3, 0))),
)  # Inception-ResNet-B: 384 -> 1x1 to 1088
IRV2_MIXED_7A: Branches = (
    (Conv(256), Conv(384, 3, 2)),
    (Conv(256), Conv(288, 3, 2)),
    (Conv(256), Conv(288, 3, padding=1), Conv(320, 3, 2)),
    (MAX_POOL,),
)  # reduction-B: 1088 -> 2080 channels, 8x8
IRV2_BLOCK8: Branches = (
    (Conv(192),),
    (Conv(192), Conv(224, (1, 3), padding=(0, 1)), Conv(256, (3, 1), padding=(1, 0))),
)  # Inception-ResNet-C: 448 -> 1x1 to 2080


class _BranchesModule(nn.Module):
    """Parallel branches ``branch0``, ``branch1``... built from :data:`Branches` data, concatenated.

    A one-conv branch is the :class:`ConvBN` itself and a longer one an ``nn.Sequential`` (timm's keys).
    """

    def _add_branches(self, in_channels: int, branches: Branches) -> int:
        """Build the branches; returns the width of their concatenation."""
        self.num_branches = len(branches)
        total = 0
        for index, layers in enumerate(branches):
            built: list[nn.Module] = []
            channels = in_channels
            for layer in layers:
                if layer == AVG_POOL:
                    built.append(nn.AvgPool2d(3, 1, 1, count_include_pad=False))
                elif layer == MAX_POOL:
                    built.append(nn.MaxPool2d(3, 2))
                elif isinstance(layer, Conv):
                    built.append(
                        ConvBN(
                            channels, layer.out, layer.kernel, layer.stride, layer.padding, eps=IRV2_BN_EPS
                        )
                    )
                    channels = layer.out
                else:
                    raise ValueError(f"unknown branch layer {layer!r}")
            self.add_module(f"branch{index}", built[0] if len(built) == 1 else nn.Sequential(*built))
            total += channels
        return total

    def concat(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], 1)


class MixedBlock(_BranchesModule):
    """An Inception module without identity (mixed_5b, reduction-A/B): its branches, concatenated."""

    def __init__(self, in_channels: int, branches: Branches) -> None:
        super().__init__()
        self.out_channels = self._add_branches(in_channels, branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.concat(x)


class InceptionResNetBlock(_BranchesModule):
    """Inception-ResNet-A/B/C: x + scale * SE(conv1x1(concat(branches(x)))), then ReLU
    (Szegedy 2017, Fig. 16, 17, 19).

    The 1x1 conv restores the input width (with a bias, no BN, as TF-slim); ``activate=False`` drops the
    final ReLU (the network's last block). The SE block acts on the residual branch before the sum
    (paper Sec. 3) and before the scaling (module doc).
    """

    def __init__(
        self,
        channels: int,
        branches: Branches,
        scale: float,
        *,
        activate: bool = True,
        se: SEConfig | None = None,
    ) -> None:
        super().__init__()
        self.scale = scale
        width = self._add_branches(channels, branches)
        self.conv2d = nn.Conv2d(width, channels, 1, bias=True)
        self.se = se.block(channels) if se is not None else None
        self.relu = nn.ReLU(inplace=True) if activate else None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch F_tr(x), SE included, before scaling."""
        out = self.conv2d(self.concat(x))
        return self.se(out) if self.se is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x) * self.scale + x
        return self.relu(out) if self.relu is not None else out


class InceptionResNetV2(PooledClassifier):
    """Inception-ResNet-v2 (Szegedy et al. 2017) as released with TF-slim; 8x8 features at 299x299.

    Args:
        depths: residual blocks of type A, B, C (10, 20, 10); the last C block has no ReLU.
        scales: residual scaling of the A, B, C blocks (0.17, 0.10, 0.20).
        final_scale: scaling of the last C block (1.0 in TF-slim, Cadene and timm).
        se: where and how SE blocks are used (``se.stages`` 1/2/3 = the A/B/C blocks); ``None``: plain.
        num_classes, in_chans, drop_rate: classifier size, input channels, dropout before the classifier.

    Unpadded stride-2 layers need inputs of at least 75x75.
    """

    classifier_name = "classif"  # timm's key names

    def __init__(
        self,
        depths: Sequence[int] = (10, 20, 10),
        scales: Sequence[float] = (0.17, 0.10, 0.20),
        *,
        final_scale: float = 1.0,
        se: SEConfig | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_common_options("InceptionResNetV2", num_classes, in_chans, drop_rate)
        if se is not None:
            se.require_position(type(self).__name__)
        if len(depths) != 3 or len(scales) != 3 or depths[2] < 1:
            raise ValueError(
                f"depths {tuple(depths)} and scales {tuple(scales)} need 3 entries each, depths[2] >= 1"
            )
        # range() of a negative depth is empty: a block type would silently vanish.
        check_option(
            all(isinstance(d, int) and d >= 0 for d in depths),
            "InceptionResNetV2",
            "depths",
            tuple(depths),
            "use integers >= 0 (>= 1 for the last)",
        )
        if se is not None:
            # Stage s holds the residual blocks of type A, B, C (s = 1, 2, 3); a type with depth 0 has none.
            blocks = {1: "A blocks: repeat", 2: "B blocks: repeat_1", 3: "C blocks: repeat_2, block8"}
            stages = [index + 1 for index, depth in enumerate(depths) if depth > 0]
            meaning = ", ".join(f"{stage} = {blocks[stage]}" for stage in stages)
            se = se.resolve_stages("InceptionResNetV2", stages, meaning=meaning)
        self.se_config = se

        def stage_se(stage: int) -> SEConfig | None:
            return se if se is not None and se.in_stage(stage) else None

        def conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> ConvBN:
            return ConvBN(cin, cout, kernel, stride, padding, eps=IRV2_BN_EPS)

        self.conv2d_1a = conv(in_chans, 32, 3, 2)
        self.conv2d_2a = conv(32, 32, 3)
        self.conv2d_2b = conv(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, 2)
        self.conv2d_3b = conv(64, 80, 1)
        self.conv2d_4a = conv(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, 2)

        self.mixed_5b = MixedBlock(192, IRV2_MIXED_5B)
        c = self.mixed_5b.out_channels
        self.repeat = nn.Sequential(
            *[InceptionResNetBlock(c, IRV2_BLOCK35, scales[0], se=stage_se(1)) for _ in range(depths[0])]
        )
        self.mixed_6a = MixedBlock(c, IRV2_MIXED_6A)
        c = self.mixed_6a.out_channels
        self.repeat_1 = nn.Sequential(
            *[InceptionResNetBlock(c, IRV2_BLOCK17, scales[1], se=stage_se(2)) for _ in range(depths[1])]
        )
        self.mixed_7a = MixedBlock(c, IRV2_MIXED_7A)
        c = self.mixed_7a.out_channels
        self.repeat_2 = nn.Sequential(
            *[InceptionResNetBlock(c, IRV2_BLOCK8, scales[2], se=stage_se(3)) for _ in range(depths[2] - 1)]
        )
        self.block8 = InceptionResNetBlock(c, IRV2_BLOCK8, final_scale, activate=False, se=stage_se(3))
        self.conv2d_7b = conv(c, 1536, 1)
        self._make_head(1536, num_classes, drop_rate)
        if se is not None:
            se.check_built("InceptionResNetV2", self)
        init_weights(self)

    def residual_blocks(self) -> list[InceptionResNetBlock]:
        return [*self.repeat, *self.repeat_1, *self.repeat_2, self.block8]

    def feature_stages(self) -> list[FeatureStage]:
        """timm's stages less its first (``conv2d_2b``, 1/2): 0 is the stem up to ``conv2d_4a`` (1/4); stage s
        holds the residual blocks of ``se_stages``'s stage s and the reduction before them (1/8, 1/16, 1/32),
        the last one ending with ``conv2d_7b``. Unpadded convs make the maps a little smaller than the nominal
        reductions (35, 17, 8 at 299)."""
        stem = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a")
        return [
            FeatureStage(0, stem, self.conv2d_4a.conv.out_channels, 4),
            FeatureStage(1, ("maxpool_5a", "mixed_5b", "repeat"), self.mixed_5b.out_channels, 8),
            FeatureStage(2, ("mixed_6a", "repeat_1"), self.mixed_6a.out_channels, 16),
            FeatureStage(3, ("mixed_7a", "repeat_2", "block8", "conv2d_7b"), self.num_features, 32),
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before global pooling: (N, 1536, 8, 8) at 299x299."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x)))
        x = self.repeat(self.mixed_5b(self.maxpool_5a(x)))
        x = self.repeat_1(self.mixed_6a(x))
        x = self.block8(self.repeat_2(self.mixed_7a(x)))
        return self.conv2d_7b(x)


# Original paper (Szegedy et al. 2017, Fig. 15): dropout keeps 0.8 of the pooled features.
_IRV2_LAYOUT = dict(drop_rate=0.2)


def _inception_resnet_v2(se: bool, options: dict) -> InceptionResNetV2:
    options = {**_IRV2_LAYOUT, **options}
    se_config = SEConfig.pop_from(options, enabled=se)
    return InceptionResNetV2(se=se_config, **options)


@register_model(paper=PaperFigures(None, 11.75, 20.37, 5.21, input_size=299, source="Table 2 re-impl."))
def inception_resnet_v2(**options) -> InceptionResNetV2:
    """Inception-ResNet-v2 (Szegedy et al. 2017), 299x299, the paper's Table 2 baseline."""
    return _inception_resnet_v2(False, options)


@register_model(paper=PaperFigures(None, 11.76, 19.80, 4.79, input_size=299, source="Table 2"))
def se_inception_resnet_v2(**options) -> InceptionResNetV2:
    """SE-Inception-ResNet-v2: SE on each residual branch before the sum (paper Fig. 3, Table 2)."""
    return _inception_resnet_v2(True, options)
