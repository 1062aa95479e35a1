"""Other projects' published weight layouts, for testing converters; no module of ``senet`` takes part.

For each source network this file knows the exact state-dict key names and shapes of the source project
(``source_state_dict`` fills them with random, deterministic values that keep a deep net's activations O(1))
and computes the source architecture's eval-mode logits from those keys with ``torch.nn.functional`` ops only
(``reference_forward``). ``test_source_layouts.py`` checks both against the real projects: torchvision always,
timm where it is installed. Pretrained-models (Cadene's ``pretrainedmodels``) is not installed; timm's
``legacy_*`` SENets are its port with the same key names, so they stand in for it.

Sources and names: see ``SOURCE_MODELS``. Written from the architectures' published descriptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

BN_EPS = 1e-5  # torchvision, timm and pretrained-models all use BatchNorm2d's default
BRANCH_END_BN_WEIGHT = (0.05, 0.15)  # see source_state_dict

# --------------------------------------------------------------------------------------------------------
# Data tables: one per source.
# --------------------------------------------------------------------------------------------------------


class ResNetSpec(NamedTuple):
    """torchvision-style ResNet (also timm's ``resnet*``/``seresnet*``): 7x7/2 stem + padded 3/2 max-pool,
    stride in the 3x3 conv, 1x1 projection shortcut, head ``fc``. ``se``: timm's SE after ``bn3``."""

    block: str  # "basic" (two 3x3) or "bottleneck" (1x1, 3x3, 1x1 x4)
    depths: tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64
    se: bool = False  # timm: ``layer{k}.{i}.se.fc1/fc2``, rd = make_divisible(C / 16, 8)


class SENetSpec(NamedTuple):
    """Pretrained-models' ``SENet`` class (timm ``legacy_*``): stem ``layer0``, ceil-mode 3/2 max-pool without
    padding, SE ``se_module`` (rd = C // 16) after ``bn3``, head ``last_linear``."""

    block: str  # "se_resnet" (SEResNetBottleneck), "se_resnext" (SEResNeXtBottleneck), "se" (SEBottleneck)
    depths: tuple[int, int, int, int]


R50, R101, R152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)

TORCHVISION_RESNETS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", R50),
    "resnet101": ResNetSpec("bottleneck", R101),
    "resnet152": ResNetSpec("bottleneck", R152),
    "resnext50_32x4d": ResNetSpec("bottleneck", R50, groups=32, width_per_group=4),
    "resnext101_32x8d": ResNetSpec("bottleneck", R101, groups=32, width_per_group=8),
    "resnext101_64x4d": ResNetSpec("bottleneck", R101, groups=64, width_per_group=4),
    "wide_resnet50_2": ResNetSpec("bottleneck", R50, width_per_group=128),
    "wide_resnet101_2": ResNetSpec("bottleneck", R101, width_per_group=128),
}
# torchvision vgg16_bn: 3x3 pad-1 convs with bias, each followed by BN and ReLU; "M": 2x2/2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M") + (512, 512, 512, "M") * 2

PRETRAINEDMODELS_SENETS: dict[str, SENetSpec] = {
    "se_resnet50": SENetSpec("se_resnet", R50),
    "se_resnet101": SENetSpec("se_resnet", R101),
    "se_resnet152": SENetSpec("se_resnet", R152),
    "se_resnext50_32x4d": SENetSpec("se_resnext", R50),
    "se_resnext101_32x4d": SENetSpec("se_resnext", R101),
    "senet154": SENetSpec("se", R152),
}

TIMM_RESNETS: dict[str, ResNetSpec] = {
    "seresnet50": ResNetSpec("bottleneck", R50, se=True),
    "seresnet101": ResNetSpec("bottleneck", R101, se=True),
    "seresnet152": ResNetSpec("bottleneck", R152, se=True),
    "seresnext50_32x4d": ResNetSpec("bottleneck", R50, groups=32, width_per_group=4, se=True),
    "seresnext101_32x4d": ResNetSpec("bottleneck", R101, groups=32, width_per_group=4, se=True),
    # Same keys and architecture as torchvision's namesakes.
    "resnet50": TORCHVISION_RESNETS["resnet50"],
    "resnet101": TORCHVISION_RESNETS["resnet101"],
    "resnet152": TORCHVISION_RESNETS["resnet152"],
    "resnext50_32x4d": TORCHVISION_RESNETS["resnext50_32x4d"],
}


