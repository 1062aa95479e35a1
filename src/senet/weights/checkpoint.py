"""Checkpoints that load without executing code and survive a kill at any moment, even while saving.

A checkpoint is two files in the run directory, named by where training stands (epoch, batches done in it):

* ``checkpoint-e<epoch>-b<batches>.safetensors``: every tensor (model weights as ``model.*``, optimizer state
  as ``optimizer.<param>.<name>``, RNG states as ``rng.*``);
* ``checkpoint-e<epoch>-b<batches>.json``: everything else (config, step, metrics so far, scheduler and RNG
  state), the name and size of its tensor file, and the options the model was built with (``build_options``),
  so that reading a run needs no training config (:func:`run_build_options`).

Both are written to a temporary file, flushed to disk and renamed into place; the JSON is renamed last and
is the commit point, so a process killed at any moment leaves every earlier checkpoint whole. A run keeps
its newest ``keep`` complete checkpoints; ``load_checkpoint(run_dir)`` takes the newest one that reads back
whole (skipping, with a warning, a newer one that was damaged after it was written).
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from senet.fileio import atomic_write, first_line

FORMAT = "senet-checkpoint/2"
BEST_NAME = "best.safetensors"
BUILD_OPTIONS = "build_options"  # the model's build options; earlier versions wrote none (run_build_options)
_NAME = re.compile(r"checkpoint-e(\d+)-b(\d+)\.json")
_log = logging.getLogger("senet.train")

# Test hook: called between writing a checkpoint's tensors and its JSON (fault-injection tests kill the
# process there); None in normal use.
before_commit: Callable[[], None] | None = None

# What a checkpoint's JSON must hold, and of what type: a file that differs is refused in one line.
_SCHEMA: dict[str, type] = {
    "format": str,
    "tensors": str,
    "tensor_bytes": int,
    "config": dict,
    "model": str,
    "num_classes": int,
    "classes": list,
    "epoch": int,
    "batches_done": int,
    "step": int,
    "world_size": int,
    "history": list,
    "best": dict,
    "epoch_state": dict,
    "optimizer": dict,
    "rng": list,
}


def checkpoint_name(epoch: int, batches_done: int) -> str:
    """File stem of the checkpoint taken after ``batches_done`` batches of epoch ``epoch`` (0-based)."""
    return f"checkpoint-e{epoch:04d}-b{batches_done:07d}"


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # safetensors refuses shared or strided storage: save private contiguous CPU copies.
    return save_safetensors_bytes({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG this process draws from: torch (CPU, and the current CUDA device once in use), numpy, Python.

    Only the current GPU's: touching the others would create a CUDA context on every GPU of the node.
    """
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    # Taken before every batch (the engine may save at that boundary): kept as the libraries return them,
    # turned into JSON only when saved (see _rng_json), which is what costs.
    return tensors, {"numpy": np.random.get_state(), "python": random.getstate()}


