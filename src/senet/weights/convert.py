"""Weights of other projects -> senet weights files that rebuild the network the source computes.

Each supported source model is one line of :data:`SOURCES`: our registered model, the build options under
which it computes exactly what the source computes (stride position, stem pooling, group widths), how the
source's key names map to ours, and the source's test preprocessing (timm's per tag: :data:`TIMM_TAGS`, or a
Hugging Face snapshot's ``config.json``). The file records every layout option, the builder's defaults
included. Conversion refuses rather than guesses: anything that does not map completely (a tensor without a
place, a place without a tensor, a shape that differs, a dtype of another kind) is refused with every such
tensor named, and a source in the other SENet key layout in one line naming the right conversion.

Sources (``senet convert --from PROJECT``):

* ``timm``: seresnet50/101/152, seresnext50/101_32x4d (torchvision's layout with SE), resnet50/101/152,
  resnext50_32x4d, and the legacy_* SENets (timm's port of pretrained-models: the paper's layout);
* ``pretrainedmodels`` (Cadene's pretrained-models.pytorch): se_resnet50/101/152, se_resnext50/101_32x4d,
  senet154 (the authors' Caffe models, converted);
* ``torchvision``: resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d,
  wide_resnet50_2, wide_resnet101_2, vgg16_bn.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from safetensors.torch import load_file as load_safetensors_file

from senet.data.transforms import EVAL_CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from senet.fileio import first_line
from senet.models.layout import layout_options
from senet.models.registry import create_model
from senet.weights.info import WeightsInfo, floor_resize, save_weights_file

PROJECTS = ("timm", "pretrainedmodels", "torchvision")

_log = logging.getLogger("senet.weights")

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


def _crop_pct_preprocessing(
    input_size: int = 224,
    crop_pct: float = EVAL_CROP_FRACTION,
    interpolation: str = "bilinear",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Preprocessing:
    """A source's test preprocessing stated as a crop fraction, resized as timm and pretrained-models resize:
    the shorter side to ``floor(input_size / crop_pct)``."""
    resize = floor_resize(input_size, crop_pct)
    return Preprocessing(tuple(mean), tuple(std), input_size, crop_pct, interpolation, resize)


@dataclass(frozen=True)
class SourceModel:
    """One convertible model of another project (see the module doc). ``options``: the build options that
    differ from our builder's defaults (the file records every layout option, these and the defaults);
    ``cadene``: the source has pretrained-models' key layout (``layer0``, ``se_module``, ``last_linear``)."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    keys: KeyMap = _same
    preprocessing: Preprocessing = field(default_factory=_crop_pct_preprocessing)
    cadene: bool = False


# torchvision's layout: stride in the 3x3 conv, padded stem max-pool (our builders default to the paper's).
_TV_BOTTLENECK = dict(stride_in_1x1=False, stem_pool="torchvision")
_TV_POOL = dict(stem_pool="torchvision")


def _legacy_timm_name(cadene_name: str) -> str:
    """timm's name of its port of pretrained-models' ``cadene_name``: se_resnet50 -> legacy_seresnet50."""
    return "legacy_" + cadene_name.replace("se_res", "seres")


# Cadene's names are ours: the same networks (the authors' Caffe models, in the paper's layout). Cadene's
# TransformImage resizes to floor(224 / 0.875) = 256 (bilinear) and crops 224.
_CADENE_SENETS = {
    name: SourceModel(
        name, keys=_cadene_keys(_CADENE_DEEP_STEM if name == "senet154" else _CADENE_STEM), cadene=True
    )
    for name in (
        "se_resnet50",
        "se_resnet101",
        "se_resnet152",
        "se_resnext50_32x4d",
        "se_resnext101_32x4d",
        "senet154",
    )
}