def legacy_timm_name(pretrainedmodels_name: str) -> str:
    """se_resnet50 -> legacy_seresnet50, se_resnext50_32x4d -> legacy_seresnext50_32x4d,
    senet154 -> legacy_senet154: timm's port of the pretrained-models SENet, with the same keys."""
    return "legacy_" + pretrainedmodels_name.replace("se_res", "seres")


TIMM_LEGACY_SENETS: dict[str, SENetSpec] = {
    legacy_timm_name(name): spec for name, spec in PRETRAINEDMODELS_SENETS.items()
}

SOURCE_MODELS: dict[str, tuple[str, ...]] = {
    "torchvision": (*TORCHVISION_RESNETS, "vgg16_bn"),
    "timm": (*TIMM_RESNETS, *TIMM_LEGACY_SENETS),
    "pretrainedmodels": tuple(PRETRAINEDMODELS_SENETS),
}


# Layouts whose numeric checks run only with pytest --run-slow, because every run checks them another way: the
# deeper or wider twins of a checked layout (same stem, blocks and key names; their widths and group counts
# show in the shapes that every run checks), and VGG-16-BN (torchvision's own network: tests/models/test_vgg.py).
CHECKED_ELSEWHERE: set[tuple[str, str]] = {
    *(("torchvision", n) for n in ("resnet101", "resnet152", "resnext101_64x4d", "wide_resnet101_2")),
    # vgg16_bn keeps torchvision's keys and layout: tests/models/test_vgg.py loads torchvision's own network's.
    *(("torchvision", n) for n in ("resnext101_32x8d", "vgg16_bn")),
    *(("timm", n) for n in ("resnet101", "resnet152", "seresnet101", "seresnet152", "seresnext101_32x4d")),
    *(("timm", n) for n in ("legacy_seresnet101", "legacy_seresnet152", "legacy_seresnext101_32x4d")),
    *(("pretrainedmodels", n) for n in ("se_resnet101", "se_resnet152", "se_resnext101_32x4d")),
}


def _spec(project: str, name: str) -> ResNetSpec | SENetSpec | str:
    if name not in SOURCE_MODELS.get(project, ()):
        raise KeyError(f"unknown source model {project}/{name}; known: {SOURCE_MODELS}")
    if project == "torchvision":
        return "vgg16_bn" if name == "vgg16_bn" else TORCHVISION_RESNETS[name]
    if project == "timm":
        return TIMM_RESNETS.get(name) or TIMM_LEGACY_SENETS[name]
    return PRETRAINEDMODELS_SENETS[name]


# --------------------------------------------------------------------------------------------------------
# Layouts: (key, role, shape) in the source's state_dict order.
# --------------------------------------------------------------------------------------------------------

Entry = tuple[str, str, tuple[int, ...]]


