"""Faster R-CNN + FPN on our backbones: torchvision's layout, Detectron's defaults, rebuilds, and learning."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import senet
from senet.data.transforms import Preprocessing
from senet.detection.data import CocoDetection, collate
from senet.detection.metrics import coco_evaluate
from senet.detection.model import build_detector, detector_from_options
from senet.weights.info import WeightsInfo, save_weights_file

# A detector of a few hundred thousand parameters for 64 px images: the CIFAR ResNet's strides 2 and 4 (+ 8,
# the pooled level) carry the pyramid; anchors 16..64 px; small RPN / RoI samples for speed on one core.
WIDTHS = (8, 16, 32)
TINY = dict(
    out_indices=(2, 3),
    fpn_channels=32,
    box_head_size=128,
    min_size=64,
    max_size=64,
    detector_options=dict(
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=64,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=200,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
    ),
)


def _shapes(root: Path, train: bool, flip_prob: float = 0.5) -> CocoDetection:
    return CocoDetection(
        root / "annotations/instances_train2017.json", root / "train2017", train=train, flip_prob=flip_prob
    )


def test_resnet50_detector_is_torchvisions_fasterrcnn_resnet50_fpn() -> None:
    """Same modules, keys and shapes as torchvision's own (its weights would load), the same anchors, and its
    published parameter count (frozen BatchNorms hold buffers, not parameters)."""
    with torch.device("meta"):
        ours = build_detector("resnet50", num_classes=90)
        theirs = torchvision.models.detection.fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=91
        )
        frozen = build_detector("resnet50", num_classes=90, norm="frozen_bn")
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours.rpn.anchor_generator.sizes == theirs.rpn.anchor_generator.sizes
    assert ours.rpn.anchor_generator.aspect_ratios == theirs.rpn.anchor_generator.aspect_ratios
    assert ours.backbone.strides == [4, 8, 16, 32, 64]
    assert sum(p.numel() for p in frozen.parameters()) == 41_755_286  # torchvision's COCO_V1 num_params
    assert (ours.transform.min_size, ours.transform.max_size) == ((800,), 1333)


def test_tiny_detector_detects_and_rebuilds_from_its_options(shapes_root: Path) -> None:
    detector = build_detector("se_resnet20_cifar", num_classes=3, widths=WIDTHS, **TINY).eval()
    assert detector.roi_heads.box_predictor.cls_score.out_features == 4  # K + background
    assert detector.backbone.strides == [2, 4, 8] and detector.rpn.anchor_generator.sizes == (
        (16.0,),
        (32.0,),
        (64.0,),
    )
    options = json.loads(json.dumps(detector.build_options))  # what a checkpoint's JSON would hold
    assert options["backbone_options"] == {"widths": list(WIDTHS)}
    assert options["norm"] == "bn" and options["frozen_stages"] == -1
    images = [_shapes(shapes_root, train=False)[i][0] for i in range(2)]
    with torch.no_grad():
        outputs = detector(images)
    assert len(outputs) == 2 and set(outputs[0]) == {"boxes", "scores", "labels"}
    twin = detector_from_options(options).eval()
    twin.load_state_dict(detector.state_dict())  # strict: the same tensors
    with torch.no_grad():
        again = twin(images)
    for a, b in zip(outputs, again, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_from_scratch_everything_trains(shapes_root: Path) -> None:
    detector = build_detector("resnet20_cifar", num_classes=3, widths=WIDTHS, **TINY).train()
    body = detector.backbone.body
    assert all(p.requires_grad for p in detector.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert all(m.training for m in body.modules())


def test_pretrained_weights_freeze_bn_stem_and_first_stage_as_detectron(tmp_path: Path) -> None:
    network = senet.create_model("resnet20_cifar", num_classes=10, widths=WIDTHS)
    with torch.no_grad():  # statistics that are not the defaults, to see them carried over
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    info = WeightsInfo(
        "resnet20_cifar", {"widths": list(WIDTHS)}, 10, Preprocessing((0.3, 0.4, 0.5), (0.2, 0.25, 0.3), 32)
    )
    path = save_weights_file(tmp_path / "imagenet.safetensors", network.state_dict(), info)

    detector = build_detector("resnet20_cifar", num_classes=3, pretrained=str(path), **TINY).train()
    body = detector.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    saved = network.state_dict()
    for key, value in body.state_dict().items():
        assert torch.equal(value, saved[key]), key
    frozen = {n for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in body.named_parameters() if n.startswith(("conv1.", "layer1."))}
    assert not body.layer1.training and body.layer2.training
    assert list(detector.transform.image_mean) == [0.3, 0.4, 0.5]
    assert list(detector.transform.image_std) == [0.2, 0.25, 0.3]
    options = detector.build_options
    assert (options["norm"], options["frozen_stages"]) == ("frozen_bn", 1)
    assert options["backbone_options"] == {"widths": list(WIDTHS)}  # from the weights' record
    twin = detector_from_options(json.loads(json.dumps(options)))  # no weights file needed
    twin.load_state_dict(detector.state_dict())
    # Detectron's defaults are defaults: trainable BN and nothing frozen on request.
    loose = build_detector(
        "resnet20_cifar", num_classes=3, pretrained=str(path), norm="bn", frozen_stages=-1, **TINY
    )
    assert all(p.requires_grad for p in loose.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in loose.backbone.body.modules())


@pytest.mark.parametrize(
    "options, expect",
    [
        (dict(num_classes=0), "num_classes=0"),
        (dict(detector_options={"rpn_batch": 3}), "unknown FasterRCNN options rpn_batch"),
        (dict(anchor_sizes=[8.0]), "one size > 0 per pyramid level"),
        (dict(features_only=False), "set by build_detector"),
        (dict(min_size=64, max_size=32), "max_size=32"),
        (dict(min_size=()), "min_size=()"),
        (dict(image_std=(0.2, 0.0, 0.2)), "std > 0"),
        (dict(out_indices=(5,)), "out_indices"),
    ],
)
def test_bad_options_are_one_line(options: dict, expect: str) -> None:
    arguments = {
        "num_classes": 3,
        "widths": WIDTHS,
        **{k: v for k, v in TINY.items() if k not in options},
        **options,
    }
    with pytest.raises(ValueError, match=re.escape(expect)) as error:
        build_detector("resnet20_cifar", **arguments)
    assert "\n" not in str(error.value)


def _step(detector: nn.Module, optimizer: torch.optim.Optimizer, batch: list) -> float:
    images, targets, skipped = collate(batch)
    assert skipped == 0
    losses = detector(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def test_training_steps_lower_the_loss(shapes_root: Path) -> None:
    data = _shapes(shapes_root, train=True, flip_prob=0)
    batch = [data[i] for i in range(2)]
    detector = build_detector("se_resnet20_cifar", num_classes=3, widths=WIDTHS, **TINY).train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.02, momentum=0.9)
    losses = [_step(detector, optimizer, batch) for _ in range(15)]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses


def test_a_tiny_detector_overfits_a_few_images(shapes_root: Path) -> None:
    """Six 64 px images, 60 steps of SGD on one core (~12 s): AP50 on those images >= 0.5 (measured: 0.99)."""
    train = _shapes(shapes_root, train=True)  # random flips, through the dataset
    ground_truth = _shapes(shapes_root, train=False)
    indices = range(6)
    ids = [train.image_ids[i] for i in indices]
    detector = build_detector("resnet20_cifar", num_classes=3, widths=WIDTHS, **TINY).train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    start = time.perf_counter()
    losses = [_step(detector, optimizer, [train[i] for i in indices]) for _ in range(60)]
    detector.eval()
    with torch.no_grad():
        outputs = detector([ground_truth[ground_truth.image_ids.index(i)][0] for i in ids])
    metrics = coco_evaluate(dict(zip(ids, outputs, strict=True)), ground_truth, image_ids=ids)
    elapsed = time.perf_counter() - start
    print(f"overfit: AP50 {metrics['AP50']:.3f}, AP {metrics['AP']:.3f} in {elapsed:.1f} s")
    assert metrics["AP50"] >= 0.5, (metrics, losses[::10], elapsed)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