RngState = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _rng_json(meta: dict[str, Any]) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = meta["numpy"]
    version, state, gauss = meta["python"]
    return {"numpy": [name, keys.tolist(), pos, has_gauss, cached], "python": [version, list(state), gauss]}


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` from the JSON file, ``tensors`` from its safetensors file."""

    path: Path  # the JSON file
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, batches done in it): where training stands."""
        return self.meta["epoch"], self.meta["batches_done"]

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model.") :]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def restore_rng(self, rank: int = 0) -> None:
        """Put every RNG back as process ``rank`` of the saved run left it."""
        prefix = f"rng.{rank}."
        tensors = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        if "torch" not in tensors or rank >= len(self.meta["rng"]):
            raise ValueError(
                f"{self.path} holds no RNG state of process {rank}; it was saved by "
                f"{len(self.meta['rng'])} process(es)"
            )
        torch.set_rng_state(tensors["torch"])
        if "cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["cuda"])
        name, keys, pos, has_gauss, cached = self.meta["rng"][rank]["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, state, gauss = self.meta["rng"][rank]["python"]
        random.setstate((version, tuple(state), gauss))

    def optimizer_state(self) -> dict[str, Any]:
        state: dict[int, dict[str, Any]] = {
            int(i): dict(v) for i, v in self.meta["optimizer"]["scalars"].items()
        }
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
    rng: list[RngState] | None = None,
    keep: int = 2,
) -> Path:
    """Save model, optimizer and RNG state with ``meta`` (config, epoch, batches_done, step, ...).

    ``rng``: the RNG states of every process of the run (default: this process's, now). Then delete all but
    the newest ``keep`` complete checkpoints. Returns the new JSON file's path.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the newest checkpoint is always kept), got {keep}")
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optim["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    rng = rng if rng is not None else [rng_state()]
    for rank, (rng_tensors, _) in enumerate(rng):
        tensors.update({f"rng.{rank}.{k}": v for k, v in rng_tensors.items()})

    stem = checkpoint_name(meta["epoch"], meta["batches_done"])
    data = _tensor_bytes(tensors)
    atomic_write(run_dir / f"{stem}.safetensors", data)
    if before_commit is not None:
        before_commit()
    full_meta = {
        "format": FORMAT,
        "tensors": f"{stem}.safetensors",
        "tensor_bytes": len(data),
        **meta,
        "optimizer": {"param_groups": optim["param_groups"], "scalars": scalars},
        "rng": [_rng_json(rng_meta) for _, rng_meta in rng],
    }
    meta_path = run_dir / f"{stem}.json"
    atomic_write(meta_path, json.dumps(full_meta, indent=1).encode())
    for old in list_checkpoints(run_dir)[:-keep]:  # oldest first; the commit above made the new one complete
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return meta_path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The committed checkpoint JSON files of a run, oldest first."""
    found = [
        (tuple(map(int, m.groups())), p)
        for p in Path(run_dir).glob("checkpoint-*.json")
        if (m := _NAME.fullmatch(p.name))
    ]
    return [path for _, path in sorted(found)]


def remove_stale_files(run_dir: Path) -> list[Path]:
    """Delete what an interrupted save left behind: temp files, and tensor files whose JSON was never
    written."""
    committed = {p.with_suffix(".safetensors") for p in list_checkpoints(run_dir)}
    stale = [p for p in run_dir.glob(".*.tmp")]
    stale += [p for p in run_dir.glob("checkpoint-*.safetensors") if p not in committed]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def save_weights(path: Path, model: nn.Module) -> None:
    """Model weights alone, as a safetensors file (e.g. the best epoch's)."""
    atomic_write(path, _tensor_bytes(model.state_dict()))


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file of weights (e.g. ``best.safetensors``), or one line saying why it cannot be read."""
    path = Path(path)
    try:
        return load_safetensors_bytes(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {path} is missing") from None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(
            f"{path} is corrupt or not a safetensors file ({first_line(error)}); "
            "restore it, or use another checkpoint"
        ) from None


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{meta_path} is not a valid checkpoint file: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path} is not a senet checkpoint (format {found!r}, expected {FORMAT!r})")
    wrong = [
        f"{key} (expected {kind.__name__})" for key, kind in _SCHEMA.items() if not _is(meta.get(key), kind)
    ]
    if wrong:
        raise ValueError(
            f"{meta_path} is damaged: missing or wrong fields {', '.join(wrong[:4])}"
            f"{' and more' if len(wrong) > 4 else ''}"
        )
    if BUILD_OPTIONS in meta and not isinstance(meta[BUILD_OPTIONS], dict):
        raise ValueError(f"{meta_path} is damaged: its {BUILD_OPTIONS} are not a mapping of option names")
    if Path(meta["tensors"]).name != meta["tensors"]:
        raise ValueError(
            f"{meta_path} is damaged: its tensor file {meta['tensors']!r} is not a plain file name"
        )
    return meta


def read_checkpoint(meta_path: Path) -> Checkpoint:
    """Read one checkpoint from its JSON file; every problem is one line (ValueError/FileNotFoundError)."""
    meta = _read_meta(meta_path)
    tensor_path = meta_path.parent / meta["tensors"]
    if not tensor_path.is_file():
        raise FileNotFoundError(f"checkpoint {meta_path} names {tensor_path.name}, which is missing")
    if tensor_path.stat().st_size != meta["tensor_bytes"]:
        raise ValueError(
            f"{tensor_path} is truncated or was replaced ({tensor_path.stat().st_size} bytes, "
            f"{meta['tensor_bytes']} written)"
        )
    try:
        tensors = load_safetensors_bytes(tensor_path.read_bytes())
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{tensor_path} is corrupt or not a safetensors file: {first_line(error)}") from None
    if "rng.0.torch" not in tensors:
        raise ValueError(f"{tensor_path} is damaged: it holds no RNG state")
    return Checkpoint(meta_path, meta, tensors)


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """The newest complete checkpoint of a run directory (or the one a ``checkpoint-*.json`` path names).

    No pickle is involved. A newer checkpoint that cannot be read (damaged after it was written) is skipped
    with a warning; if none can be read, the newest one's problem is raised.
    """
    path = Path(run_dir)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {path}")
        return read_checkpoint(path)
    candidates = list_checkpoints(path) if path.is_dir() else []
    if not candidates and (path / "checkpoint.json").is_file():
        raise ValueError(
            f"{path} holds a checkpoint in the first format (checkpoint.json, senet-checkpoint/1), which "
            "this version does not resume; its checkpoint-*.safetensors file holds the weights as model.* "
            "tensors"
        )
    if not candidates:
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected checkpoint-e*-b*.json files "
            "(a run directory of `senet train` or `senet detect train`)"
        )
    first_error: Exception | None = None
    for meta_path in reversed(candidates):
        try:
            checkpoint = read_checkpoint(meta_path)
        except (ValueError, FileNotFoundError) as error:
            _log.warning(f"skipping damaged checkpoint: {error}")
            first_error = first_error or error
            continue
        return checkpoint
    assert first_error is not None
    raise first_error


def config_build_options(model_options: dict[str, Any] | None, drop_rate: float | None) -> dict[str, Any]:
    """What a classification run passes its model's builder besides the data's facts: its ``model_options``,
    with its ``drop_rate`` where one was set."""
    options = dict(model_options or {})
    if drop_rate is not None:
        options["drop_rate"] = drop_rate
    return options


def run_build_options(meta: dict[str, Any], data_in_chans: int) -> dict[str, Any]:
    """The options a classification run's model was built with, besides ``num_classes``: its checkpoint's
    ``build_options``. A checkpoint of an earlier version has none: its config's ``model_options``, with its
    ``drop_rate`` where one was set (what the training engine passed the builder), and the data's input
    channels (``in_chans``, or ``data_in_chans`` where even that is not recorded)."""
    if BUILD_OPTIONS in meta:
        return dict(meta[BUILD_OPTIONS])
    options = config_build_options(meta["config"].get("model_options"), meta["config"].get("drop_rate"))
    return {**options, "in_chans": meta.get("in_chans", data_in_chans)}


def describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """``None`` if ``state`` fits ``model`` exactly, else one line saying what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def load_weights_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """Strictly load ``state`` into ``model``, or fail with one line naming what differs. ``assign`` takes the
    tensors themselves (a model built on the meta device) instead of copying into the model's."""
    mismatch = describe_mismatch(model, state)
    if mismatch:
        raise ValueError(f"weights in {source} do not fit this model: {mismatch}")
    model.load_state_dict(state, assign=assign)
