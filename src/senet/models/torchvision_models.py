"""``torchvision:NAME``: torchvision's classification models in senet's registry, with SE blocks on request.

``senet.create_model("torchvision:NAME", add_se=True, se_reduction=16, se_where="residual", se_init="paper")``
builds ``torchvision.models.get_model(NAME, weights=None)`` and applies :func:`senet.add_se` with those
options; the training engine saves them in the run's config, so resume, evaluation, prediction and loading
rebuild the same network. Importing this module registers the ``torchvision:`` prefix (``senet.models``
imports it); the options ``add_se``, ``se_where`` and ``se_init`` are refused for every other model.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import fx, nn

from senet.models.add_se import Where, add_se
from senet.models.registry import ModelInfo, PaperFigures, PrefixFamily, list_models, register_prefix

PREFIX = "torchvision:"
# Options of torchvision:NAME models alone: refused for our networks, which have their own SE options.
ADD_SE_OPTIONS = ("add_se", "se_where", "se_init")


def torchvision_names() -> list[str]:
    """torchvision's classification models (``torchvision.models.list_models(module=torchvision.models)``)."""
    return torchvision.models.list_models(module=torchvision.models)


def torchvision_model_info(name: str) -> ModelInfo:
    """The registry entry of ``torchvision:NAME`` (``senet.model_info`` calls this): unknown names fail with
    the closest torchvision classification models."""
    short = name[len(PREFIX) :]
    known = torchvision_names()
    if short not in known:
        close = difflib.get_close_matches(short, known, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(PREFIX + c for c in close)}" if close else "see torchvision.models"
        raise ValueError(f"unknown model {name!r}: torchvision has no classification model {short!r}; {hint}")
    return ModelInfo(
        name=name,
        family="torchvision",
        description=f"torchvision.models.{short} (weights=None), optionally with SE blocks (senet.add_se)",
        paper=PaperFigures(source="torchvision"),
        aliases=(),
        num_classes=1000,
        builder=functools.partial(build_torchvision, short),
    )


def build_torchvision(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    add_se: bool = False,
    se_reduction: int | None = None,
    se_where: str | Sequence[str] | None = None,
    se_init: str | None = None,
    **options: Any,
) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=..., **options)`` randomly initialised,
    its first convolution adapted to ``in_chans`` (the RGB filters summed, or repeated and scaled, as timm's
    ``adapt_input_conv``), and with ``add_se`` SE blocks inserted by :func:`add_se` (``se_reduction`` 16,
    ``se_where`` ``"residual"``, ``se_init`` ``"paper"`` unless given)."""
    # Messages start with what was wrong: create_model prefixes the model's name.
    if not isinstance(add_se, bool):
        raise ValueError(f"add_se={add_se!r}; use True or False")
    given = {"se_reduction": se_reduction, "se_where": se_where, "se_init": se_init}
    stray = [key for key, value in given.items() if value is not None]
    if stray and not add_se:
        raise ValueError(f"{', '.join(stray)} given without add_se=True: add it, or leave them out")
    if "weights" in options:
        raise ValueError(
            "weights= is not an option: it is built randomly initialised (weights=None); load torchvision's "
            "weights with model.load_state_dict(state_dict, strict=False) (add_se keeps their keys)"
        )
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans={in_chans!r}; use an integer >= 1")
    # An unknown keyword is a TypeError, which create_model words as "has no option ...".
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    if in_chans != 3:
        _adapt_first_conv(model, in_chans)
    if not add_se:
        return model
    where = se_where if se_where is not None else "residual"
    return _with_se(model, 16 if se_reduction is None else se_reduction, where, se_init or "paper")


def _with_se(model: nn.Module, reduction: int, where: Where, init: str) -> fx.GraphModule:
    # build_torchvision's argument add_se hides the function; the fresh model needs no copy
    return add_se(model, reduction, where, init, copy_model=False)


def _adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Replace the first ``Conv2d`` (3 input channels) by one taking ``in_chans``: for 1 channel its RGB
    filters summed; for more, repeated and scaled by 3 / in_chans (timm's ``adapt_input_conv``)."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(
            f"in_chans={in_chans}, but the first convolution is not a plain 3-channel Conv2d to adapt; use "
            "3-channel inputs"
        )
    weight = conv.weight.detach()
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_chans // 3)
        adapted = weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / in_chans)
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(adapted)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def reset_last_linear(model: nn.Module, num_classes: int) -> str:
    """Replace the last ``nn.Linear`` of another project's classifier (torchvision's ``fc``,
    ``classifier.6``...) by a fresh one with ``num_classes`` outputs, as our networks' ``reset_classifier``;
    returns its name."""
    name, head = next(
        ((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), ("", None)
    )
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no Linear classifier to replace for {num_classes} classes; train it "
            "with the class count of its weights"
        )
    new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None, device=head.weight.device)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new.to(head.weight.dtype))
    return name


def refuse_add_se_options(info: ModelInfo, options: dict[str, Any]) -> None:
    """``create_model`` of one of our networks: ``add_se`` and its options are for ``torchvision:NAME``."""
    given = [key for key in ADD_SE_OPTIONS if key in options]
    if not given:
        return
    name = info.name
    if name.startswith("se"):  # se_resnet50, seresnet50, senet154...
        fix = f"{name} has SE blocks already (its se_* options set them, e.g. se_reduction)"
    elif f"se_{name}" in list_models():
        fix = f"use its SE twin se_{name}, built by the same code"
    else:
        fix = f"use senet.add_se(create_model({name!r}))"
    raise ValueError(f"{name} got {', '.join(given)}, options of torchvision:NAME models; {fix}")


register_prefix(PrefixFamily(PREFIX, torchvision_model_info, refuse_add_se_options))
