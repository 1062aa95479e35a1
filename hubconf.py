"""torch.hub entry points: every registered senet model, built by ``senet.create_model``.

    torch.hub.load("path/to/senet", "se_resnet50", source="local", pretrained="weights.safetensors")
    torch.hub.list("OWNER/senet")           # torch.hub.list and help take GitHub names only

Keyword arguments go to :func:`senet.create_model` (``num_classes``, build options, ``features_only``...);
``pretrained`` takes a weights file or run directory (``senet convert``, ``senet train``), or True for the
published weights.
"""

import sys
from pathlib import Path as _Path  # every public callable here is an entry point (torch.hub.list)

dependencies = ["torch", "torchvision", "safetensors"]

# A clone need not be installed: its own package comes first, so the hub builds the code it was pointed at.
sys.path.insert(0, str(_Path(__file__).resolve().parent / "src"))

import senet  # noqa: E402


def _entry_point(name: str):
    def build(pretrained=False, **options):
        return senet.create_model(name, pretrained=pretrained, **options)

    info = senet.model_info(name)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{info.description}\n\nsenet.create_model({name!r}, pretrained=..., **options)"
    return build


globals().update({name: _entry_point(name) for name in senet.list_models()})