# timm 1.0.31's pretrained configurations (``timm.get_pretrained_cfg("model.tag")``) of the models senet
# converts, tag -> (input size, crop_pct, interpolation); each has ImageNet's mean and std, a centre crop and
# 1000 classes (timm's headless ``resnet50.bamboo`` is left out). The first tag is timm's default for the
# model. tests/peers/test_timm.py checks every line against timm's configuration and timm's own transform.
_RSB = (224, 0.95, "bicubic")  # "ResNet strikes back" A1/A2/B/C/D recipes
_RSB_A3 = (160, 0.95, "bicubic")
_TIMM_875 = (224, 0.875, "bicubic")
_TV = (224, 0.875, "bilinear")  # torchvision's own weights (V1), and pretrained-models' port
_TV2 = (176, 0.875, "bilinear")  # torchvision's V2 recipe, as timm tests it
TIMM_TAGS: dict[str, dict[str, tuple[int, float, str]]] = {
    "seresnet50": {"a1_in1k": _RSB, "a2_in1k": _RSB, "a3_in1k": _RSB_A3, "ra2_in1k": _TIMM_875},
    "seresnet101": {"untrained": _TIMM_875},
    "seresnet152": {"untrained": _TIMM_875},
    "seresnext50_32x4d": {"racm_in1k": _TIMM_875, "gluon_in1k": _TIMM_875},
    "seresnext101_32x4d": {"gluon_in1k": _TIMM_875, "untrained": _TIMM_875},
    "resnet50": {
        "a1_in1k": _RSB,
        "a1h_in1k": (176, 0.9, "bicubic"),
        "a2_in1k": _RSB,
        "a3_in1k": _RSB_A3,
        **dict.fromkeys(("b1k_in1k", "b2k_in1k", "c1_in1k", "c2_in1k", "d_in1k"), _RSB),
        **dict.fromkeys(("ram_in1k", "am_in1k", "ra_in1k", "bt_in1k"), _TIMM_875),
        "tv_in1k": _TV,
        "tv2_in1k": _TV2,
        "fb_ssl_yfcc100m_ft_in1k": _TV,
        "fb_swsl_ig1b_ft_in1k": _TV,
        "gluon_in1k": _TIMM_875,
    },
    **{
        name: {
            "a1h_in1k": _RSB,
            "a1_in1k": _RSB,
            "a2_in1k": _RSB,
            "a3_in1k": _RSB_A3,
            "tv_in1k": _TV,
            "tv2_in1k": _TV2,
            "gluon_in1k": _TIMM_875,
        }
        for name in ("resnet101", "resnet152")
    },
    "resnext50_32x4d": {
        "a1h_in1k": _RSB,
        "a1_in1k": _RSB,
        "a2_in1k": _RSB,
        "a3_in1k": _RSB_A3,
        "ra_in1k": _TIMM_875,
        "tv_in1k": _TV,
        "tv2_in1k": _TV2,
        "fb_ssl_yfcc100m_ft_in1k": _TV,
        "fb_swsl_ig1b_ft_in1k": _TV,
        "gluon_in1k": _TIMM_875,
    },
    **{_legacy_timm_name(name): {"in1k": _TV} for name in _CADENE_SENETS},
}


def _timm_entry(model: str, options: dict[str, Any] | None = None) -> SourceModel:
    default_tag = next(iter(TIMM_TAGS[model]))
    return SourceModel(
        model, options or {}, preprocessing=_crop_pct_preprocessing(*TIMM_TAGS[model][default_tag])
    )


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
    # Preprocessing: each model's default pretrained tag in timm (a tag given with the name wins).
    "timm": {
        **{
            name: _timm_entry(name)
            for name in (
                "seresnet50",
                "seresnet101",
                "seresnet152",
                "seresnext50_32x4d",
                "seresnext101_32x4d",
            )
        },
        **{name: _timm_entry(name, _TV_BOTTLENECK) for name in ("resnet50", "resnet101", "resnet152")},
        "resnext50_32x4d": _timm_entry("resnext50_32x4d", _TV_POOL),
        # timm's legacy_* port of pretrained-models' SENets: the same weights under the same keys
        **{_legacy_timm_name(name): entry for name, entry in _CADENE_SENETS.items()},
    },
    "pretrainedmodels": _CADENE_SENETS,
}

