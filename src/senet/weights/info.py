"""Weight files that know which network they belong to.

A senet weights file is a safetensors file whose metadata holds, under the key ``senet``, one JSON record
(:class:`WeightsInfo`): the registered model, the build options under which that model computes what the
weights were trained for (e.g. ``stride_in_1x1=False`` for torchvision's ResNets), the class count, the test
preprocessing, the class labels where known and where the weights came from. A state dict alone carries no
layout; this record is what makes loading exact (DESIGN.md, "Layout vs keys").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file as save_safetensors_file

from senet.data.transforms import Preprocessing
from senet.fileio import atomic_write, first_line

FORMAT = "senet-weights/1"
METADATA_KEY = "senet"


def floor_resize(input_size: int, crop_fraction: float) -> int:
    """The resize of timm and pretrained-models for a crop fraction: the shorter side to
    ``floor(input_size / crop_fraction)`` (not rounded: 224 / 0.95 is 235)."""
    return math.floor(input_size / crop_fraction)


@dataclass
class WeightsInfo:
    """What a weights file records besides its tensors (see the module doc)."""

    model: str
    options: dict[str, Any]
    num_classes: int
    preprocessing: Preprocessing
    labels: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "options": self.options,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.as_dict(),
            "labels": self.labels,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str) -> "WeightsInfo":
        """Parse a record; anything missing or of the wrong type is one line naming ``origin``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{origin}: weights record of format {found!r}, expected {FORMAT!r}")
        kinds = {"model": str, "options": dict, "num_classes": int, "preprocessing": dict, "source": dict}
        wrong = [key for key, kind in kinds.items() if not isinstance(data.get(key), kind)]
        labels = data.get("labels")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
            wrong.append("labels")
        if wrong:
            raise ValueError(f"{origin}: damaged weights record, missing or wrong fields: {', '.join(wrong)}")
        if labels is not None and len(labels) != data["num_classes"]:
            raise ValueError(f"{origin}: {len(labels)} labels for {data['num_classes']} classes")
        recorded = data["preprocessing"]
        if "resize" not in recorded and data["source"].get("project") == "timm":
            # A timm conversion of an earlier version, which recorded timm's crop_pct alone: timm resizes to
            # floor(input_size / crop_pct), and so do these weights' own evaluations.
            try:
                recorded = {
                    **recorded,
                    "resize": floor_resize(recorded["input_size"], recorded["crop_fraction"]),
                }
            except (KeyError, TypeError, ZeroDivisionError):
                pass  # Preprocessing.from_dict names what is wrong
        try:
            preprocessing = Preprocessing.from_dict(recorded)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{origin}: {error}") from None
        return cls(data["model"], data["options"], data["num_classes"], preprocessing, labels, data["source"])


def save_weights_file(path: str | Path, state: dict[str, torch.Tensor], info: WeightsInfo) -> Path:
    """Write ``state`` with ``info`` in its metadata, atomically (an existing file is replaced only whole)."""

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    metadata = {METADATA_KEY: json.dumps(info.as_dict())}
    atomic_write(path, lambda tmp: save_safetensors_file(tensors, str(tmp), metadata=metadata))
    return path


def read_weights_file(path: str | Path, tensors: bool = True) -> tuple[WeightsInfo, dict[str, torch.Tensor]]:
    """The record and tensors of a senet weights file (``tensors=False``: the record alone, from the header,
    and no tensors); every problem is one line naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} is missing")
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        raise ValueError(
            f"{path} is a weights file of another project, without the record of the network it needs; "
            "convert it: senet convert --from timm|pretrainedmodels|torchvision FILE --model NAME "
            "--out OUT.safetensors"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        first = first_line(error)
        raise ValueError(
            f"{path} is not a readable safetensors file ({first}); restore it, or convert the original again"
        ) from None
    if METADATA_KEY not in metadata:
        raise ValueError(
            f"{path} holds tensors but no senet record of the network they belong to; weights of another "
            "project go through `senet convert`, and a run's best.safetensors is loaded through its run "
            "directory (load_pretrained(RUN_DIR, weights='best'))"
        )
    try:
        record = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: damaged weights record ({error})") from None
    return WeightsInfo.from_dict(record, str(path)), state
