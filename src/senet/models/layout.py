"""Layout options: build options that change what a network computes, not its tensors' names or shapes.

A strict load cannot catch one that contradicts the weights, so whoever loads weights (``senet.weights``)
reads them from the built network: :func:`layout_options`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

LAYOUT_OPTIONS = ("stride_in_1x1", "stem_pool", "se_squeeze", "se_gate", "se_position")


def layout_options(network: nn.Module) -> dict[str, Any]:
    """The :data:`LAYOUT_OPTIONS` that ``network`` was built with, read from the network: its family's own (a
    ResNet's stem pooling and stride position: ``network.layout_options()``) and how its SE blocks squeeze,
    gate and sit. Options that the network's family does not take are absent."""
    family = getattr(network, "layout_options", None)
    layout: dict[str, Any] = dict(family()) if callable(family) else {}
    se = getattr(network, "se_config", None)
    if se is not None:
        layout.update(se_squeeze=se.squeeze, se_gate=se.gate, se_position=se.position)
    return layout
