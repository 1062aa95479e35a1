"""VGG-16 with BatchNorm and SE-VGG-16 (paper Table 2; Simonyan & Zisserman 2015).

The paper trains both networks from scratch with BN after every convolution (Table 2 note), and places SE
blocks in a plain network "after the non-linearity that follows each convolution" (the paper, Sec. 4).

Key names are torchvision's ``models/vgg.py`` (``vgg16_bn``): ``features.N`` is one flat Sequential of
conv / BN / ReLU / max-pool, then ``avgpool`` (adaptive, 7x7) and ``classifier`` (Linear-ReLU-Dropout x2,
Linear). ``torchvision.models.vgg16_bn().state_dict()`` loads strictly into ``vgg16_bn`` and gives the same
outputs.

SE placement keeps those indices: in the SE model the ReLU at ``features.N`` is replaced by
:class:`ReLUThenSE`, which holds no weights of its own besides ``features.N.se.fc1`` / ``.se.fc2``. So every
plain key keeps its index in the SE model (a torchvision state dict loads with ``strict=False`` and only the
SE keys missing), and the SE blocks are named after the ReLU they follow.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from senet.layers.squeeze_excite import SEConfig, SqueezeExcite
from senet.models.base import (
    FeatureStage,
    StagedNetwork,
    check_common_options,
    check_num_classes,
    check_positive,
    init_weights,
)
from senet.models.registry import PaperFigures, register_model


class ReLUThenSE(nn.Module):
    """ReLU followed by an SE block: the plain-network placement of the paper (reference §1, "VGG").

    It takes the slot of the ReLU in ``features`` so that conv / BN indices stay torchvision's.
    """

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.se = se

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.relu(x))


class VGG(StagedNetwork):
    """The VGG family with BN: stages of 3x3 conv-BN-ReLU separated by 2x2 max-pools, then a 3-layer MLP.

    Args:
        depths: convs per stage, ``(2, 2, 3, 3, 3)`` for VGG-16 (configuration D of Simonyan & Zisserman).
        widths: output channels of each stage's convs.
        mlp_width: width of the two hidden FC layers (4096 in VGG).
        pool_size: side of the adaptive average pool before the MLP (7, as torchvision; at 224x224 input it
            is the identity, and smaller inputs are up-sampled to it).
        se: SE blocks after every conv's ReLU; ``None`` for plain VGG. VGG has no stem: ``se.stages`` counts
            the blocks of convs between max-pools from 1 (VGG's conv1_x is stage 1, unlike ResNet's conv2_x).
        num_classes, in_chans: classifier size and input channels.
        drop_rate: the probability of both dropout layers of the MLP (0.5 in VGG and torchvision).

    ``num_features`` is the width of the final Linear's input (``mlp_width``): what ``forward_head(...,
    pre_logits=True)`` and a model with ``reset_classifier(0)`` return. ``feature_channels`` is the width of
    the map ``forward_features`` returns (``widths[-1]``).
    """

    def __init__(
        self,
        depths: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        mlp_width: int = 4096,
        pool_size: int = 7,
        se: SEConfig | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        check_common_options("VGG", num_classes, in_chans, drop_rate)
        if len(depths) != len(widths):
            raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)} differ in length")
        # A stage of depth 0 would keep its max-pool and silently drop its width.
        sizes = dict(depths=depths, widths=widths, mlp_width=mlp_width, pool_size=pool_size)
        for option, values in sizes.items():
            check_positive("VGG", option, values)
        if se is not None:
            se.require_position("VGG")  # SE after every conv's ReLU
            # VGG has no stem: stage s is the s-th block of convs between max-pools (VGG's conv<s>_1, ...).
            stages = range(1, len(depths) + 1)
            se = se.resolve_stages("VGG", stages, meaning=f"the conv blocks 1..{len(depths)} between pools")
        self.num_classes = num_classes
        self.se_config = se

        layers: list[nn.Module] = []
        channels = in_chans
        for index, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            use_se = se is not None and se.in_stage(index + 1)
            for _ in range(depth):
                act: nn.Module = ReLUThenSE(se.block(width)) if use_se else nn.ReLU(inplace=True)
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), act]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        if se is not None:
            se.check_built("VGG", self)
        self.feature_channels = channels
        self.num_features = mlp_width

        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        # One Sequential, as torchvision, so ``classifier.0/3/6`` keys match; index 6 is the replaceable head.
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool_size * pool_size, mlp_width),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(mlp_width, mlp_width),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(mlp_width, num_classes) if num_classes > 0 else nn.Identity(),
        )
        init_weights(self, linear_std=0.01)  # torchvision's VGG init; SE 1x1 convs are convs like any other

    def se_blocks(self) -> list[SqueezeExcite]:
        """The SE blocks in network order (13 in SE-VGG-16)."""
        return [m.se for m in self.features if isinstance(m, ReLUThenSE)]

    def feature_stages(self) -> list[FeatureStage]:
        """No stem: stage s is the s-th block of conv-BN-ReLU ending with its max-pool (mmdet's VGG stages;
        timm taps the same blocks before their pools, at half the reduction)."""
        stages: list[FeatureStage] = []
        modules: list[str] = []
        channels = 0
        for index, layer in enumerate(self.features):
            modules.append(f"features.{index}")
            channels = layer.out_channels if isinstance(layer, nn.Conv2d) else channels
            if isinstance(layer, nn.MaxPool2d):
                stage = len(stages) + 1
                stages.append(FeatureStage(stage, tuple(modules), channels, 2**stage))
                modules = []
        return stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before pooling: (N, feature_channels, H/32, W/32) for five stages."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        x = self.classifier[:-1](x)
        return x if pre_logits else self.classifier[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear by a fresh one with ``num_classes`` outputs (0: no classifier)."""
        check_num_classes("VGG", num_classes)
        self.num_classes = num_classes
        self.classifier[-1] = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _vgg(depths: Sequence[int], se: bool, options: dict) -> VGG:
    se_config = SEConfig.pop_from(options, enabled=se)
    return VGG(depths, se=se_config, **options)


_VGG16 = (2, 2, 3, 3, 3)  # configuration D


@register_model(paper=PaperFigures(None, 15.47, 27.02, 8.81, source="Table 2 re-impl. (no params given)"))
def vgg16_bn(**options) -> VGG:
    """VGG-16 with BN after every conv, torchvision's layout and keys (paper Table 2)."""
    return _vgg(_VGG16, False, options)


@register_model(paper=PaperFigures(None, 15.48, 25.22, 7.70, source="Table 2 (no params given)"))
def se_vgg16_bn(**options) -> VGG:
    """SE-VGG-16 (BN): an SE block after the ReLU of each of the 13 convs (paper Table 2)."""
    return _vgg(_VGG16, True, options)
