"""Every network as a multi-scale backbone, and the options a detector needs, for every family.

``create_model(name, features_only=True, out_indices=(1, 2, 3, 4))`` returns a :class:`FeatureNet`: its
forward returns the maps of the chosen stages as a list, and ``feature_info`` describes them as timm does
(``{"num_chs", "reduction", "module"}`` per map). Stage numbers are those of ``se_stages``: 0 is the stem's
output (where the family has a stem), 1 the first stage after it. Each family describes its stages once, in
its ``feature_stages()`` (:class:`senet.models.base.FeatureStage`: the modules that compute a stage, its
channels and reduction); the table of every family is docs/backbones.md.

Two more options, for every family, with or without ``features_only``:

* ``frozen_stages=k`` (mmdet's rule): -1 freezes nothing, 0 the stem, k the stem and stages 1..k. Frozen
  parameters stop requiring gradients and the frozen modules stay in evaluation mode through ``train()``
  (their BatchNorms keep their statistics; dropout and Shake-Shake's random mixing are off there).
* ``norm="frozen_bn"``: every BatchNorm becomes torchvision's ``FrozenBatchNorm2d`` (statistics and affine
  parameters fixed buffers, same eps); a state dict of the ``"bn"`` network loads into it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from senet.models.base import FeatureStage, StagedNetwork, check_option, is_int, keep_frozen_in_eval

NORMS: tuple[str, ...] = ("bn", "frozen_bn")
BACKBONE_OPTIONS: tuple[str, ...] = ("features_only", "out_indices", "frozen_stages", "norm")


def pop_backbone_options(options: dict[str, Any]) -> dict[str, Any]:
    """Take the backbone options (:data:`BACKBONE_OPTIONS`) out of a model's build options."""
    return {key: options.pop(key) for key in BACKBONE_OPTIONS if key in options}


def apply_backbone_options(
    network: nn.Module,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    frozen_stages: int = -1,
    norm: str = "bn",
) -> nn.Module:
    """``network`` with the backbone options applied: BatchNorms frozen, stages frozen, and, with
    ``features_only``, the :class:`FeatureNet` of ``out_indices`` (default: every stage) made of its modules.
    Bad values are refused in one line naming the valid ones."""
    family = type(network).__name__
    check_option(isinstance(features_only, bool), family, "features_only", features_only, "use True or False")
    check_option(
        isinstance(norm, str) and norm in NORMS,
        family,
        "norm",
        norm,
        "choose 'bn' or 'frozen_bn' (torchvision's FrozenBatchNorm2d)",
    )
    if not isinstance(network, StagedNetwork):  # a network from elsewhere: its BatchNorms can still be frozen
        staged = {"features_only": (features_only, False), "out_indices": (out_indices, None)}
        for option, (value, default) in {**staged, "frozen_stages": (frozen_stages, -1)}.items():
            check_option(value == default, family, option, value, "it describes no stages: leave it out")
        return freeze_batch_norms(network) if norm == "frozen_bn" else network
    stages = network.feature_stages()
    indices = [stage.index for stage in stages]
    if out_indices is None:
        out_indices = tuple(indices)
    else:
        check_option(
            features_only,
            family,
            "out_indices",
            out_indices,
            "it picks the maps of a backbone: add features_only=True, or leave it out",
        )
        out_indices = _check_out_indices(family, out_indices, stages)
    last = out_indices[-1] if features_only else indices[-1]
    if indices[0] > 0:
        scale = f"-1 or 0 (nothing; no stem) .. {last} (stages 1..{last})"
    else:
        scale = f"-1 (nothing), 0 (the stem) .. {last} (the stem and stages 1..{last})"
    dropped = (
        f"; stages after out_indices' last ({last}) are not in the backbone" if last < indices[-1] else ""
    )
    check_option(
        is_int(frozen_stages) and -1 <= frozen_stages <= last,
        family,
        "frozen_stages",
        frozen_stages,
        f"use {scale}{dropped}",
    )
    if norm == "frozen_bn":
        freeze_batch_norms(network)
    if frozen_stages >= 0:
        _freeze_stages(network, frozen_stages)
    return FeatureNet(network, out_indices) if features_only else network


