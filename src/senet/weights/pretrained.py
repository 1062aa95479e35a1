"""``load_pretrained``: the one way weights come into a network, for every loader of the library.

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

from senet.data.transforms import Preprocessing
from senet.weights.info import WeightsInfo, read_weights_file

_log = logging.getLogger("senet.weights")


def _from_run(path: Path, weights: str) -> tuple[WeightsInfo, dict[str, torch.Tensor]]:
    """A run directory (or one checkpoint's JSON): its model as trained, with the data's preprocessing."""
    from senet.train.checkpoint import BEST_NAME, load_checkpoint, load_weights_file
    from senet.train.config import TrainConfig
    from senet.train.engine import model_build_options

    checkpoint = load_checkpoint(path)
    meta = checkpoint.meta
    if meta.get("task") == "detection":  # a detector, not a classifier: its own commands rebuild it
        raise ValueError(
            f"{path} is a detection run (senet detect train); use senet detect eval / predict --checkpoint {path}"
        )
    config = TrainConfig.from_dict(meta["config"])
    if "preprocessing" in meta:
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    else:  # a run of an earlier version: its data's evaluation transform, if the data is still there
        from senet.data import build_data

        spec = build_data(
            config.data, root=config.data_root, image_size=config.image_size, eval_crop=config.eval_crop
        )
        preprocessing = spec.preprocessing
    options = {**model_build_options(config), "in_chans": meta.get("in_chans", preprocessing.in_chans)}
    if weights == "best":
        state = load_weights_file(checkpoint.run_dir / BEST_NAME)
    else:
        state = checkpoint.model_state()
    info = WeightsInfo(
        model=config.model,
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
    from senet.models.registry import list_models, model_info
    from senet.weights.published import published_weights

    try:
        model_info(str(source))
    except ValueError:
        raise FileNotFoundError(
            f"no checkpoint in {source}: there is no run directory or weights file of that name, nor a model "
            f"(for published weights) among {len(list_models())} in `senet models`"
        ) from None
    cached = published_weights(str(source))  # a model name: its published weights, fetched once
    info, state = read_weights_file(cached, tensors)
    return info, state, str(cached)


def _check_model(expected: str, info: WeightsInfo, origin: str) -> None:
    from senet.models.registry import model_info

    wanted, held = model_info(expected).name, model_info(info.model).name
    if wanted != held:
        raise ValueError(
            f"{origin} holds {held} weights, not {wanted}'s; load it as senet.load_pretrained({origin!r}) "
            f"or create_model({held!r}, pretrained=...)"
        )


# Build options that a state dict cannot show: they change what a network computes, not its tensors' names or
# shapes, so a strict load cannot catch an option that contradicts the weights.
LAYOUT_OPTIONS = ("stride_in_1x1", "stem_pool", "se_squeeze", "se_gate", "se_position")


def layout_options(network: nn.Module) -> dict[str, Any]:
    """The :data:`LAYOUT_OPTIONS` that ``network`` was built with, read from its modules: where a ResNet's
    down-sampling bottlenecks put their stride and how its stem pools, how its SE blocks squeeze, gate and
    sit. Options that the network's family does not take are absent."""
    from senet.models.resnet import Bottleneck, ResNet

    layout: dict[str, Any] = {}
    if isinstance(network, ResNet):
        if isinstance(network.maxpool, nn.MaxPool2d):  # the cifar stem has none
            layout["stem_pool"] = "caffe" if network.maxpool.ceil_mode else "torchvision"
        strided = (
            unit
            for unit in network.modules()
            if isinstance(unit, Bottleneck) and max(unit.conv1.stride + unit.conv2.stride) > 1
        )
        unit = next(strided, None)
        if unit is not None:
            layout["stride_in_1x1"] = unit.conv1.stride[0] > 1
    se = getattr(network, "se_config", None)
    if se is not None:
        layout.update(se_squeeze=se.squeeze, se_gate=se.gate, se_position=se.position)
    return layout


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
    from senet.models.registry import create_model

    merged = dict(info.options)
    for key, value in options.items():
        if key in merged and not _same_option(merged[key], value):
            raise _contradiction(origin, key, merged[key], value)
        merged[key] = value
    implicit = [key for key in options if key in LAYOUT_OPTIONS and key not in info.options]
    if implicit:
        with torch.device("meta"):
            built = layout_options(create_model(info.model, num_classes=info.num_classes, **info.options))
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
    from senet.models.features import apply_backbone_options, pop_backbone_options
    from senet.models.registry import create_model
    from senet.train.checkpoint import load_weights_into

    backbone = pop_backbone_options(options)
    info, state, origin = read_pretrained(source, weights)
    if model is not None:
        _check_model(model, info, origin)
    with torch.device("meta"):  # no random initialisation of what the weights replace: loading is I/O-bound
        network = create_model(
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
            from senet.models.add_se import reset_last_linear

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
