"""Weights of other projects -> senet weights files that rebuild the network the source computes.

Each supported source model is one line of :data:`SOURCES`: our registered model, the build options under which
it computes exactly what the source computes (stride position, stem pooling, group widths), how the source's
key names map to ours, and the source's test preprocessing. Anything that does not map completely (a tensor
without a place, a place without a tensor, a shape that differs) is refused with every such tensor named.

Sources (``senet convert --from PROJECT``):

* ``timm``: seresnet50/101/152, seresnext50/101_32x4d (torchvision's layout with SE), resnet50/101/152,
  resnext50_32x4d, and the legacy_* SENets (timm's port of pretrained-models: the paper's layout);
* ``pretrainedmodels`` (Cadene's pretrained-models.pytorch): se_resnet50/101/152, se_resnext50/101_32x4d,
  senet154 (the authors' Caffe models, converted);
* ``torchvision``: resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d,
  wide_resnet50_2, wide_resnet101_2, vgg16_bn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file as load_safetensors_file

from senet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from senet.weights.info import WeightsInfo, save_weights_file

PROJECTS = ("timm", "pretrainedmodels", "torchvision")

KeyMap = Callable[[str], str]


def _same(key: str) -> str:
    return key


# Cadene's SENets (and timm's legacy_* port): a ``layer0`` stem, ``se_module`` and ``last_linear``.
_CADENE_STEM = {"layer0.conv1.": "conv1.", "layer0.bn1.": "bn1."}
# SENet-154's stem is three 3x3 convs; ours is the Sequential conv1 (conv, BN, ReLU, conv, BN, ReLU, conv).
_CADENE_DEEP_STEM = {
    "layer0.conv1.": "conv1.0.",
    "layer0.bn1.": "conv1.1.",
    "layer0.conv2.": "conv1.3.",
    "layer0.bn2.": "conv1.4.",
    "layer0.conv3.": "conv1.6.",
    "layer0.bn3.": "bn1.",
}


def _cadene_keys(stem: dict[str, str]) -> KeyMap:
    def key_map(key: str) -> str:
        for old, new in stem.items():
            if key.startswith(old):
                return new + key[len(old) :]
        key = key.replace(".se_module.", ".se.")
        return "fc." + key[len("last_linear.") :] if key.startswith("last_linear.") else key

    return key_map


def _pre(
    input_size: int = 224, crop_fraction: float = 0.875, interpolation: str = "bilinear"
) -> Preprocessing:
    return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, input_size, crop_fraction, interpolation)


@dataclass(frozen=True)
class SourceModel:
    """One convertible model of another project (see the module doc)."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    keys: KeyMap = _same
    preprocessing: Preprocessing = field(default_factory=_pre)


# torchvision's layout: stride in the 3x3 conv, padded stem max-pool (our builders default to the paper's).
_TV_BOTTLENECK = dict(stride_in_1x1=False, stem_pool="torchvision")
_TV_POOL = dict(stem_pool="torchvision")
_BICUBIC_95 = _pre(crop_fraction=0.95, interpolation="bicubic")  # timm's "A1/A2" ResNet strikes back recipes
_BICUBIC = _pre(interpolation="bicubic")

# Cadene's names are ours: the same networks (the authors' Caffe models, in the paper's layout).
_CADENE_SENETS = {
    name: SourceModel(name, keys=_cadene_keys(_CADENE_DEEP_STEM if name == "senet154" else _CADENE_STEM))
    for name in (
        "se_resnet50",
        "se_resnet101",
        "se_resnet152",
        "se_resnext50_32x4d",
        "se_resnext101_32x4d",
        "senet154",
    )
}