def _check_out_indices(family: str, value: object, stages: Sequence[FeatureStage]) -> tuple[int, ...]:
    valid = [stage.index for stage in stages]
    names = ", ".join(f"{stage.index} = {stage.module}" for stage in stages)
    check_option(
        isinstance(value, (tuple, list)) and len(value) > 0,
        family,
        "out_indices",
        value,
        f"give a tuple of stage indices, e.g. {tuple(valid[-3:])}",
    )
    indices = tuple(value)  # type: ignore[arg-type]
    check_option(
        all(is_int(i) and i in valid for i in indices),
        family,
        "out_indices",
        value,
        f"use integers in {valid[0]}..{valid[-1]} ({names})",
    )
    check_option(
        all(a < b for a, b in zip(indices, indices[1:], strict=False)),  # neighbours: one pair fewer
        family,
        "out_indices",
        value,
        "give each index once, in increasing order (the maps come back in network order)",
    )
    return indices


def freeze_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` (and ``SyncBatchNorm``) under ``module`` by a ``FrozenBatchNorm2d``
    holding its statistics, affine parameters and eps; returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            setattr(module, name, _frozen_copy(child))
        else:
            freeze_batch_norms(child)
    return module


def _frozen_copy(norm: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError(f"{norm} keeps no running statistics to freeze")
    frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps)
    tensors = {"running_mean": norm.running_mean, "running_var": norm.running_var}
    if norm.affine:
        tensors.update(weight=norm.weight, bias=norm.bias)
    frozen.to(norm.running_mean.device)
    for key, tensor in tensors.items():
        setattr(frozen, key, tensor.detach().clone())  # the buffers take the BatchNorm's device and dtype
    return frozen


def _freeze_stages(network: StagedNetwork, frozen_stages: int) -> None:
    """Freeze the stem and stages 1..``frozen_stages``: no gradients, evaluation mode from now on."""
    for stage in network.feature_stages():
        if stage.index <= frozen_stages:
            for path in stage.modules:
                network.get_submodule(path).requires_grad_(False)
    network.frozen_stages = frozen_stages
    network.train(network.training)  # StagedNetwork.train puts the frozen modules in evaluation mode


class FeatureNet(nn.Module):
    """A network's stages as a backbone: ``forward(x)`` returns the maps of ``out_indices``, in order.

    It takes over the network's modules under their own names, less the classifier head and the stages after
    the last index (removed, so no parameter goes unused under DDP): its state dict is the network's less
    those keys. ``feature_info[i]`` describes the i-th map (``num_chs``, ``reduction``, ``module``, as
    timm's). Build it with ``create_model(name, features_only=True, ...)``, which validates the options.
    """

    def __init__(self, network: StagedNetwork, out_indices: Sequence[int]) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.frozen_stages = network.frozen_stages
        self.norm_type = (
            "frozen_bn" if any(isinstance(m, FrozenBatchNorm2d) for m in network.modules()) else "bn"
        )
        self._stages = tuple(s for s in network.feature_stages() if s.index <= self.out_indices[-1])
        self.feature_info = [
            {"num_chs": s.channels, "reduction": s.reduction, "module": s.module}
            for s in self._stages
            if s.index in self.out_indices
        ]
        kept = {path for stage in self._stages for path in stage.modules}
        for name, child in network.named_children():
            if _prune(child, name, kept):
                self.add_module(name, child)
        self.train(network.training)

    def feature_stages(self) -> list[FeatureStage]:
        """The stages this backbone runs (up to its last index)."""
        return list(self._stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self._stages:
            # Looked up on each call: a module replaced since (SyncBatchNorm conversion...) is the one
            # that runs.
            for path in stage.modules:
                x = self.get_submodule(path)(x)
            if stage.index in self.out_indices:
                features.append(x)
        return features

    def train(self, mode: bool = True) -> "FeatureNet":
        super().train(mode)
        keep_frozen_in_eval(self, self._stages, self.frozen_stages)
        return self

    def extra_repr(self) -> str:
        return f"out_indices={self.out_indices}, frozen_stages={self.frozen_stages}, norm={self.norm_type!r}"


def _prune(module: nn.Module, path: str, kept: set[str]) -> bool:
    """Whether ``module`` at ``path`` is needed by the ``kept`` paths; inside a needed container, remove the
    children nothing needs (by name, so the others keep their keys: ``features.14``... stay as they are)."""
    if path in kept or any(path.startswith(k + ".") for k in kept):
        return True
    if not any(k.startswith(path + ".") for k in kept):
        return False
    for name, child in list(module.named_children()):
        if not _prune(child, f"{path}.{name}", kept):
            delattr(module, name)
    return True