def _conv(name: str, cout: int, cin: int, k: int, groups: int = 1, bias: bool = False) -> Iterator[Entry]:
    yield f"{name}.weight", "conv", (cout, cin // groups, k, k)
    if bias:
        yield f"{name}.bias", "bias", (cout,)


def _bn(name: str, c: int, branch_end: bool = False) -> Iterator[Entry]:
    """BatchNorm2d; ``branch_end``: the last BN of a residual branch (its weights are drawn smaller)."""
    weight = "bn_weight_branch_end" if branch_end else "bn_weight"
    for field, role in (("weight", weight), ("bias", "bias"), ("running_mean", "bn_mean")):
        yield f"{name}.{field}", role, (c,)
    yield f"{name}.running_var", "bn_var", (c,)
    yield f"{name}.num_batches_tracked", "count", ()


def _linear(name: str, cout: int, cin: int) -> Iterator[Entry]:
    yield f"{name}.weight", "linear", (cout, cin)
    yield f"{name}.bias", "bias", (cout,)


def _make_divisible(v: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def _resnet_units(spec: ResNetSpec) -> Iterator[tuple[str, int, int, int, int]]:
    """(unit prefix, stage index 1..4, block index, inplanes, planes) for each block; stride and shortcut
    follow from them."""
    inplanes, expansion = 64, (1 if spec.block == "basic" else 4)
    for stage, depth in enumerate(spec.depths, 1):
        planes = 64 * 2 ** (stage - 1)
        for index in range(depth):
            yield f"layer{stage}.{index}", stage, index, inplanes, planes
            inplanes = planes * expansion


def _resnet_layout(spec: ResNetSpec, num_classes: int) -> Iterator[Entry]:
    yield from _conv("conv1", 64, 3, 7)
    yield from _bn("bn1", 64)
    expansion = 1 if spec.block == "basic" else 4
    for unit, stage, index, inplanes, planes in _resnet_units(spec):
        stride = 2 if stage > 1 and index == 0 else 1
        out = planes * expansion
        if spec.block == "basic":
            yield from _conv(f"{unit}.conv1", planes, inplanes, 3)
            yield from _bn(f"{unit}.bn1", planes)
            yield from _conv(f"{unit}.conv2", planes, planes, 3)
            yield from _bn(f"{unit}.bn2", planes, branch_end=True)
        else:
            width = int(planes * spec.width_per_group / 64) * spec.groups
            yield from _conv(f"{unit}.conv1", width, inplanes, 1)
            yield from _bn(f"{unit}.bn1", width)
            yield from _conv(f"{unit}.conv2", width, width, 3, groups=spec.groups)
            yield from _bn(f"{unit}.bn2", width)
            yield from _conv(f"{unit}.conv3", out, width, 1)
            yield from _bn(f"{unit}.bn3", out, branch_end=True)
        if spec.se:
            rd = _make_divisible(out / 16)
            yield from _conv(f"{unit}.se.fc1", rd, out, 1, bias=True)
            yield from _conv(f"{unit}.se.fc2", out, rd, 1, bias=True)
        if stride != 1 or inplanes != out:
            yield from _conv(f"{unit}.downsample.0", out, inplanes, 1)
            yield from _bn(f"{unit}.downsample.1", out)
    yield from _linear("fc", num_classes, 512 * expansion)


def _senet_block_widths(block: str, inplanes: int, planes: int) -> tuple[int, int, int, int]:
    """(conv1 out, conv2 out, conv3 out, conv2 groups) of pretrained-models' three bottlenecks."""
    if block == "se_resnet":  # SEResNetBottleneck: the stride sits in conv1
        return planes, planes, planes * 4, 1
    if block == "se_resnext":  # SEResNeXtBottleneck: groups 32, base_width 4
        width = planes * 4 // 64 * 32
        return width, width, planes * 4, 32
    return planes * 2, planes * 4, planes * 4, 64  # SEBottleneck (senet154): groups 64


def _senet_units(spec: SENetSpec) -> Iterator[tuple[str, int, int, int, int]]:
    inplanes = 128 if spec.block == "se" else 64
    for stage, depth in enumerate(spec.depths, 1):
        planes = 64 * 2 ** (stage - 1)
        for index in range(depth):
            yield f"layer{stage}.{index}", stage, index, inplanes, planes
            inplanes = planes * 4


def _senet_downsample_kernel(spec: SENetSpec, stage: int) -> int:
    # senet154 projects with 3x3 (padding 1) convs, except in layer1, which uses 1x1 like the others.
    return 3 if spec.block == "se" and stage > 1 else 1


def _senet_layout(spec: SENetSpec, num_classes: int) -> Iterator[Entry]:
    if spec.block == "se":
        yield from _conv("layer0.conv1", 64, 3, 3)
        yield from _bn("layer0.bn1", 64)
        yield from _conv("layer0.conv2", 64, 64, 3)
        yield from _bn("layer0.bn2", 64)
        yield from _conv("layer0.conv3", 128, 64, 3)
        yield from _bn("layer0.bn3", 128)
    else:
        yield from _conv("layer0.conv1", 64, 3, 7)
        yield from _bn("layer0.bn1", 64)
    for unit, stage, index, inplanes, planes in _senet_units(spec):
        c1, c2, c3, groups = _senet_block_widths(spec.block, inplanes, planes)
        yield from _conv(f"{unit}.conv1", c1, inplanes, 1)
        yield from _bn(f"{unit}.bn1", c1)
        yield from _conv(f"{unit}.conv2", c2, c1, 3, groups=groups)
        yield from _bn(f"{unit}.bn2", c2)
        yield from _conv(f"{unit}.conv3", c3, c2, 1)
        yield from _bn(f"{unit}.bn3", c3, branch_end=True)
        yield from _conv(f"{unit}.se_module.fc1", c3 // 16, c3, 1, bias=True)
        yield from _conv(f"{unit}.se_module.fc2", c3, c3 // 16, 1, bias=True)
        stride = 2 if stage > 1 and index == 0 else 1
        if stride != 1 or inplanes != c3:
            yield from _conv(f"{unit}.downsample.0", c3, inplanes, _senet_downsample_kernel(spec, stage))
            yield from _bn(f"{unit}.downsample.1", c3)
    yield from _linear("last_linear", num_classes, 2048)


def _vgg16_bn_layout(num_classes: int) -> Iterator[Entry]:
    index, cin = 0, 3
    for item in VGG16_CFG:
        if item == "M":
            index += 1
            continue
        yield from _conv(f"features.{index}", item, cin, 3, bias=True)
        yield from _bn(f"features.{index + 1}", item)
        index, cin = index + 3, item  # conv, BN, ReLU
    yield from _linear("classifier.0", 4096, 512 * 7 * 7)
    yield from _linear("classifier.3", 4096, 4096)
    yield from _linear("classifier.6", num_classes, 4096)


def source_layout(project: str, name: str, *, num_classes: int = 1000) -> list[Entry]:
    """(key, role, shape) of every state-dict entry of the source network, in the source's order."""
    spec = _spec(project, name)
    if spec == "vgg16_bn":
        return list(_vgg16_bn_layout(num_classes))
    if isinstance(spec, ResNetSpec):
        return list(_resnet_layout(spec, num_classes))
    return list(_senet_layout(spec, num_classes))


def source_state_dict(
    project: str, name: str, *, num_classes: int = 1000, seed: int = 0, dtype: torch.dtype = torch.float64
) -> dict[str, torch.Tensor]:
    """Random values under the source project's exact keys and shapes, BN buffers included.

    Deterministic for a given seed: the weights are drawn in the source's key order, the calibration below
    from a generator of its own; everything is computed in float64 and cast to ``dtype`` at the end, so a
    seed gives the same numbers in every dtype (up to rounding; the calibration's float64 convolutions may
    differ in the last bits between thread counts or machines). The body does not depend on
    ``num_classes``. Convs and linears ~ N(0, 2 / fan_in), biases ~ N(0, 0.05), BN weights ~ U[0.2, 0.6]
    except the last BN of each residual branch (bn2 of a basic block, bn3 of a bottleneck): U[0.05, 0.15]
    (BRANCH_END_BN_WEIGHT). With [0.2, 0.6] there too, the 152-deep nets amplify rounding ~1e4-fold (float32
    and float64 logits differ by 1e-3) and their logits grow to ~50 at 224 pixels; with the smaller branch
    ends float32 stays within ~1e-5 of float64, yet permuting any one tensor, even a late SE bias, still moves
    the logits by > 1e-3. ``num_batches_tracked`` is 0 (a 0-d int64 buffer).

    BN running statistics are calibrated, as in a trained net, rather than drawn blind: one float64 pass of
    ``reference_forward`` over a N(0, 1) (2, 3, 64, 64) input sets each BN's running_mean to its input's
    per-channel mean + N(0, 0.1) standard deviations, and running_var to the input's variance (one value for
    the whole layer) times U[0.5, 1.5] per channel. Blind statistics let the input's signal die out layer by
    layer (the logits then barely depend on the input, and a wrong early layer could still pass a comparison);
    per-channel variances from so small a batch overfit it and make deep stages blow up on any other input.
    Calibrated this way, logits stay O(1) (|logit| < ~4) and input-dependent for N(0, 1) inputs from 32 to
    224 pixels; U[0, 1] inputs, far from the calibration's, give logits up to ~15 on resnet152 at 224.
    """
    generator = torch.Generator().manual_seed(seed)
    # The calibration draws from its own generator, so the body's values do not depend on the head's size.
    calibration = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=generator)))
    f64 = torch.float64

    def draw(role: str, shape: tuple[int, ...]) -> torch.Tensor:
        # Drawn in float32 (three times faster than float64 for 100M+ values), then used in float64.
        if role in ("conv", "linear"):
            fan_in = 1
            for size in shape[1:]:
                fan_in *= size
            return torch.randn(shape, generator=generator).mul_((2.0 / fan_in) ** 0.5).to(f64)
        if role == "bias":
            return torch.randn(shape, generator=generator).mul_(0.05).to(f64)
        if role == "bn_weight_branch_end":
            lo, hi = BRANCH_END_BN_WEIGHT
            return torch.rand(shape, generator=generator).mul_(hi - lo).add_(lo).to(f64)
        if role == "bn_weight":
            return torch.rand(shape, generator=generator).mul_(0.4).add_(0.2).to(f64)
        if role == "bn_mean":
            return torch.zeros(shape, dtype=f64)  # calibrated below
        if role == "bn_var":
            return torch.ones(shape, dtype=f64)  # calibrated below
        raise AssertionError(role)

    state = _Calibrating(calibration)
    for key, role, shape in source_layout(project, name, num_classes=num_classes):
        if role == "count":  # BatchNorm2d's num_batches_tracked: a 0-d int64 buffer
            state[key] = torch.tensor(0, dtype=torch.long)
        else:
            state[key] = draw(role, shape)
    reference_forward(project, name, state, torch.randn(2, 3, 64, 64, generator=calibration, dtype=f64))
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}