SOURCES: dict[str, dict[str, SourceModel]] = {
    "torchvision": {
        "resnet18": SourceModel("resnet18", _TV_POOL),
        "resnet34": SourceModel("resnet34", _TV_POOL),
        "resnet50": SourceModel("resnet50", _TV_BOTTLENECK),
        "resnet101": SourceModel("resnet101", _TV_BOTTLENECK),
        "resnet152": SourceModel("resnet152", _TV_BOTTLENECK),
        "resnext50_32x4d": SourceModel("resnext50_32x4d", _TV_POOL),
        "resnext101_32x8d": SourceModel("resnext101_32x4d", {**_TV_POOL, "base_width": 8}),
        "resnext101_64x4d": SourceModel("resnext101_32x4d", {**_TV_POOL, "groups": 64}),
        "wide_resnet50_2": SourceModel("resnet50", {**_TV_BOTTLENECK, "base_width": 128}),
        "wide_resnet101_2": SourceModel("resnet101", {**_TV_BOTTLENECK, "base_width": 128}),
        "vgg16_bn": SourceModel("vgg16_bn"),
    },
    # Preprocessing: each model's default pretrained tag in timm (a tag given with the name wins: _TIMM_TAGS).
    "timm": {
        "seresnet50": SourceModel("seresnet50", preprocessing=_BICUBIC_95),
        "seresnet101": SourceModel("seresnet101", preprocessing=_BICUBIC),
        "seresnet152": SourceModel("seresnet152", preprocessing=_BICUBIC),
        "seresnext50_32x4d": SourceModel("seresnext50_32x4d", preprocessing=_BICUBIC),
        "seresnext101_32x4d": SourceModel("seresnext101_32x4d", preprocessing=_BICUBIC),
        "resnet50": SourceModel("resnet50", _TV_BOTTLENECK, preprocessing=_BICUBIC_95),
        "resnet101": SourceModel("resnet101", _TV_BOTTLENECK, preprocessing=_BICUBIC_95),
        "resnet152": SourceModel("resnet152", _TV_BOTTLENECK, preprocessing=_BICUBIC_95),
        "resnext50_32x4d": SourceModel("resnext50_32x4d", _TV_POOL, preprocessing=_BICUBIC_95),
        # timm's legacy_* port of pretrained-models' SENets: the same weights under the same keys
        **{"legacy_" + name.replace("se_res", "seres"): entry for name, entry in _CADENE_SENETS.items()},
    },
    "pretrainedmodels": _CADENE_SENETS,
}

# timm's pretrained tags (``resnet50.a1_in1k``) differ in test preprocessing, not in architecture.
_TIMM_TAGS: dict[str, Preprocessing] = {
    "a1_in1k": _BICUBIC_95,
    "a1h_in1k": _BICUBIC_95,
    "a2_in1k": _BICUBIC_95,
    "a3_in1k": _pre(160, 0.95, "bicubic"),
    "ra_in1k": _BICUBIC,
    "ra2_in1k": _BICUBIC,
    "racm_in1k": _BICUBIC,
    "gluon_in1k": _BICUBIC,
    "tv_in1k": _pre(),
    "in1k": _pre(),  # the legacy_* SENets
}


def source_model(project: str, name: str) -> tuple[SourceModel, Preprocessing]:
    """The table entry for ``project``'s model ``name`` (timm names may carry a pretrained tag) and the
    preprocessing of that name/tag; anything else is refused by name, with the supported names."""
    if project not in SOURCES:
        raise ValueError(f"unknown source project {project!r}; choose one of {', '.join(PROJECTS)}")
    base, _, tag = name.partition(".") if project == "timm" else (name, "", "")
    entry = SOURCES[project].get(base)
    if entry is None:
        raise ValueError(
            f"{project} model {base!r} is not one senet converts (another architecture, or not an SE-paper "
            f"network); supported: {', '.join(SOURCES[project])}"
        )
    if tag and tag not in _TIMM_TAGS:
        raise ValueError(
            f"timm tag {tag!r} of {base} has no preprocessing known to senet; leave the tag out and give "
            "--input-size/--crop-fraction/--interpolation as timm's model card states"
        )
    return entry, _TIMM_TAGS[tag] if tag else entry.preprocessing


def read_source_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in another project's file: safetensors, or a .pth/.pt/.bin read with ``weights_only``
    (nothing in it is executed). Training checkpoints that wrap it (``state_dict``, ``model``) are unwrapped,
    and DDP's ``module.`` prefix is dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source weights file {path} is missing")
    try:
        if path.suffix == ".safetensors":
            loaded: Any = load_safetensors_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle / zip / safetensors each raise their own types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} cannot be read as weights ({first[:200]}); only plain tensor files are read (safetensors, or "
            "torch.save of a state dict, loaded with weights_only=True: nothing in the file is executed)"
        ) from None
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module.") :]: v for k, v in loaded.items()}
    return loaded