# The same networks' weights in the other key layout: pretrained-models' SENet <-> timm's seresnet*, which
# senet converts as another network (torchvision's layout with SE); SENet-154 has no such twin.
_TIMM_TWIN = {
    "se_resnet50": "seresnet50",
    "se_resnet101": "seresnet101",
    "se_resnet152": "seresnet152",
    "se_resnext50_32x4d": "seresnext50_32x4d",
    "se_resnext101_32x4d": "seresnext101_32x4d",
}
_CADENE_TWIN = {timm: cadene for cadene, timm in _TIMM_TWIN.items()}


def _timm_preprocessing(base: str, tag: str) -> Preprocessing:
    """timm's test preprocessing of ``base.tag``; a tag timm does not have for ``base`` is refused with the
    closest ones."""
    tags = TIMM_TAGS[base]
    if tag not in tags:
        close = difflib.get_close_matches(tag, list(tags), n=3, cutoff=0.4)
        hint = f"closest: {', '.join(close)}; " if close else ""
        raise ValueError(
            f"timm has no pretrained tag {tag!r} for {base} ({hint}its tags: {', '.join(tags)}); give one of "
            "them, or leave the tag out for timm's default"
        )
    return _crop_pct_preprocessing(*tags[tag])


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
    return entry, _timm_preprocessing(base, tag) if tag else entry.preprocessing


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
        first = first_line(error)
        raise ValueError(
            f"{path} cannot be read as weights ({first[:200]}); only plain tensor files are read "
            "(safetensors, or torch.save of a state dict, loaded with weights_only=True: nothing in the file "
            "is executed)"
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


def _check_key_layout(project: str, name: str, entry: SourceModel, keys: list[str]) -> None:
    """Refuse a source in the other key layout: pretrained-models' SENets (and timm's legacy_* port) have
    ``layer0`` / ``se_module`` / ``last_linear`` keys, every other source ``conv1`` / ``se`` / ``fc``. The two
    SE-ResNet-50s have the same tensor names once renamed, and the same shapes, but other layouts (stride
    position, stem pooling): weights of one converted as the other would load and compute something else."""
    cadene = [k for k in keys if k.startswith(("layer0.", "last_linear.")) or ".se_module." in k]
    others = [k for k in keys if k.startswith(("conv1.", "bn1.", "fc.")) or ".se." in k]
    if entry.cadene and (others or not cadene):
        layout = (
            f"{project} {name} weights have pretrained-models' SENet keys (layer0 / se_module / last_linear)"
        )
        if not others:
            raise ValueError(f"{layout}; none of these {len(keys)} keys is one: they are not {name} weights")
        twin = _TIMM_TWIN.get(entry.model)
        fix = f"convert them with --from timm --model {twin}" if twin else "senet converts no such network"
        example = next((k for k in others if ".se." in k), others[0])
        raise ValueError(
            f"{layout}; these have torchvision's layout with SE, as timm's seresnet* (e.g. {example}): {fix}"
        )
    if not entry.cadene and cadene:
        twin = _CADENE_TWIN.get(entry.model)
        fix = (
            f"--from pretrainedmodels --model {twin} (or --from timm --model {_legacy_timm_name(twin)})"
            if twin
            else f"--from pretrainedmodels and their model name ({', '.join(_CADENE_SENETS)})"
        )
        raise ValueError(
            f"these weights have pretrained-models' SENet keys (e.g. {cadene[0]}), not the layout of "
            f"{project} {name}: convert them with {fix}"
        )


def _dtype_kind(tensor: torch.Tensor) -> str:
    if tensor.is_floating_point():
        return "floating"
    return "other" if tensor.is_complex() or tensor.dtype == torch.bool else "integer"


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


class ConvertedState(NamedTuple):
    """A source state dict in our key names, with what rebuilds the network it belongs to."""

    state: dict[str, torch.Tensor]
    entry: SourceModel
    num_classes: int
    options: dict[str, Any]  # every layout option, resolved as our builder resolves them for the entry


def convert_state(project: str, name: str, state: dict[str, torch.Tensor]) -> ConvertedState:
    """Rename ``state`` (``project``'s ``name``) into our key names, checked against the network it needs.

    Refuses, naming every tensor, a source that does not map completely: a tensor without a place, a place
    without a tensor, a shape that differs (an SE FC stored as a Linear, (out, in), fills our 1x1 conv of
    shape (out, in, 1, 1); nothing else is reshaped), a dtype that differs in kind (float weights, integer
    counters); and a source in the other key layout (:func:`_check_key_layout`). BatchNorm's
    ``num_batches_tracked`` counters, which old files lack and which take no part in evaluation, are
    filled with 0 where missing.
    """
    entry, _ = source_model(project, name)
    _check_key_layout(project, name, entry, list(state))
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        renamed[entry.keys(key)] = tensor
    num_classes = _head_classes(entry.model, renamed)
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        network = create_model(entry.model, num_classes=num_classes, **entry.options)
    expected = network.state_dict()
    converted, shapes, dtypes = {}, [], []
    for key, target in expected.items():
        tensor = renamed.get(key)
        if tensor is None and key.endswith("num_batches_tracked"):
            tensor = torch.zeros((), dtype=torch.long)
        if tensor is None:
            continue
        if tensor.dim() == 2 and target.shape == (*tensor.shape, 1, 1):
            tensor = tensor.reshape(target.shape)  # an SE FC stored as a Linear where we have a 1x1 conv
        if tensor.shape != target.shape:
            shapes.append(f"{key} {tuple(tensor.shape)} vs ours {tuple(target.shape)}")
        if _dtype_kind(tensor) != _dtype_kind(target):
            dtypes.append(f"{key} {_dtype_name(tensor)} vs ours {_dtype_name(target)}")
        converted[key] = tensor
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in renamed if k not in expected]
    problems = [
        _listing(kind, items)
        for kind, items in (
            ("tensors our network needs that the source lacks", missing),
            ("source tensors without a place in our network", unexpected),
            ("shapes that differ", shapes),
            ("dtypes of another kind (floating-point weights, integer counters)", dtypes),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"{project} {name} does not map completely onto our {entry.model}: {'; '.join(problems)}"
        )
    return ConvertedState(converted, entry, num_classes, {**layout_options(network), **entry.options})


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in the standard (sorted synset) order, as torchvision publishes them."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_preprocessing(name: str, file_name: str) -> Preprocessing:
    """torchvision's own record of the transform of the weights published under ``file_name``; for another
    file name, that of ``name``'s IMAGENET1K_V1 weights, with a warning that says so."""
    from torchvision.models import get_model_weights

    published = {Path(weights.url).name: weights for weights in get_model_weights(name)}
    weights = published.get(file_name)
    if weights is None:
        weights = get_model_weights(name)["IMAGENET1K_V1"]
    transform = weights.transforms()
    preprocessing = Preprocessing(
        tuple(transform.mean),
        tuple(transform.std),
        transform.crop_size[0],
        interpolation=transform.interpolation.value,
        resize=transform.resize_size[0],
    )
    if file_name not in published:
        _log.warning(
            f"{file_name} is not the name of a torchvision {name} file ({', '.join(published)}): recording "
            f"the preprocessing of {weights}: resize {preprocessing.resize}, "
            f"crop {preprocessing.input_size}, {preprocessing.interpolation}; "
            "give --input-size / --crop-fraction / --interpolation if these weights were trained otherwise"
        )
    return preprocessing


# A Hugging Face snapshot of a timm model: the weights, and timm's config.json (its pretrained_cfg)
# beside them.
_SNAPSHOT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_SNAPSHOT_CONFIG = "config.json"


def _snapshot_files(source: Path) -> tuple[Path, Path | None]:
    """The weights file in ``source`` (a file, or a Hugging Face snapshot folder) and timm's config.json that
    describes them, if there is one: in the folder, or beside a file of a snapshot's weights name."""
    if source.is_dir():
        weights = next((source / n for n in _SNAPSHOT_WEIGHTS if (source / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(
                f"{source} is a folder without {' or '.join(_SNAPSHOT_WEIGHTS)}: give the weights file, or a "
                "Hugging Face snapshot folder of a timm model"
            )
    else:
        weights = source
    config = weights.parent / _SNAPSHOT_CONFIG
    return weights, config if weights.name in _SNAPSHOT_WEIGHTS and config.is_file() else None


def _timm_config_preprocessing(path: Path, model: str) -> tuple[Preprocessing, str | None]:
    """The test preprocessing and pretrained tag that timm's ``config.json`` (a Hugging Face snapshot's)
    records for ``model``'s weights, with timm's defaults where a field is absent (as
    ``timm.data.resolve_data_config`` fills them); every problem is one line naming the file."""
    base, _, tag = model.partition(".")
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, not an object")
        cfg = config.get("pretrained_cfg", config)  # timm's earliest exports hold one flat object
        architecture = config.get("architecture", cfg.get("architecture"))
        if architecture != base:
            raise ValueError(f"it describes timm's {architecture}, not {base}: give --model {architecture}")
        recorded_tag = cfg.get("tag")
        if tag and recorded_tag and tag != recorded_tag:
            raise ValueError(f"it describes the tag {recorded_tag!r}, not {tag!r}: leave the tag out")
        crop_mode = cfg.get("crop_mode") or "center"
        if crop_mode != "center":
            raise ValueError(f"timm's crop_mode {crop_mode!r}; senet evaluates a centre crop only")
        channels, height, width = cfg.get("input_size") or (3, 224, 224)
        if height != width:
            raise ValueError(f"input_size {height} x {width}; senet evaluates square crops only")
        preprocessing = _crop_pct_preprocessing(
            height,
            cfg.get("crop_pct") or EVAL_CROP_FRACTION,
            cfg.get("interpolation") or "bicubic",
            tuple(cfg.get("mean") or IMAGENET_MEAN),
            tuple(cfg.get("std") or IMAGENET_STD),
        )
        if preprocessing.in_chans != channels:
            raise ValueError(f"input_size has {channels} channels and mean {preprocessing.mean}")
    except (OSError, ValueError, TypeError, AttributeError) as error:  # JSONDecodeError is a ValueError
        first = first_line(error)
        raise ValueError(f"{path}: timm's configuration cannot be used ({first})") from None
    return preprocessing, recorded_tag or tag or None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _with_overrides(known: Preprocessing, overrides: dict[str, Any]) -> Preprocessing:
    """``known`` with the caller's fields; a new crop or crop fraction without a resize resizes as timm and
    pretrained-models do (``floor(input_size / crop_fraction)``)."""
    fields = {**known.as_dict(), **overrides}
    if "resize" not in overrides and {"input_size", "crop_fraction"} & set(overrides):
        fields["resize"] = floor_resize(fields["input_size"], fields["crop_fraction"])
    return Preprocessing.from_dict(fields)


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
    """Convert ``project``'s ``name`` weights in ``source`` into a senet weights file ``out`` (safetensors
    with every layout option, the preprocessing and labels in its metadata).

    ``source``: a weights file, or (timm) a Hugging Face snapshot folder, whose ``config.json`` gives timm's
    preprocessing of those weights. ``preprocessing`` overrides fields of the source's known preprocessing
    (e.g. ``{"crop_fraction": 0.95}``); ``labels`` replaces ImageNet's; ``sha256``: the source's digest where
    the caller has computed it already."""
    source = Path(source)
    _, known = source_model(project, name)  # an unsupported name fails before the file is read
    if source.is_dir() and project != "timm":
        raise ValueError(f"{source} is a folder; {project} weights are converted from their file")
    weights, config = _snapshot_files(source) if source.exists() else (source, None)
    model_name = name
    if project == "timm" and config is not None:  # read first: it may name another network
        known, tag = _timm_config_preprocessing(config, name)
        model_name = f"{name.partition('.')[0]}.{tag}" if tag else name
    converted = convert_state(project, name, read_source_file(weights))
    if project == "torchvision":
        known = torchvision_preprocessing(name, weights.name)
    if preprocessing:
        known = _with_overrides(known, preprocessing)
    num_classes = converted.num_classes
    if labels is None and num_classes == 1000:
        labels = imagenet_labels()
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a classifier of {num_classes} classes")
    info = WeightsInfo(
        model=converted.entry.model,
        options=converted.options,
        num_classes=num_classes,
        preprocessing=known,
        labels=labels,
        source={
            "project": project,
            "model": model_name,
            "file": weights.name,
            "sha256": sha256 or file_sha256(weights),
        },
    )
    save_weights_file(out, converted.state, info)
    return info