class _Calibrating(dict):
    """A state dict under calibration: ``_batch_norm`` sets its running statistics from the batch it sees."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.generator = generator

    def calibrate(self, x: torch.Tensor, name: str) -> None:
        mean = x.mean((0, 2, 3))
        var = (x - mean[:, None, None]).square().mean()  # one variance for the layer: see source_state_dict
        noise = torch.randn(mean.shape, generator=self.generator, dtype=mean.dtype)
        spread = 0.5 + torch.rand(mean.shape, generator=self.generator, dtype=mean.dtype)
        self[f"{name}.running_mean"] = mean + 0.1 * var.sqrt() * noise
        self[f"{name}.running_var"] = var * spread


# --------------------------------------------------------------------------------------------------------
# Functional reference forwards: eval mode, the source's own keys.
# --------------------------------------------------------------------------------------------------------

State = dict[str, torch.Tensor]


def _batch_norm(x: torch.Tensor, sd: State, name: str) -> torch.Tensor:
    if isinstance(sd, _Calibrating):
        sd.calibrate(x, name)
    return F.batch_norm(
        x,
        sd[f"{name}.running_mean"],
        sd[f"{name}.running_var"],
        sd[f"{name}.weight"],
        sd[f"{name}.bias"],
        training=False,
        eps=BN_EPS,
    )


def _conv_bn(x: torch.Tensor, sd: State, conv: str, bn: str, **conv_args) -> torch.Tensor:
    return _batch_norm(F.conv2d(x, sd[f"{conv}.weight"], sd.get(f"{conv}.bias"), **conv_args), sd, bn)


def _squeeze_excite(x: torch.Tensor, sd: State, name: str) -> torch.Tensor:
    """x * sigmoid(fc2(relu(fc1(mean over H, W)))), fc1/fc2 as 1x1 convs with bias."""
    squeezed = x.mean((2, 3), keepdim=True)
    hidden = F.relu(F.conv2d(squeezed, sd[f"{name}.fc1.weight"], sd[f"{name}.fc1.bias"]))
    return x * torch.sigmoid(F.conv2d(hidden, sd[f"{name}.fc2.weight"], sd[f"{name}.fc2.bias"]))


def _torchvision_basic(x: torch.Tensor, sd: State, unit: str, stride: int) -> torch.Tensor:
    out = F.relu(_conv_bn(x, sd, f"{unit}.conv1", f"{unit}.bn1", stride=stride, padding=1))
    out = _conv_bn(out, sd, f"{unit}.conv2", f"{unit}.bn2", padding=1)
    return F.relu(out + _shortcut(x, sd, unit, stride))


def _torchvision_bottleneck(x: torch.Tensor, sd: State, unit: str, stride: int, groups: int, se: str | None):
    """torchvision's Bottleneck (ResNet v1.5: stride in the 3x3); timm adds SE (``se``) after bn3."""
    out = F.relu(_conv_bn(x, sd, f"{unit}.conv1", f"{unit}.bn1"))
    out = F.relu(_conv_bn(out, sd, f"{unit}.conv2", f"{unit}.bn2", stride=stride, padding=1, groups=groups))
    out = _conv_bn(out, sd, f"{unit}.conv3", f"{unit}.bn3")
    if se is not None:
        out = _squeeze_excite(out, sd, se)
    return F.relu(out + _shortcut(x, sd, unit, stride))


