"""Sums of an epoch's metrics over its batches, kept on the device and reduced over the ranks when read.

:class:`Meter` is what every task's meter shares (and what a checkpoint saves mid-epoch);
:class:`TopkMeter` is classification's (loss, top-1 and top-5 errors), in training and in
:func:`senet.train.evaluation.evaluate`.
"""

from __future__ import annotations

from typing import Any

import torch

from senet.runtime import Dist


class Meter:
    """``width`` sums over an epoch's batches (float64, on the device) and the unreadable images skipped,
    reduced over the ranks when read; a resumed epoch starts from the sums saved mid-epoch (``state``, as
    :meth:`totals` returned them). Subclasses say what they sum (``add``) and what it means (``result``)."""

    width = 4

    def __init__(self, device: torch.device, state: dict[str, Any] | None = None) -> None:
        sums = state["sums"] if state else [0.0] * self.width
        self.sums = torch.tensor(sums, dtype=torch.float64, device=device)
        self.skipped = state["skipped"] if state else 0

    def totals(self, ctx: Dist) -> dict[str, Any]:
        """The sums over all ranks, as saved in a checkpoint (every rank must call this)."""
        sums = ctx.sum(
            torch.cat(
                [self.sums, torch.tensor([float(self.skipped)], dtype=torch.float64, device=self.sums.device)]
            )
        )
        *totals, skipped = sums.tolist()
        return {"sums": totals, "skipped": int(skipped)}


def topk_hits(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 and top-5 hits (top-k capped at the number of classes), counted on the device."""
    k = min(5, scores.shape[1])
    hits = scores.topk(k, dim=1).indices == targets[:, None]
    return hits[:, 0].sum(), hits.any(dim=1).sum()


class TopkMeter(Meter):
    """Sums of loss, top-1/top-5 hits and counts: loss*n, top1 hits, top5 hits, n."""

    def add(self, loss: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> None:
        top1, top5 = topk_hits(scores.detach(), targets)
        n = torch.tensor(float(targets.numel()), dtype=torch.float64, device=self.sums.device)
        self.sums += torch.stack([loss.detach().double() * n, top1.double(), top5.double(), n])

    def result(self, ctx: Dist, prefix: str) -> dict[str, float]:
        totals = self.totals(ctx)
        loss, top1, top5, n = totals["sums"]
        seen = max(n, 1.0)
        return {
            f"{prefix}_loss": loss / seen,
            f"{prefix}_top1_err": 100 * (1 - top1 / seen),
            f"{prefix}_top5_err": 100 * (1 - top5 / seen),
            f"{prefix}_images": int(n),
            f"{prefix}_skipped": totals["skipped"],
        }
