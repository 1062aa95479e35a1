"""``load_pretrained``: the one way weights come into a network, for every loader of the library; and
``senet.create_model``, which builds through the registry or, given ``pretrained=``, loads through it.

It takes a senet weights file (``senet convert``'s output, or a trained network saved with its record), a run
directory of ``senet train`` (its last checkpoint, or its best epoch), or a registered model name with
published weights (:mod:`senet.weights.published`), and rebuilds exactly the network the weights belong to:
the recorded build options win over the builder's defaults, and the load is strict.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from senet.data import build_data
from senet.data.transforms import Preprocessing
from senet.models import registry
from senet.models.features import apply_backbone_options, pop_backbone_options
from senet.models.layout import LAYOUT_OPTIONS, layout_options
from senet.models.torchvision_models import reset_last_linear
from senet.weights.checkpoint import (
    BEST_NAME,
    load_checkpoint,
    load_weights_file,
    load_weights_into,
    run_build_options,
)
from senet.weights.info import WeightsInfo, read_weights_file
from senet.weights.published import published_weights

_log = logging.getLogger("senet.weights")


def _from_run(path: Path, weights: str) -> tuple[WeightsInfo, dict[str, torch.Tensor]]:
    """A run directory (or one checkpoint's JSON): its model as trained, with the data's preprocessing."""
    checkpoint = load_checkpoint(path)
    meta = checkpoint.meta
    if meta.get("task") == "detection":  # a detector, not a classifier: its own commands rebuild it
        raise ValueError(
            f"{path} is a detection run (senet detect train); use senet detect eval / predict "
            f"--checkpoint {path}"
        )
    config = meta["config"]  # the run's TrainConfig as a dict: read as such, no training code needed
    if "preprocessing" in meta:
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    else:  # a run of an earlier version: its data's evaluation transform, if the data is still there
        spec = build_data(
            config["data"],
            root=config.get("data_root"),
            image_size=config.get("image_size"),
            eval_crop=config.get("eval_crop"),
        )
        preprocessing = spec.preprocessing
    options = run_build_options(meta, preprocessing.in_chans)
    if weights == "best":
        state = load_weights_file(checkpoint.run_dir / BEST_NAME)
    else:
        state = checkpoint.model_state()
    info = WeightsInfo(
        model=meta["model"],
        options=options,
        num_classes=meta["num_classes"],
        preprocessing=preprocessing,
        labels=[str(c) for c in meta["classes"]],
        source={
            "project": "senet",
            "run": str(checkpoint.run_dir),
            "checkpoint": checkpoint.path.name,
            "config": meta["config"],  # the run's data and transforms, for evaluation
        },
    )
    return info, state


def read_pretrained(
    source: str | Path, weights: Literal["last", "best"] = "last", tensors: bool = True
) -> tuple[WeightsInfo, dict[str, torch.Tensor], str]:
    """The record, tensors and a printable origin of ``source`` (see :func:`load_pretrained`); with
    ``tensors=False`` a weights file's header alone is read (a run's checkpoint is read whole)."""
    if weights not in ("last", "best"):
        raise ValueError(f"weights={weights!r}; choose 'last' or 'best'")
    path = Path(source)
    if path.is_dir() or path.suffix == ".json":
        info, state = _from_run(path, weights)
        return info, state, str(path)
    if weights == "best":
        raise ValueError(f"weights='best' needs a run directory; {path} is a weights file")
    if path.exists():
        info, state = read_weights_file(path, tensors)
        return info, state, str(path)
    if any(sep in str(source) for sep in ("/", "\\")) or path.suffix:  # a path, not a model name
        raise FileNotFoundError(
            f"no checkpoint in {path}: there is no run directory or weights file of that name"
        )
    try:
        registry.model_info(str(source))
    except ValueError:
        raise FileNotFoundError(
            f"no checkpoint in {source}: there is no run directory or weights file of that name, nor a model "
            f"(for published weights) among {len(registry.list_models())} in `senet models`"
        ) from None
    cached = published_weights(str(source))  # a model name: its published weights, fetched once
    info, state = read_weights_file(cached, tensors)
    return info, state, str(cached)


def _check_model(expected: str, info: WeightsInfo, origin: str) -> None:
    wanted, held = registry.model_info(expected).name, registry.model_info(info.model).name
    if wanted != held:
        raise ValueError(
            f"{origin} holds {held} weights, not {wanted}'s; load it as senet.load_pretrained({origin!r}) "
            f"or create_model({held!r}, pretrained=...)"
        )


def _same_option(recorded: Any, value: Any) -> bool:
    return recorded == value or (isinstance(value, tuple) and list(value) == recorded)


def _contradiction(origin: str, key: str, recorded: Any, value: Any, implied: str = "") -> ValueError:
    return ValueError(
        f"{origin} holds weights for {key}={recorded!r}{implied}; {key}={value!r} would compute something "
        f"else: leave {key} out"
    )


def _build_options(info: WeightsInfo, options: dict[str, Any], origin: str) -> dict[str, Any]:
    """The file's options, plus the caller's where they do not contradict them.

    Files of earlier versions (and run directories) record only the options that differ from the builder's
    defaults: a layout option they leave out is the default of the recorded model under the recorded options,
    read from that network (built on the meta device), and a caller's value that contradicts it is refused
    as well."""
    merged = dict(info.options)
    for key, value in options.items():
        if key in merged and not _same_option(merged[key], value):
            raise _contradiction(origin, key, merged[key], value)
        merged[key] = value
    implicit = [key for key in options if key in LAYOUT_OPTIONS and key not in info.options]
    if implicit:
        with torch.device("meta"):
            network = registry.create_model(info.model, num_classes=info.num_classes, **info.options)
            built = layout_options(network)
        for key in implicit:
            if key in built and not _same_option(built[key], options[key]):
                default = f" (the default of {info.model}, which the record leaves implicit)"
                raise _contradiction(origin, key, built[key], options[key], default)
    return merged


def pretrained_build_options(source: str | Path, model: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus the build options ``source``'s weights need, for a run of ``model`` that starts from
    them; weights of another model, or contradicting options, are refused."""
    info, _, origin = read_pretrained(source, tensors=False)
    _check_model(model, info, origin)
    return _build_options(info, options, origin)