def _head_classes(model_name: str, state: dict[str, torch.Tensor]) -> int:
    """The source's class count, from its classifier's bias."""
    head = "classifier.6.bias" if model_name.startswith("vgg") else "fc.bias"
    if head not in state:
        raise ValueError(f"the source has no classifier {head!r} (after renaming); it is not a {model_name}")
    return int(state[head].shape[0])


def _listing(kind: str, items: list[str]) -> str:
    return f"{kind} ({len(items)}): {', '.join(items)}"


def convert_state(
    project: str, name: str, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], SourceModel, int]:
    """Rename ``state`` (``project``'s ``name``) into our key names, checked against the network it needs.

    Returns our state dict, the table entry and the class count. Refuses, naming every tensor, a source that
    does not map completely. BatchNorm's ``num_batches_tracked`` counters, which old files lack and which take
    no part in evaluation, are filled with 0 where missing.
    """
    from senet.models.registry import create_model

    entry, _ = source_model(project, name)
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        renamed[entry.keys(key)] = tensor
    num_classes = _head_classes(entry.model, renamed)
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        expected = create_model(entry.model, num_classes=num_classes, **entry.options).state_dict()
    converted, shapes = {}, []
    for key, target in expected.items():
        tensor = renamed.get(key)
        if tensor is None and key.endswith("num_batches_tracked"):
            tensor = torch.zeros((), dtype=torch.long)
        if tensor is None:
            continue
        if tensor.shape != target.shape and tensor.numel() == target.numel() and target.dim() == 4:
            tensor = tensor.reshape(target.shape)  # an SE FC stored as a Linear where we have a 1x1 conv
        if tensor.shape != target.shape:
            shapes.append(f"{key} {tuple(tensor.shape)} vs ours {tuple(target.shape)}")
        converted[key] = tensor
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in renamed if k not in expected]
    problems = [
        _listing(kind, items)
        for kind, items in (
            ("tensors our network needs that the source lacks", missing),
            ("source tensors without a place in our network", unexpected),
            ("shapes that differ", shapes),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"{project} {name} does not map completely onto our {entry.model}: {'; '.join(problems)}"
        )
    return converted, entry, num_classes


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in the standard (sorted synset) order, as torchvision publishes them."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision_preprocessing(name: str, file_name: str) -> Preprocessing | None:
    """torchvision's own record of the transform of the weights published under ``file_name``."""
    from torchvision.models import get_model_weights

    for weights in get_model_weights(name):
        if Path(weights.url).name == file_name:
            transform = weights.transforms()
            resize = transform.resize_size[0]
            crop = transform.crop_size[0]
            return Preprocessing(
                tuple(transform.mean),
                tuple(transform.std),
                crop,
                crop / resize,
                transform.interpolation.value,
            )
    return None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_file(
    project: str,
    name: str,
    source: str | Path,
    out: str | Path,
    *,
    preprocessing: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    sha256: str | None = None,
) -> WeightsInfo:
    """Convert ``project``'s ``name`` weights in ``source`` into a senet weights file ``out`` (safetensors with
    the build options, preprocessing and labels in its metadata). ``preprocessing`` overrides fields of the
    source's known preprocessing (e.g. ``{"crop_fraction": 0.95}``); ``labels`` replaces ImageNet's;
    ``sha256``: the source's digest where the caller has computed it already."""
    source = Path(source)
    _, known = source_model(project, name)  # an unsupported name fails before the file is read
    state, entry, num_classes = convert_state(project, name, read_source_file(source))
    if project == "torchvision":
        known = _torchvision_preprocessing(name, source.name) or known
    if preprocessing:
        known = Preprocessing.from_dict({**known.as_dict(), **preprocessing})
    if labels is None and num_classes == 1000:
        labels = imagenet_labels()
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a classifier of {num_classes} classes")
    info = WeightsInfo(
        model=entry.model,
        options=dict(entry.options),
        num_classes=num_classes,
        preprocessing=known,
        labels=labels,
        source={
            "project": project,
            "model": name,
            "file": source.name,
            "sha256": sha256 or file_sha256(source),
        },
    )
    save_weights_file(out, state, info)
    return info
