"""Model registry: every network is a small builder function registered by name with the paper's figures.

Builders take keyword options only and return an ``nn.Module``; ``create_model`` adds ``num_classes``. Names
of other projects' models (``torchvision:NAME``) are resolved by the module that registered their prefix
(:func:`register_prefix`). Weights are not this module's: ``senet.create_model(name, pretrained=...)``
(:mod:`senet.weights.pretrained`) loads them, and builds through this registry.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from senet.models.features import apply_backbone_options, pop_backbone_options

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


@dataclass(frozen=True)
class PrefixFamily:
    """Models named ``<prefix>NAME`` that live in another project (``torchvision:resnet50``).

    ``model_info`` resolves one such name (unknown ones fail with the closest); ``check_options`` sees the
    options given to any *other* model, to refuse those only this family takes (``add_se``...)."""

    prefix: str
    model_info: Callable[[str], ModelInfo]
    check_options: Callable[[ModelInfo, dict[str, Any]], None] | None = None


_MODELS: dict[str, ModelInfo] = {}
_ALIASES: dict[str, str] = {}
_PREFIXES: dict[str, PrefixFamily] = {}


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
            # The summary is the first paragraph, which may wrap: its first line alone would cut it short.
            description=" ".join(doc.split("\n\n")[0].split()),
            paper=paper or PaperFigures(),
            aliases=tuple(aliases),
            num_classes=num_classes,
            builder=builder,
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return register


def register_prefix(family: PrefixFamily) -> None:
    """Resolve the names that start with ``family.prefix`` through ``family`` (its module calls this once,
    when imported: ``senet.models`` imports it)."""
    if family.prefix in _PREFIXES:
        raise ValueError(f"model prefix {family.prefix!r} is registered twice")
    _PREFIXES[family.prefix] = family


def _prefix_family(name: str) -> PrefixFamily | None:
    return next((f for prefix, f in _PREFIXES.items() if name.startswith(prefix)), None)


def _resolve(name: str) -> str:
    if name in _MODELS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = list(_MODELS) + list(_ALIASES)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "see `senet models` for the list"
    raise ValueError(f"unknown model {name!r}; {hint}")


def create_model(name: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """Build the registered network ``name`` (or one of its aliases), randomly initialised.

    ``num_classes`` defaults to the model's dataset: 1000 (ImageNet), 10 for the CIFAR networks; ``options``
    are the family's build options and the backbone options (see :func:`senet.create_model`, which also loads
    weights: ``pretrained=`` is its option, refused here rather than ignored).
    """
    pretrained = options.pop("pretrained", False)
    if pretrained is not False and pretrained is not None:
        raise ValueError(
            f"senet.models.create_model builds randomly initialised networks; load weights with "
            f"senet.create_model({name!r}, pretrained={pretrained!r})"
        )
    info = model_info(name)
    for family in _PREFIXES.values():
        if family.check_options is not None and not info.name.startswith(family.prefix):
            family.check_options(info, options)
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
    (``add_se=True``, ``se_reduction``, ``se_where``, ``se_init``: :mod:`senet.models.torchvision_models`)."""
    family = _prefix_family(name)
    return family.model_info(name) if family is not None else _MODELS[_resolve(name)]