def load_pretrained(
    source: str | Path,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    weights: Literal["last", "best"] = "last",
    **options: Any,
) -> nn.Module:
    """Build the network that ``source``'s weights belong to and load them strictly.

    Args:
        source: a senet weights file (``senet convert`` output), a run directory of ``senet train`` (or one of
            its ``checkpoint-*.json``), or a registered model name with published weights (downloaded once
            into torch's hub cache; see ``senet.weights.published``).
        model: the model the caller expects (``create_model(name, pretrained=...)`` passes its name): weights
            of another network are refused.
        num_classes: a classifier of another size, freshly initialised (fine-tuning); every other tensor is
            loaded, and a warning names what was re-initialised.
        weights: for a run directory, its ``last`` checkpoint or its ``best`` epoch.
        options: further build options (e.g. ``drop_rate``); one that contradicts the recorded options, which
            the weights need, is refused. The backbone options (``features_only``, ``out_indices``,
            ``frozen_stages``, ``norm``; :mod:`senet.models.features`) apply once the whole network is loaded
            strictly: a backbone drops the classifier's and the unused stages' tensors, nothing else.

    The model comes back in training mode, as ``create_model`` gives it, with ``model.pretrained_info`` (a
    :class:`WeightsInfo`: preprocessing, labels, source) attached.
    """
    backbone = pop_backbone_options(options)
    info, state, origin = read_pretrained(source, weights)
    if model is not None:
        _check_model(model, info, origin)
    with torch.device("meta"):  # no random initialisation of what the weights replace: loading is I/O-bound
        network = registry.create_model(
            info.model, num_classes=info.num_classes, **_build_options(info, options, origin)
        )
    own = network.state_dict()
    state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()}
    load_weights_into(network, state, origin, assign=True)
    left = [name for name, t in (*network.named_parameters(), *network.named_buffers()) if t.is_meta]
    if left:  # a tensor outside the state dict (a non-persistent buffer) would stay unmaterialised
        raise ValueError(f"{info.model} has tensors that no weights file holds: {', '.join(left[:3])}")
    if num_classes is not None and num_classes != info.num_classes and not backbone.get("features_only"):
        if hasattr(network, "reset_classifier"):
            head = network.get_classifier()
            names = [n for n, m in network.named_modules() if m is head]
            network.reset_classifier(num_classes)
        else:  # another project's network (torchvision:NAME): its last Linear
            names = [reset_last_linear(network, num_classes)]
        _log.warning(
            f"{info.model} weights from {origin}: new classifier {names[0] if names else 'head'} "
            f"({info.num_classes} -> {num_classes} classes), randomly initialised; every other tensor loaded"
        )
        info = replace(info, num_classes=num_classes, labels=None)
    if backbone:
        try:
            network = apply_backbone_options(network, **backbone)
        except ValueError as error:
            raise ValueError(f"{info.model}: {error}") from error
    network.pretrained_info = info
    return network


def create_model(
    name: str, num_classes: int | None = None, *, pretrained: bool | str | Path | None = False, **options: Any
) -> nn.Module:
    """Build the registered network ``name`` (or one of its aliases), randomly initialised or ``pretrained``.

    ``num_classes`` defaults to the model's dataset: 1000 (ImageNet), 10 for the CIFAR networks.

    ``options`` are the family's build options, e.g. ``in_chans``, ``drop_rate``, ``stride_in_1x1`` or the
    SE options ``se_reduction``, ``se_squeeze``, ``se_gate``, ``se_bias``, ``se_stages``, ``se_position``,
    ``se_recompute_norm`` (:class:`senet.layers.SEConfig`; docs/ablations.md). An option the family would
    ignore or cannot honour is refused, e.g. a stage it lacks: ``se_stages`` numbers stages from 1, the first
    after the stem (``layer1``, the paper's ``"conv2_x"``, which the ImageNet ResNets also accept).

    Backbone options, every family (:mod:`senet.models.features`, docs/backbones.md): ``features_only=True``
    returns a :class:`~senet.models.features.FeatureNet` whose forward gives the maps of ``out_indices``
    (stage numbers as ``se_stages``'s, 0 the stem's output; default all) as a list, described by its
    ``feature_info``; ``frozen_stages=k`` freezes the stem and stages 1..k (-1: nothing; mmdet's rule);
    ``norm="frozen_bn"`` makes every BatchNorm a ``FrozenBatchNorm2d``.

    ``torchvision:NAME`` is torchvision's classification model NAME, with SE blocks on request
    (``add_se=True``, ``se_reduction``, ``se_where``, ``se_init``: :mod:`senet.models.torchvision_models`).

    ``pretrained``: a weights file (``senet convert``) or run directory holding ``name``'s weights, or True
    for the published weights of ``name``; see :func:`load_pretrained`, which this calls. The weights'
    recorded build options win over the builder's defaults; a ``num_classes`` other than theirs gets a new,
    randomly initialised classifier. ``False`` (or ``None``): randomly initialised, by the registry's builder
    (:func:`senet.models.registry.create_model`).
    """
    if pretrained is False or pretrained is None:
        return registry.create_model(name, num_classes, **options)
    source = name if pretrained is True else pretrained
    return load_pretrained(source, model=name, num_classes=num_classes, **options)
