"""Faster R-CNN with a feature pyramid on any of our networks: torchvision's detector, our backbones.

``build_detector("se_resnet50", num_classes=80, pretrained=PATH)`` builds the network's ``features_only``
backbone (``senet.create_model``, or ``senet.load_pretrained`` for ImageNet weights), puts torchvision's
``FeaturePyramidNetwork`` on its maps (:class:`PyramidBackbone`: our backbone returns a list, the pyramid
takes an ordered dict) and hands it to ``torchvision.models.detection.FasterRCNN``, which brings the RPN, the
RoI heads, box coding, NMS and the resizing transform (shorter side ``min_size``, longer at most
``max_size``). Nothing of those is written here.

As Detectron does, pretrained weights come with frozen BatchNorms (``norm="frozen_bn"``) and a frozen stem and
first stage (``frozen_stages=1``); from scratch everything trains, BatchNorms included. Anchor sizes are 8
times each pyramid level's stride (32..512 px for a ResNet-50: torchvision's own), so networks of other
strides -- the CIFAR ResNets' 1, 2, 4 for tests at 64-128 px -- get anchors that fit them.

The detector records the options that rebuild it (``detector.build_options``, JSON-ready: the detector's own,
``backbone_options`` -- with the layout options recorded with pretrained weights -- and the resolved ``norm``
and ``frozen_stages``; ``pretrained`` is not among them, a checkpoint holds the weights), and
:func:`detector_from_options` rebuilds it.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from senet.models.registry import create_model
from senet.weights.pretrained import load_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ANCHOR_SCALE = 8  # anchor size per unit of stride (Detectron's FPN: 32 px at stride 4)

# What build_detector sets itself; every other FasterRCNN keyword (rpn_*, box_*) may go in detector_options.
_OWN = {"self", "backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std", "kwargs"}
_OWN |= {"rpn_anchor_generator", "rpn_head", "box_roi_pool", "box_head", "box_predictor"}
DETECTOR_OPTIONS: tuple[str, ...] = tuple(
    name for name in inspect.signature(FasterRCNN.__init__).parameters if name not in _OWN
)


class PyramidBackbone(nn.Module):
    """A ``features_only`` network (``forward`` -> list of maps, ``feature_info``) under torchvision's FPN.

    ``forward`` returns the pyramid as torchvision's detectors take it: an ordered dict ``"0"``, ``"1"``, ...
    (one level per map, ``fpn_channels`` each) and ``"pool"`` (LastLevelMaxPool, half the last level's size).
    ``strides`` are the levels' reductions, in order.
    """

    def __init__(self, body: nn.Module, fpn_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        info = body.feature_info
        self.fpn = FeaturePyramidNetwork(
            [f["num_chs"] for f in info], fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = fpn_channels
        self.featmap_names = [str(i) for i in range(len(info))]
        self.strides = [int(f["reduction"]) for f in info] + [2 * int(info[-1]["reduction"])]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.body(x)
        return self.fpn(OrderedDict(zip(self.featmap_names, maps, strict=True)))


def build_detector(
    backbone: str = "se_resnet50",
    *,
    num_classes: int,
    pretrained: str | None = None,
    frozen_stages: int | None = None,
    norm: str | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    out_indices: Sequence[int] | None = None,
    fpn_channels: int = 256,
    box_head_size: int = 1024,
    anchor_sizes: Sequence[float] | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    detector_options: dict[str, Any] | None = None,
    **backbone_options: Any,
) -> FasterRCNN:
    """Faster R-CNN + FPN on ``backbone``'s stages (see the module doc).

    Args:
        backbone: any registered network with stages (``senet models``), e.g. ``se_resnet50``,
            ``resnet101``, ``se_resnext50_32x4d``, or a tiny ``resnet20_cifar`` for tests.
        num_classes: K, the object categories, the background not counted (the detector's classifier has
            K + 1 outputs, label 0 the background; :attr:`senet.detection.data.CategoryMap.num_classes`).
        pretrained: ImageNet weights for the backbone: anything ``senet.load_pretrained`` takes (a weights
            file, a run directory, a published model name). Their recorded build options are kept.
        frozen_stages: stem and stages 1..k frozen (-1: nothing); default 1 with ``pretrained``, else -1.
        norm: ``"frozen_bn"`` (default with ``pretrained``) or ``"bn"`` (default from scratch: trainable).
        min_size, max_size: the detector's resizing of each image (shorter side, or a random choice of a
            tuple while training; longer side at most ``max_size``).
        out_indices: the stages that feed the pyramid; default the last four after the stem (all, if fewer).
        fpn_channels: channels of every pyramid level; box_head_size: width of the two-layer box head.
        anchor_sizes: one size per pyramid level (the stages and the extra pooled level); default
            8 x each level's stride. aspect_ratios: of the anchors at every level.
        image_mean, image_std: the detector's normalisation of [0, 1] images; default the weights' own
            preprocessing, or ImageNet's.
        detector_options: further keywords of torchvision's ``FasterRCNN`` (:data:`DETECTOR_OPTIONS`: RPN and
            box-head sampling, thresholds, detections per image).
        backbone_options: build options of the network (``senet.create_model``'s, e.g. ``widths``).
    """

    _check_int("num_classes", num_classes, 1)
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    if not sizes:
        raise ValueError("min_size=(): give the shorter side, or several to choose from while training")
    for value in sizes:
        _check_int("min_size", value, 1)
    _check_int("max_size", max_size, max(sizes))
    _check_int("fpn_channels", fpn_channels, 1)
    _check_int("box_head_size", box_head_size, 1)
    detector_options = dict(detector_options or {})
    if unknown := sorted(set(detector_options) - set(DETECTOR_OPTIONS)):
        raise ValueError(
            f"detector_options: unknown FasterRCNN options {', '.join(unknown)}; "
            f"valid: {', '.join(DETECTOR_OPTIONS)}"
        )
    for key in ("features_only", "pretrained", "num_classes"):
        if key in backbone_options:
            raise ValueError(f"backbone option {key!r} is set by build_detector; leave it out")
    if frozen_stages is None:
        frozen_stages = 1 if pretrained is not None else -1
    if norm is None:
        norm = "frozen_bn" if pretrained is not None else "bn"
    if out_indices is None:
        out_indices = _default_out_indices(backbone, backbone_options)
    options = dict(features_only=True, out_indices=tuple(out_indices), frozen_stages=frozen_stages, norm=norm)
    info = None
    if pretrained is not None:
        body = load_pretrained(pretrained, model=backbone, **backbone_options, **options)
        info = body.pretrained_info
        backbone_options = {**info.options, **backbone_options}  # the layout the weights need, for rebuilds
        image_mean = image_mean or info.preprocessing.mean
        image_std = image_std or info.preprocessing.std
    else:
        body = create_model(backbone, **backbone_options, **options)
    image_mean = tuple(float(v) for v in (image_mean or IMAGENET_MEAN))
    image_std = tuple(float(v) for v in (image_std or IMAGENET_STD))
    if len(image_mean) != len(image_std) or not all(v > 0 for v in image_std):
        raise ValueError(f"image_mean {image_mean} and image_std {image_std}: one each per channel, std > 0")
    pyramid = PyramidBackbone(body, fpn_channels)
    if anchor_sizes is None:
        anchor_sizes = [ANCHOR_SCALE * s for s in pyramid.strides]
    anchor_sizes = [float(s) for s in anchor_sizes]
    if len(anchor_sizes) != len(pyramid.strides) or not all(s > 0 for s in anchor_sizes):
        raise ValueError(
            f"anchor_sizes {anchor_sizes}: give one size > 0 per pyramid level ({len(pyramid.strides)}: "
            f"strides {pyramid.strides}, the last the extra pooled level)"
        )
    ratios = tuple(float(r) for r in aspect_ratios)
    if not ratios or not all(r > 0 for r in ratios):
        raise ValueError(f"aspect_ratios {aspect_ratios}: give one or more ratios > 0")
    anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), (ratios,) * len(anchor_sizes))
    roi_pool = MultiScaleRoIAlign(pyramid.featmap_names, output_size=7, sampling_ratio=2)
    detector = FasterRCNN(
        pyramid,
        num_classes=None,
        min_size=sizes[0] if len(sizes) == 1 else sizes,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, len(ratios)),
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_size),
        box_predictor=FastRCNNPredictor(box_head_size, num_classes + 1),
        **detector_options,
    )
    detector.build_options = {
        "backbone": backbone,
        "num_classes": num_classes,
        "frozen_stages": frozen_stages,
        "norm": norm,
        "min_size": min_size if isinstance(min_size, int) else list(sizes),
        "max_size": max_size,
        "out_indices": list(out_indices),
        "fpn_channels": fpn_channels,
        "box_head_size": box_head_size,
        "anchor_sizes": anchor_sizes,
        "aspect_ratios": list(ratios),
        "image_mean": list(image_mean),
        "image_std": list(image_std),
        "detector_options": detector_options,
        "backbone_options": backbone_options,
    }
    if info is not None:
        detector.pretrained_info = info
    return detector


def detector_from_options(options: dict[str, Any]) -> FasterRCNN:
    """The detector that ``options`` (a detector's ``build_options``) describe, with fresh weights: the same
    modules, parameters and buffers, for a checkpoint's weights to load into."""
    options = dict(options)
    backbone_options = options.pop("backbone_options", {})
    return build_detector(**options, **backbone_options)


def _default_out_indices(backbone: str, backbone_options: dict[str, Any]) -> tuple[int, ...]:
    """The last four stages of ``backbone`` after its stem, or all where it has fewer (Detectron's C2..C5 of a
    ResNet; C3..C5 of a CIFAR ResNet; VGG's and MobileNet's stride-2 stage left out). The network is built on
    the meta device: no memory, no initialisation."""

    with torch.device("meta"):
        network = create_model(backbone, **backbone_options)
    if not hasattr(network, "feature_stages"):
        raise ValueError(f"backbone {backbone!r} describes no stages; choose a network of `senet models`")
    indices = tuple(s.index for s in network.feature_stages() if s.index >= 1)[-4:]
    if not indices:
        raise ValueError(f"backbone {backbone!r} has no stage after its stem to feed a feature pyramid")
    return indices


def _check_int(name: str, value: object, minimum: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name}={value!r} is not valid; use an integer >= {minimum}")
