"""Keeping a GPU busy: the next batch is copied while the current step runs, and nothing waits for the GPU.

On CUDA a training step is launched, not run: the host returns at once unless something reads a GPU value.
:class:`DeviceFeeder` issues the copy of batch k+1 on a side stream right after step k is launched, so the
copy overlaps the step; :class:`FiniteCheck` keeps the "were the loss and the weights finite?" flag on the
device and reads it every ``every`` steps (and before anything is saved), naming the exact step where it first
failed. On CPU both do what the plain loop does, at the same points (no behaviour or result changes there).
A loader that finishes its batches on the device (``senet.data.device_pipeline.DeviceLoader``: the GPU
pipeline, or the CPU loader's uint8 batches converted there) runs that work on the side stream too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import torch

from senet.weights.checkpoint import RngState, rng_state

# Steps between host reads of the on-device finite flag on CUDA: one sync per this many (CPU: every step).
CUDA_CHECK_EVERY = 50


def to_device(
    images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


class HostFeeder:
    """``(rng, images, targets, skipped)`` for each batch of ``batches``: ``rng`` is every RNG's state before
    the batch was drawn (what a checkpoint taken before training on it must hold, for exact resume). The
    batch stays on the host until :meth:`ready` moves it with ``move`` (batches of any structure: detection's
    lists of images and target dicts)."""

    def __init__(self, batches: Iterator[Any], move: Callable[[Any, Any], tuple[Any, Any]]) -> None:
        self.batches, self.move = batches, move

    def fetch(self) -> tuple[RngState, Any, Any, int] | None:
        rng = rng_state()
        return (rng, *batch) if (batch := next(self.batches, None)) is not None else None

    def ready(self, images: Any, targets: Any) -> tuple[Any, Any]:
        return self.move(images, targets)


class DeviceFeeder(HostFeeder):
    """A :class:`HostFeeder` of image and target tensors that, on CUDA, has them on the device already:
    :meth:`fetch` is called right after a step is launched and copies on a side stream; :meth:`ready` makes
    the compute stream wait for that copy only. Elsewhere they stay on the host and :meth:`ready` copies
    them, as a plain loop would.
    """

    def __init__(self, batches: Iterator[Any], device: torch.device, channels_last: bool) -> None:
        super().__init__(batches, lambda images, targets: to_device(images, targets, device, channels_last))
        self.device, self.channels_last = device, channels_last
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def fetch(self) -> tuple[RngState, torch.Tensor, torch.Tensor, int] | None:
        if self.stream is None:
            return super().fetch()
        rng = rng_state()
        # A DeviceLoader (senet.data.device_pipeline) copies, decodes or converts its batch here too.
        with torch.cuda.stream(self.stream):
            if (batch := next(self.batches, None)) is None:
                return None
            images, targets, skipped = batch
            if targets.numel():
                images, targets = to_device(images, targets, self.device, self.channels_last)
        return rng, images, targets, skipped

    def ready(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stream is None:
            return super().ready(images, targets)
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        # The side stream allocated them: tell the allocator the compute stream uses them too.
        images.record_stream(current)
        targets.record_stream(current)
        return images, targets


class FiniteCheck:
    """Whether every step so far had a finite loss and left finite weights, read on the host every ``every``
    steps (1 on CPU).

    ``observe`` records the first non-finite step on the device without a sync; ``first_bad`` reads it (one
    sync) and agrees on it over the ranks through ``min_over_ranks``, so every rank stops at the same check.
    Call ``first_bad`` before saving anything, so that no diverged state is ever written.
    """

    def __init__(self, device: torch.device, min_over_ranks: Callable[[int], int], every: int | None = None):
        self.every = every if every is not None else (CUDA_CHECK_EVERY if device.type == "cuda" else 1)
        self.min_over_ranks = min_over_ranks
        self._none = torch.iinfo(torch.int64).max
        self._first = torch.full((), self._none, dtype=torch.int64, device=device)
        self._value = torch.zeros((), dtype=torch.float32, device=device)
        self._where: dict[int, Any] = {}  # step -> where it was (epoch, batch), since the last read
        self._observed = 0

    def observe(self, step: int, loss: torch.Tensor, where: Any, weights: torch.Tensor | None = None) -> None:
        """Step ``step`` had ``loss`` and left weights of norm ``weights`` (any norm); ``where`` names it."""
        bad = ~torch.isfinite(loss.detach())
        if weights is not None:
            bad |= ~torch.isfinite(weights.detach())
        bad &= self._first == self._none
        self._first = torch.where(bad, torch.full_like(self._first, step), self._first)
        self._value = torch.where(bad, loss.detach().float(), self._value)
        self._where[step] = where
        self._observed += 1

    def due(self) -> bool:
        return self._observed >= self.every

    def first_bad(self) -> tuple[int, float, Any] | None:
        """(step, its loss, where) of the first step with a non-finite loss or weights on this rank (a finite
        loss: the weights), or of some rank's (then NaN and the newest step this rank knows), or None when all
        were finite. Every rank must call this together."""
        first = int(self._first.item())
        self._observed = 0
        ok = self.min_over_ranks(int(first == self._none))
        where, self._where = self._where, {}
        if ok:
            return None
        if first == self._none:  # another rank diverged: report the newest step this rank knows
            step = max(where) if where else -1
            return step, float("nan"), where.get(step)
        return first, float(self._value.item()), where.get(first)