def _shortcut(x: torch.Tensor, sd: State, unit: str, stride: int, kernel: int = 1) -> torch.Tensor:
    """Identity where the block has no ``downsample`` (same shape in and out), else ``downsample.0`` (conv,
    no bias, ``kernel`` x ``kernel``, padding kernel // 2) + ``downsample.1`` (BN)."""
    if f"{unit}.downsample.0.weight" not in sd:
        return x
    return _conv_bn(x, sd, f"{unit}.downsample.0", f"{unit}.downsample.1", stride=stride, padding=kernel // 2)


def _senet_bottleneck(x: torch.Tensor, sd: State, unit: str, stride: int, block: str, kernel: int):
    """Pretrained-models' SEResNetBottleneck (stride in conv1), SEResNeXtBottleneck (stride in the grouped
    3x3, groups 32) and SEBottleneck (stride in the grouped 3x3, groups 64)."""
    groups = {"se_resnet": 1, "se_resnext": 32, "se": 64}[block]
    stride1, stride2 = (stride, 1) if block == "se_resnet" else (1, stride)
    out = F.relu(_conv_bn(x, sd, f"{unit}.conv1", f"{unit}.bn1", stride=stride1))
    out = F.relu(_conv_bn(out, sd, f"{unit}.conv2", f"{unit}.bn2", stride=stride2, padding=1, groups=groups))
    out = _squeeze_excite(_conv_bn(out, sd, f"{unit}.conv3", f"{unit}.bn3"), sd, f"{unit}.se_module")
    return F.relu(out + _shortcut(x, sd, unit, stride, kernel))


def _resnet_forward(spec: ResNetSpec, sd: State, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(_conv_bn(x, sd, "conv1", "bn1", stride=2, padding=3))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for unit, stage, index, _, _ in _resnet_units(spec):
        stride = 2 if stage > 1 and index == 0 else 1
        if spec.block == "basic":
            x = _torchvision_basic(x, sd, unit, stride)
        else:
            x = _torchvision_bottleneck(x, sd, unit, stride, spec.groups, f"{unit}.se" if spec.se else None)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def _senet_forward(spec: SENetSpec, sd: State, x: torch.Tensor) -> torch.Tensor:
    if spec.block == "se":
        x = F.relu(_conv_bn(x, sd, "layer0.conv1", "layer0.bn1", stride=2, padding=1))
        x = F.relu(_conv_bn(x, sd, "layer0.conv2", "layer0.bn2", padding=1))
        x = F.relu(_conv_bn(x, sd, "layer0.conv3", "layer0.bn3", padding=1))
    else:
        x = F.relu(_conv_bn(x, sd, "layer0.conv1", "layer0.bn1", stride=2, padding=3))
    x = F.max_pool2d(x, 3, stride=2, padding=0, ceil_mode=True)
    for unit, stage, index, _, _ in _senet_units(spec):
        stride = 2 if stage > 1 and index == 0 else 1
        x = _senet_bottleneck(x, sd, unit, stride, spec.block, _senet_downsample_kernel(spec, stage))
    # Pretrained-models pools with AvgPool2d(7), a global average only at 224x224 input; timm's legacy port
    # (and this reference) pools globally at any size. senet154's Dropout(0.2) is a no-op in eval mode.
    return F.linear(x.mean((2, 3)), sd["last_linear.weight"], sd["last_linear.bias"])


def _vgg16_bn_forward(sd: State, x: torch.Tensor) -> torch.Tensor:
    index = 0
    for item in VGG16_CFG:
        if item == "M":
            x = F.max_pool2d(x, 2, stride=2)
            index += 1
        else:
            x = F.relu(_conv_bn(x, sd, f"features.{index}", f"features.{index + 1}", padding=1))
            index += 3
    x = torch.flatten(F.adaptive_avg_pool2d(x, (7, 7)), 1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))  # Dropout: eval no-op
    x = F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))  # Dropout: eval no-op
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def reference_forward(
    project: str, name: str, state: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Logits of the source architecture in eval mode, functional ops only, from ``state`` (source keys)."""
    spec = _spec(project, name)
    with torch.no_grad():
        if spec == "vgg16_bn":
            return _vgg16_bn_forward(state, x)
        if isinstance(spec, ResNetSpec):
            return _resnet_forward(spec, state, x)
        return _senet_forward(spec, state, x)
