"""Model registry: every network is a small builder function registered by name with the paper's figures.

Builders take keyword options only and return an ``nn.Module``; ``create_model`` adds ``num_classes``.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class PaperFigures:
    """Reference figures for one network: the SE paper's tables (Hu et al., TPAMI), the authors' released
    prototxts, or the original paper of a plain network; ``source`` names which.

    ``params_m`` in millions, ``gflops`` in GFLOPs as the paper counts them (multiply-adds, one image at
    ``input_size``), errors in percent (single centre crop). ``None`` where no source gives a figure.
    """

    params_m: float | None = None
    gflops: float | None = None
    top1_err: float | None = None
    top5_err: float | None = None
    input_size: int = 224
    source: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one model."""

    name: str
    family: str
    description: str
    paper: PaperFigures
    aliases: tuple[str, ...]
    num_classes: int
    builder: Builder


_MODELS: dict[str, ModelInfo] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    paper: PaperFigures | None = None, aliases: tuple[str, ...] = (), num_classes: int = 1000
) -> Callable[[Builder], Builder]:
    """Register a builder under its function name (and ``aliases``, other projects' spellings).

    ``num_classes`` is the classifier size when the caller gives none (10 for the CIFAR networks).
    """

    def register(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _MODELS or name in _ALIASES:
            raise ValueError(f"model {name!r} is registered twice")
        doc = inspect.getdoc(builder) or ""
        _MODELS[name] = ModelInfo(
            name=name,
            family=builder.__module__.rsplit(".", 1)[-1],
            description=doc.splitlines()[0] if doc else "",
            paper=paper or PaperFigures(),
            aliases=tuple(aliases),
            num_classes=num_classes,
            builder=builder,
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return register


def _resolve(name: str) -> str:
    if name in _MODELS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = list(_MODELS) + list(_ALIASES)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "see `senet models` for the list"
    raise ValueError(f"unknown model {name!r}; {hint}")


def create_model(
    name: str, num_classes: int | None = None, *, pretrained: bool | str | Path = False, **options
) -> nn.Module:
    """Build the registered network ``name`` (or one of its aliases), randomly initialised or ``pretrained``.

    ``num_classes`` defaults to the model's dataset: 1000 (ImageNet), 10 for the CIFAR networks.

    ``options`` are the family's build options, e.g. ``in_chans``, ``drop_rate``, ``stride_in_1x1`` or the
    SE options ``se_reduction``, ``se_squeeze``, ``se_gate``, ``se_bias``, ``se_stages``, ``se_position``,
    ``se_recompute_norm`` (:class:`senet.layers.SEConfig`; docs/ablations.md). An option the family would
    ignore or cannot honour is refused, e.g. a stage it lacks: ``se_stages`` numbers stages from 1, the first
    after the stem (``layer1``, the paper's ``"conv2_x"``, which the ImageNet ResNets also accept).

    Backbone options, every family (:mod:`senet.models.features`, docs/backbones.md): ``features_only=True``
    returns a :class:`~senet.models.features.FeatureNet` whose forward gives the maps of ``out_indices`` (stage
    numbers as ``se_stages``'s, 0 the stem's output; default all) as a list, described by its ``feature_info``;
    ``frozen_stages=k`` freezes the stem and stages 1..k (-1: nothing; mmdet's rule); ``norm="frozen_bn"``
    makes every BatchNorm a ``FrozenBatchNorm2d``.

    ``pretrained``: a weights file (``senet convert``) or run directory holding ``name``'s weights, or True for
    the published weights of ``name``; see :func:`senet.load_pretrained`, which this calls. The weights'
    recorded build options win over the builder's defaults; a ``num_classes`` other than theirs gets a new,
    randomly initialised classifier.
    """
    if pretrained is not False:
        from senet.weights.pretrained import load_pretrained

        source = name if pretrained is True else pretrained
        return load_pretrained(source, model=name, num_classes=num_classes, **options)
    info = model_info(name)
    from senet.models.add_se import refuse_add_se_options

    refuse_add_se_options(info.name, info.family, options)  # add_se is for torchvision:NAME models
    from senet.models.features import apply_backbone_options, pop_backbone_options

    backbone = pop_backbone_options(options)
    try:
        model = info.builder(num_classes=info.num_classes if num_classes is None else num_classes, **options)
        return apply_backbone_options(model, **backbone) if backbone else model
    except TypeError as error:
        # An unknown keyword surfaces from deep inside the family class: say it in the user's terms.
        message = str(error)
        if "unexpected keyword argument" in message:
            bad = message.split("argument", 1)[1].strip()
            raise ValueError(
                f"{info.name} has no option {bad}; see senet.model_info({info.name!r})"
            ) from None
        if "got multiple values for" in message:  # e.g. depths=: the builder fixes it
            bad = message.split("argument", 1)[1].strip()
            raise ValueError(f"{info.name} fixes {bad} itself; build the family class to change it") from None
        raise
    except ValueError as error:
        # Families name themselves ("ResNet got ..."); the user asked for a model: name it too.
        raise ValueError(f"{info.name}: {error}") from error


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"se_*"``), in registration order."""
    return [name for name in _MODELS if fnmatch.fnmatchcase(name, pattern)]


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name`` (aliases resolve); unknown names fail with the closest known ones.

    ``torchvision:NAME`` is torchvision's classification model NAME (weights=None), with SE blocks on request
    (``add_se=True``, ``se_reduction``, ``se_where``, ``se_init``: :mod:`senet.models.add_se`)."""
    if name.startswith("torchvision:"):
        from senet.models.add_se import torchvision_model_info

        return torchvision_model_info(name)
    return _MODELS[_resolve(name)]
