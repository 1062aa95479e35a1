"""What every network family shares: the pooled classifier head with its API, weight initialisation, and the
description of its stages that makes it a backbone (:class:`FeatureStage`, :class:`StagedNetwork`)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn


def check_option(ok: bool, family: str, option: str, value: object, fix: str) -> None:
    """Refuse a build option ``family`` would ignore or cannot honour, in one line: the option, the family,
    the fix. ``create_model`` adds the model's name in front."""
    if not ok:
        raise ValueError(f"{family} got {option}={value!r}; {fix}")


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive(family: str, option: str, values: int | Iterable[int]) -> None:
    """Every entry of ``values`` (a width, a depth...) is an integer >= 1: a 0 builds a layer-less stage or a
    zero-width conv that fails, if at all, deep in the first forward pass."""
    entries = [values] if is_int(values) or not isinstance(values, Iterable) else list(values)
    check_option(all(is_int(v) and v >= 1 for v in entries), family, option, values, "use integers >= 1")


def check_num_classes(family: str, num_classes: int) -> None:
    check_option(
        is_int(num_classes) and num_classes >= 0,
        family,
        "num_classes",
        num_classes,
        "use num_classes >= 1, or 0 for no classifier",
    )


def check_common_options(family: str, num_classes: int, in_chans: int, drop_rate: float) -> None:
    """The options every family takes: classifier size, input channels, dropout before the classifier."""
    check_num_classes(family, num_classes)
    check_option(
        is_int(in_chans) and in_chans >= 1,
        family,
        "in_chans",
        in_chans,
        "use in_chans >= 1 (3 for RGB, 1 for grey images)",
    )
    # nn.Dropout accepts p = 1 and zeroes every feature: a classifier that sees nothing.
    check_option(
        isinstance(drop_rate, numbers.Real) and 0 <= drop_rate < 1,
        family,
        "drop_rate",
        drop_rate,
        "use a probability in [0, 1)",
    )


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """torchvision's scheme: He (fan-out) init for convs (the SE FCs included), BN weight 1 / bias 0, conv
    biases 0; with ``linear_std``, Linear layers ~ N(0, std) with zero bias (VGG, the mobile networks)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0, linear_std)
            nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class FeatureStage:
    """One stage of a network seen as a backbone (``senet.models.features``; docs/backbones.md).

    ``index``: 0 for the stem's output, s >= 1 for stage s, the numbering of ``se_stages`` (1 is the first
    stage after the stem). ``modules``: dotted paths into the network, called one after the other on the
    previous stage's output; all stages' modules in order compute ``forward_features``. ``channels`` and
    ``reduction`` (input side / map side, where the network's paddings divide it exactly) describe the output,
    which is taken at ``modules[-1]``.
    """

    index: int
    modules: tuple[str, ...]
    channels: int
    reduction: int

    @property
    def module(self) -> str:
        """The module whose output is the stage's feature map."""
        return self.modules[-1]


def present(network: nn.Module, *paths: str) -> tuple[str, ...]:
    """``paths`` less the ``nn.Identity`` ones (an absent pooling, a pre-activation stem's BN and ReLU)."""
    return tuple(p for p in paths if not isinstance(network.get_submodule(p), nn.Identity))


class StagedNetwork(nn.Module):
    """What every family offers besides its head: its stages (:meth:`feature_stages`) and, once
    ``senet.models.features.freeze_stages`` has frozen the first of them (``frozen_stages``: mmdet's rule,
    -1 none, 0 the stem, k the stem and stages 1..k), keeping those in evaluation mode through ``train()``."""

    frozen_stages: int = -1

    def feature_stages(self) -> list[FeatureStage]:
        """The network's stages in order, the stem's (index 0) first where it has a stem."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "StagedNetwork":
        super().train(mode)
        if self.frozen_stages >= 0:
            keep_frozen_in_eval(self, self.feature_stages(), self.frozen_stages)
        return self


def keep_frozen_in_eval(network: nn.Module, stages: Iterable[FeatureStage], frozen_stages: int) -> None:
    """Put the modules of the frozen stages (index <= ``frozen_stages``) in evaluation mode: their BatchNorms
    use and keep their running statistics, whatever mode the rest of the network trains in."""
    for stage in stages:
        if stage.index <= frozen_stages:
            for path in stage.modules:
                network.get_submodule(path).eval()


def _linear_or_identity(num_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()


class PooledClassifier(StagedNetwork):
    """Global average pooling -> dropout -> linear classifier, and the classifier API every family offers
    (``forward_features``, ``forward_head``, ``get_classifier``, ``reset_classifier``, as in timm).

    A family calls ``_make_head`` once its feature extractor is built. ``classifier_name`` keeps another
    project's key names where weights come from there (``classif`` for Inception-ResNet-v2, as in timm).
    """

    classifier_name = "fc"
    num_classes: int
    num_features: int

    def _make_head(self, num_features: int, num_classes: int, drop_rate: float) -> None:
        self.num_classes = num_classes
        self.num_features = num_features
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        setattr(self, self.classifier_name, _linear_or_identity(num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before global pooling."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: no classifier)."""
        check_num_classes(type(self).__name__, num_classes)
        self.num_classes = num_classes
        setattr(self, self.classifier_name, _linear_or_identity(self.num_features, num_classes))
