"""Checkpoints that load without executing code and survive a crash while saving.

A checkpoint is two files in the run directory:

* ``checkpoint-<step>.safetensors``: every tensor (model weights as ``model.*``, optimizer state as
  ``optimizer.<param>.<name>``, RNG states as ``rng.*``);
* ``checkpoint.json``: everything else (config, epoch, step, best metric, scheduler and RNG state) and the
  name of its tensor file.

Both are written to a temporary file, flushed to disk and renamed into place; the JSON is renamed last and
is the commit point, so a process killed at any moment leaves the previous checkpoint whole and readable.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

FORMAT = "senet-checkpoint/1"
META_NAME = "checkpoint.json"
BEST_NAME = "best.safetensors"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # safetensors refuses shared or strided storage: save private contiguous CPU copies.
    return save_safetensors_bytes({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG a run draws from: torch (CPU and CUDA), numpy, Python."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    meta = {"numpy": [name, keys.tolist(), pos, has_gauss, cached], "python": [version, list(state), gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` from the JSON file, ``tensors`` from its safetensors file."""

    run_dir: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def optimizer_state(self) -> dict[str, Any]:
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in self.meta["optimizer"]["scalars"].items()}
        for key, value in self.tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        return {"state": state, "param_groups": self.meta["optimizer"]["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> Path:
    """Save model, optimizer and RNG state with ``meta`` (config, epoch, step, ...); returns the JSON path."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optim["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)

    tensor_name = f"checkpoint-{meta['step']:09d}-{meta['batches_done']:06d}.safetensors"
    atomic_write(run_dir / tensor_name, _tensor_bytes(tensors))
    full_meta = {
        "format": FORMAT,
        "tensors": tensor_name,
        **meta,
        "optimizer": {"param_groups": optim["param_groups"], "scalars": scalars},
        "rng": rng_meta,
    }
    meta_path = run_dir / META_NAME
    atomic_write(meta_path, json.dumps(full_meta, indent=1).encode())
    for old in run_dir.glob("checkpoint-*.safetensors"):  # superseded, now that the JSON points elsewhere
        if old.name != tensor_name:
            old.unlink(missing_ok=True)
    return meta_path


def save_weights(path: Path, model: nn.Module) -> None:
    """Model weights alone, as a safetensors file (e.g. the best epoch's)."""
    atomic_write(path, _tensor_bytes(model.state_dict()))


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read a run directory's checkpoint (or a path to its ``checkpoint.json``); no pickle is involved."""
    path = Path(run_dir)
    meta_path = path if path.suffix == ".json" else path / META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"no checkpoint in {path}: expected {meta_path} (a run directory of `senet train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path} is not a valid checkpoint file: {error}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a senet checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    tensor_path = meta_path.parent / meta["tensors"]
    try:
        tensors = load_safetensors_bytes(tensor_path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {meta_path} names {tensor_path.name}, which is missing") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{tensor_path} is corrupt or not a safetensors file: {error}") from None
    return Checkpoint(meta_path.parent, meta, tensors)


def describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """``None`` if ``state`` fits ``model`` exactly, else one line saying what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` into ``model``, or fail with one line naming what differs."""
    mismatch = describe_mismatch(model, state)
    if mismatch:
        raise ValueError(f"weights in {source} do not fit this model: {mismatch}")
    model.load_state_dict(state)
