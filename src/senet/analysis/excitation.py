"""What SE blocks learn (paper Sec. 7.2, Figs. 6-7), and what removing them costs (Sec. 7's remark that the
last stage's SE blocks can go at a marginal loss).

**Block names.** ``SE_s_b`` is the b-th SE block (1-based, in forward order) of stage ``s``, with stages
counted as the paper's ``conv{s}_x``: the stem is stage 1, so a network's first stage of units (``layer1``) is
stage 2. In SE-ResNet-50, SE_2_3 is the third unit of ``layer1`` (conv2_x), SE_5_1 the first of ``layer4``
(conv5_x). Families with another number of stages follow the same rule: the three stages of the CIFAR ResNets
(``layer1..layer3``, 32x32 -> 8x8) are SE_2_* .. SE_4_* (the conv2..conv4 groups of Zagoruyko & Komodakis'
Table 1), ShuffleNet's ``stage2..stage4`` are SE_2_* .. SE_4_* (Zhang et al.'s Stage2..4). So ``s`` is one
more than the 1-based stage number of ``se_stages`` (1 = ``layer1``). Families without stages (MobileNet,
BN-Inception, Inception-ResNet-v2, VGG) name each block by its module path (``blocks.3.se``). A block's module
path is accepted for every family (``layer4.2.se`` or ``layer4.2``), and shell wildcards select several:
``SE_5_*``, ``SE_*_1``, ``*``.

**Statistics** (:func:`collect_excitations`): for each chosen block, the gates s of Eq. 3 of every image,
summed per class in float64: image counts, per-channel sums and sums of squares, and a histogram of all gate
values. From them, per class: the mean and the standard deviation over the class's images (population std,
ddof 0) of each channel's gate, and the same over all images. Blocks without squeeze (``se_squeeze="none"``)
gate every position: their per-image gate is the spatial mean of the gate map.

**Class specificity** (two measures per block, ``class-specificity.csv``). With ``M_k`` the mean gate of
channel ``k`` over all collected images, ``m_ck`` its mean over the images of class ``c`` and ``n_c`` their
count (K channels, G classes with images, N images):

* ``l1_specificity = (1/G) sum_c (1/K) sum_k |m_ck - M_k|``: how far, in gate units, a class's mean profile
  lies from the overall one (the gap between the class curves and the "all" curve of Fig. 6).
* ``eta_squared = sum_k sum_c n_c (m_ck - M_k)^2 / sum_k sum_i (s_ik - M_k)^2``: the fraction of the gates'
  variance (over images, summed over channels) that lies between classes; 0 = the gates do not depend on the
  class, 1 = every image of a class gets the same gates. Under no class effect at all it is still about
  ``(G - 1) / (N - 1)`` by sampling noise (``eta_squared_chance``); ``l1_specificity`` has the same upward
  bias for classes of few images. Where the gates do not vary at all (std < 1e-6 over images; e.g. a block
  whose hidden ReLUs never fire), ``eta_squared`` is undefined: NaN.

**Removal** (:func:`se_removed`): a chosen block's gates are taken as 1, everywhere it computes: ``forward``
returns its input, the residual units' fused ``scale_and_add`` / ``norm_scale_and_add`` add the branch
unchanged (``residual + x``, then the unit's activation), in eval and in training alike.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from senet.data import build_data, build_loader
from senet.layers.squeeze_excite import SqueezeExcite
from senet.runtime import progress_bar, resolve_device
from senet.train.evaluation import evaluate, load_with_data_source
from senet.train.plot import require_matplotlib

# A gate's range: its histogram's bins. An unbounded gate (relu) starts at [0, 1] and doubles the range.
_GATE_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "relu": (0.0, 1.0)}
HISTOGRAM_BINS = 50
DEFAULT_CLASSES = 4  # the paper's goldfish, pug, plane and cliff
DEFAULT_CHANNELS = 50  # the paper's "50 uniformly sampled channels"
DEFAULT_MAX_IMAGES = 10000
# Below this variance (a std of 1e-6) the gates are taken as constant, and eta_squared (0/0, rounding noise)
# as undefined: a block whose hidden ReLUs never fire gates every image alike, gate(fc2.bias).
_CONSTANT_VARIANCE = 1e-12

_NO_SE_FIX = "give a checkpoint of a network with SE blocks (the se_* models of `senet models`)"


# ------------------------------------------------------------------------------------------ block names


@dataclass(frozen=True, eq=False)
class SEBlock:
    """One SE block of a network: its name (``SE_s_b``, or the module path), module path and module."""

    name: str
    path: str
    module: SqueezeExcite
    # the paper's stage s (conv{s}_x; the stem is 1) and b, 1-based within it; None for families without
    # stages
    stage: int | None = None
    index: int | None = None

    @property
    def params(self) -> int:
        """The block's own parameters (``fc1``/``fc2`` weights and biases): what removing it saves."""
        return sum(p.numel() for p in self.module.parameters())


def _model_name(model: nn.Module) -> str:
    info = getattr(model, "pretrained_info", None)
    return info.model if info is not None else type(model).__name__


def se_blocks(model: nn.Module) -> list[SEBlock]:
    """Every SE block of ``model`` in forward order, named as the module doc says (empty: no SE blocks)."""
    paths: dict[int, str] = {}
    for path, module in model.named_modules():
        if isinstance(module, SqueezeExcite):
            paths.setdefault(id(module), path)
    blocks: list[SEBlock] = []
    stages = model.stages() if callable(getattr(model, "stages", None)) else []
    for stage, units in enumerate(stages, start=2):  # the stem is stage 1 (conv1)
        index = 0
        for module in units.modules():
            if isinstance(module, SqueezeExcite) and id(module) in paths:
                index += 1
                blocks.append(SEBlock(f"SE_{stage}_{index}", paths.pop(id(module)), module, stage, index))
    for path, module in model.named_modules():  # blocks outside stages: named by their path
        if isinstance(module, SqueezeExcite) and paths.get(id(module)) == path:
            blocks.append(SEBlock(path, path, module))
    return blocks


def compress_names(names: Sequence[str]) -> str:
    """``SE_2_1..SE_2_3, SE_3_2, blocks.0.se``: consecutive blocks of a stage as one range."""
    parts: list[list[str]] = []
    for name in names:
        match = re.fullmatch(r"SE_(\d+)_(\d+)", name)
        last = re.fullmatch(r"SE_(\d+)_(\d+)", parts[-1][-1]) if parts else None
        if match and last and match[1] == last[1] and int(match[2]) == int(last[2]) + 1:
            parts[-1].append(name)
        else:
            parts.append([name])
    return ", ".join(p[0] if len(p) == 1 else f"{p[0]}..{p[-1]}" for p in parts) or "-"


def describe_blocks(blocks: Sequence[SEBlock]) -> str:
    """Every block's name, a stage's blocks as one range: ``SE_2_1..SE_2_3, SE_3_1..SE_3_4, ...``."""
    return compress_names([b.name for b in blocks])


def _require_se(model: nn.Module, blocks: list[SEBlock]) -> None:
    if not blocks:
        raise ValueError(f"{_model_name(model)} has no SE blocks; {_NO_SE_FIX}")


def default_blocks(model: nn.Module) -> list[SEBlock]:
    """The last SE block of each stage (the paper's Fig. 6 blocks); every block in families without stages."""
    blocks = se_blocks(model)
    _require_se(model, blocks)
    last: dict[int, SEBlock] = {}
    for block in blocks:
        if block.stage is not None:
            last[block.stage] = block
    return [b for b in blocks if b.stage is None or last[b.stage] is b]


def _split(names: str | Sequence[str]) -> list[str]:
    items = [names] if isinstance(names, str) else list(names)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def select_blocks(model: nn.Module, names: str | Sequence[str] | None = None) -> list[SEBlock]:
    """The SE blocks that ``names`` choose (comma-separated or a list of names, module paths and wildcards,
    case-insensitive), in forward order without repeats; ``None``: :func:`default_blocks`.

    A name that matches no block is refused with the list of the network's blocks."""
    if names is None:
        return default_blocks(model)
    blocks = se_blocks(model)
    _require_se(model, blocks)
    patterns = _split(names)
    if not patterns:
        raise ValueError(f"no SE block named; choose among {describe_blocks(blocks)}")
    chosen: set[int] = set()
    for pattern in patterns:
        wanted = pattern.lower()
        hits = [
            b
            for b in blocks
            if any(
                fnmatch.fnmatchcase(key.lower(), wanted)
                for key in (b.name, b.path, b.path.removesuffix(".se"))
            )
        ]
        if not hits:
            raise ValueError(
                f"{_model_name(model)} has no SE block {pattern!r}; its blocks are {describe_blocks(blocks)} "
                "(SE_stage_block, the stem counted as stage 1; wildcards such as SE_5_* select several)"
            )
        chosen.update(id(b) for b in hits)
    return [b for b in blocks if id(b) in chosen]


def _as_blocks(model: nn.Module, blocks: str | Sequence[str] | Sequence[SEBlock] | None) -> list[SEBlock]:
    if blocks is not None and not isinstance(blocks, str) and all(isinstance(b, SEBlock) for b in blocks):
        return list(blocks)  # type: ignore[arg-type]
    return select_blocks(model, blocks)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ patching


@contextlib.contextmanager
def se_removed(model: nn.Module, blocks: str | Sequence[str] | Sequence[SEBlock]) -> Iterator[list[SEBlock]]:
    """Within the ``with`` block, the chosen SE blocks of ``model`` are identities (every gate 1).

    ``blocks``: names, module paths or wildcards (see the module doc), or :class:`SEBlock` objects. Each
    block's own switch (:attr:`SqueezeExcite.removed`) makes every path that computes its output honour it:
    ``forward`` returns its input, ``scale_and_add`` and ``norm_scale_and_add`` (the residual units' fused
    paths) return ``activation(residual + x)``, in eval and training mode; ``gates`` returns ones to whoever
    asks. The switches are restored on exit, also after an exception. Yields the blocks.
    """
    if blocks is None:
        raise ValueError(
            "se_removed needs the blocks to remove: names, wildcards (SE_5_*) or SEBlock objects"
        )
    chosen = _as_blocks(model, blocks)
    saved = [block.module.removed for block in chosen]
    try:
        for block in chosen:
            block.module.removed = True
        yield chosen
    finally:
        for block, removed in zip(chosen, saved, strict=True):
            block.module.removed = removed


# ------------------------------------------------------------------------------------------ statistics


class _Accumulator:
    """Per-class float64 sums of one block's gates, and a histogram of all of them."""

    def __init__(self, block: SEBlock, num_classes: int) -> None:
        self.block = block
        self.channels = block.module.channels
        self.counts = torch.zeros(num_classes, dtype=torch.int64)
        self.sums = torch.zeros(num_classes, self.channels, dtype=torch.float64)
        self.sumsq = torch.zeros(num_classes, self.channels, dtype=torch.float64)
        self.low, self.high = _GATE_RANGES.get(block.module.gate, (0.0, 1.0))
        self.hist = torch.zeros(HISTOGRAM_BINS, dtype=torch.float64)
        self.minimum, self.maximum = math.inf, -math.inf

    def add(self, gates: torch.Tensor, targets: torch.Tensor) -> None:
        if gates.dim() == 4:  # NoSqueeze: a gate per position; its spatial mean per image
            gates = gates.mean((2, 3)) if gates.shape[2:] != (1, 1) else gates.flatten(1)
        g = gates.detach().to("cpu", torch.float64)
        if not torch.isfinite(g).all():
            raise ValueError(
                f"{self.block.name} ({self.block.path}) gave non-finite gates: the weights are damaged or "
                "the run diverged; analyse another checkpoint"
            )
        self.counts += torch.bincount(targets, minlength=self.counts.numel())
        self.sums.index_add_(0, targets, g)
        self.sumsq.index_add_(0, targets, g * g)
        low, high = g.min().item(), g.max().item()
        self.minimum, self.maximum = min(self.minimum, low), max(self.maximum, high)
        if low < self.low:
            raise RuntimeError(f"{self.block.name}: a {self.block.module.gate} gate of {low} < {self.low}")
        while high > self.high:  # an unbounded gate: twice the range, pairs of bins merged
            self.hist = torch.cat([self.hist.view(-1, 2).sum(1), torch.zeros(HISTOGRAM_BINS // 2).double()])
            self.high = self.low + 2 * (self.high - self.low)
        self.hist += torch.histc(g, HISTOGRAM_BINS, self.low, self.high)

    def result(self) -> BlockStats:
        return BlockStats(
            name=self.block.name,
            path=self.block.path,
            gate=self.block.module.gate,
            counts=self.counts.numpy(),
            sums=self.sums.numpy(),
            sumsq=self.sumsq.numpy(),
            hist=self.hist.numpy().round().astype(np.int64),
            hist_edges=np.linspace(self.low, self.high, HISTOGRAM_BINS + 1),
            minimum=self.minimum,
            maximum=self.maximum,
        )


@dataclass
class BlockStats:
    """One block's gate statistics: per class (rows: every class of the data, also those without images)."""

    name: str
    path: str
    gate: str
    counts: np.ndarray  # (classes,) images per class
    sums: np.ndarray  # (classes, channels) sum of gates, float64
    sumsq: np.ndarray  # (classes, channels) sum of squared gates
    hist: np.ndarray  # (bins,) gate values (images x channels) per bin
    hist_edges: np.ndarray  # (bins + 1,)
    minimum: float
    maximum: float

    @property
    def channels(self) -> int:
        return int(self.sums.shape[1])

    @property
    def images(self) -> int:
        return int(self.counts.sum())

    @property
    def class_ids(self) -> np.ndarray:
        """The classes with at least one image: the rows of :attr:`class_mean` and :attr:`class_std`."""
        return np.flatnonzero(self.counts)

    @property
    def class_mean(self) -> np.ndarray:
        ids = self.class_ids
        return self.sums[ids] / self.counts[ids, None]

    @property
    def class_std(self) -> np.ndarray:
        """Standard deviation over a class's images (population, ddof 0) of each channel's gate."""
        ids = self.class_ids
        mean = self.class_mean
        return np.sqrt(np.maximum(self.sumsq[ids] / self.counts[ids, None] - mean * mean, 0.0))

    @property
    def mean(self) -> np.ndarray:
        """Each channel's mean gate over all images."""
        return self.sums.sum(0) / max(self.images, 1)

    @property
    def std(self) -> np.ndarray:
        mean = self.mean
        return np.sqrt(np.maximum(self.sumsq.sum(0) / max(self.images, 1) - mean * mean, 0.0))

    def specificity(self) -> dict[str, Any]:
        """The block's summary row: the two class-specificity measures of the module doc, and the gates'
        overall mean and standard deviation (over images and channels)."""
        ids, n, overall = self.class_ids, self.images, self.mean
        deviation = self.class_mean - overall
        between = float((self.counts[ids, None] * deviation**2).sum())
        total = float(self.sumsq.sum() - n * (overall**2).sum())
        grand = float(self.sums.sum() / (n * self.channels))
        varies = total / (n * self.channels) > _CONSTANT_VARIANCE
        return {
            "block": self.name,
            "path": self.path,
            "channels": self.channels,
            "images": n,
            "classes": len(ids),
            "gate_mean": grand,
            "gate_std": math.sqrt(max(float(self.sumsq.sum()) / (n * self.channels) - grand**2, 0.0)),
            "l1_specificity": float(np.abs(deviation).mean()),
            "eta_squared": between / total if varies else math.nan,
            "eta_squared_chance": (len(ids) - 1) / (n - 1) if n > 1 else math.nan,
        }


@dataclass
class ExcitationStats:
    """What :func:`collect_excitations` gathered: per block, per class, per channel."""

    blocks: list[BlockStats]
    classes: list[str]  # every class of the data, by id
    images: int
    model: str

    def block(self, name: str) -> BlockStats:
        for stats in self.blocks:
            if stats.name == name or stats.path == name:
                return stats
        raise KeyError(f"no statistics of {name!r}; blocks: {', '.join(b.name for b in self.blocks)}")

    def specificity(self) -> list[dict[str, Any]]:
        return [block.specificity() for block in self.blocks]

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``excitation-stats.npz``, ``excitation-stats.csv`` and ``class-specificity.csv``.

        NPZ: ``blocks``, ``paths``, ``classes`` (names by id), and per block ``<name>/class_ids``, ``/counts``
        (images of those classes), ``/mean`` and ``/std`` (classes x channels), ``/all_mean``, ``/all_std``,
        ``/hist`` and ``/hist_edges``. CSV: one row per block, class (``all``: class_id -1) and channel."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "blocks": np.array([b.name for b in self.blocks]),
            "paths": np.array([b.path for b in self.blocks]),
            "classes": np.array(self.classes),
        }
        for b in self.blocks:
            ids = b.class_ids
            arrays.update(
                {
                    f"{b.name}/class_ids": ids,
                    f"{b.name}/counts": b.counts[ids],
                    f"{b.name}/mean": b.class_mean,
                    f"{b.name}/std": b.class_std,
                    f"{b.name}/all_mean": b.mean,
                    f"{b.name}/all_std": b.std,
                    f"{b.name}/hist": b.hist,
                    f"{b.name}/hist_edges": b.hist_edges,
                }
            )
        written = [out / "excitation-stats.npz", out / "excitation-stats.csv", out / "class-specificity.csv"]
        np.savez_compressed(written[0], **arrays)
        with open(written[1], "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["block", "path", "class_id", "class", "images", "channel", "mean", "std"])
            for b in self.blocks:
                rows = [(-1, "all", b.images, b.mean, b.std)]
                rows += [
                    (int(c), self.classes[c], int(b.counts[c]), m, s)
                    for c, m, s in zip(b.class_ids, b.class_mean, b.class_std, strict=True)
                ]
                for class_id, name, count, means, stds in rows:
                    for channel, (m, s) in enumerate(zip(means, stds, strict=True)):
                        writer.writerow(
                            [b.name, b.path, class_id, name, count, channel, f"{m:.6g}", f"{s:.6g}"]
                        )
        rows = self.specificity()
        with open(written[2], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return written


@contextlib.contextmanager
def _recording(blocks: Sequence[SEBlock]) -> Iterator[list[list[torch.Tensor]]]:
    """Each block's ``gates`` records what it returns, in the list of that block."""
    records: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = [
        block.module.register_gates_hook(lambda module, s, into=into: into.append(s.detach()))
        for block, into in zip(blocks, records, strict=True)
    ]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _class_names(model: nn.Module, classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        return [str(c) for c in classes]
    info = getattr(model, "pretrained_info", None)
    if info is not None and info.labels:
        return list(info.labels)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{_model_name(model)} does not say how many classes it has: pass classes=[...]")
    return [str(i) for i in range(num_classes)]


@torch.no_grad()
def collect_excitations(
    model: nn.Module,
    loader: Any,
    blocks: str | Sequence[str] | Sequence[SEBlock] | None = None,
    max_images: int | None = None,
    *,
    classes: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ExcitationStats:
    """The gates of the chosen SE ``blocks`` (default: the last of each stage) for the images of ``loader``.

    Args:
        model: an SE network; it runs in eval mode (restored afterwards), so each block computes its gates
            once per image through ``gates``, where they are recorded.
        loader: batches ``(images, targets)`` or ``(images, targets, skipped)`` (``senet.data.build_loader``).
        blocks: names, module paths or wildcards (module doc), or :class:`SEBlock` objects.
        max_images: stop after this many images of the loader (for a stratified sample, give a loader over
            :func:`sample_indices` of the dataset).
        classes: the class names by id (default: the labels recorded with the weights, else ``0..C-1``).
        device: where to run (default: where the model's parameters are).
        progress: a tqdm bar on a terminal.
    """

    chosen = _as_blocks(model, blocks)
    if not chosen:
        raise ValueError(f"no SE block chosen; {_model_name(model)} has {describe_blocks(se_blocks(model))}")
    names = _class_names(model, classes)
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 (None: the whole loader), got {max_images}")
    if device is None:
        device = next(model.parameters()).device
    accumulators = [_Accumulator(block, len(names)) for block in chosen]
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with _recording(chosen) as records:
            for batch in progress_bar(loader, "excitation", 0, progress):
                images, targets = batch[0], batch[1]
                if targets.numel() == 0:
                    continue
                if images.dim() != 4:
                    raise ValueError(
                        f"excitation statistics take one image per item, got a batch of shape "
                        f"{tuple(images.shape)}; build the data without ten_crop"
                    )
                if max_images is not None:
                    images, targets = images[: max_images - seen], targets[: max_images - seen]
                targets = targets.to("cpu", torch.int64)
                if targets.min() < 0 or targets.max() >= len(names):
                    raise ValueError(
                        f"the data has class ids up to {int(targets.max())}; {_model_name(model)} knows "
                        f"{len(names)} classes: give the data the network was trained on"
                    )
                for into in records:
                    into.clear()
                model(images.to(device))
                for accumulator, into in zip(accumulators, records, strict=True):
                    if len(into) != 1 or into[0].shape[0] != targets.numel():
                        raise RuntimeError(
                            f"{accumulator.block.name} ({accumulator.block.path}) computed its gates "
                            f"{len(into)} times for one batch, expected once: this network calls its SE "
                            "blocks in a way the analysis does not know"
                        )
                    accumulator.add(into[0], targets)
                seen += targets.numel()
                if max_images is not None and seen >= max_images:
                    break
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("the data gave no images to analyse")
    return ExcitationStats([a.result() for a in accumulators], names, seen, _model_name(model))


def sample_indices(
    targets: Sequence[int] | None, size: int, max_images: int | None, seed: int = 0
) -> list[int]:
    """At most ``max_images`` of ``size`` items, drawn with ``seed``: stratified by class where ``targets``
    are known (classes take turns, so each gets ``max_images / classes`` or all it has), sorted by index."""
    if max_images is None or max_images >= size:
        return list(range(size))
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    rng = np.random.default_rng(seed)
    if targets is None:
        return sorted(int(i) for i in rng.choice(size, max_images, replace=False))
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    drawn = [rng.permutation(indices) for _, indices in sorted(by_class.items())]
    turns = (int(d[r]) for r in range(max(len(d) for d in drawn)) for d in drawn if r < len(d))
    # strict=False: the first max_images turns of the round robin (max_images < size here)
    return sorted(index for _, index in zip(range(max_images), turns, strict=False))


# ------------------------------------------------------------------------------------------ plots


def class_ids(names: Sequence[str] | str, classes: Sequence[str]) -> list[int]:
    """The ids of ``names`` (comma-separated or a list) among ``classes``: a class name, else an id."""
    ids: list[int] = []
    for token in _split(names):
        if token in classes:
            index = list(classes).index(token)
        elif re.fullmatch(r"\d+", token) and int(token) < len(classes):
            index = int(token)
        else:
            shown = ", ".join(classes[:8]) + (" ..." if len(classes) > 8 else "")
            raise ValueError(f"no class {token!r} in the data; its classes are {shown} (or ids 0..)")
        if index not in ids:
            ids.append(index)
    return ids


def choose_classes(stats: ExcitationStats, classes: Sequence[str] | str | None = None) -> list[int]:
    """Class ids to plot: ``classes`` as names (or ids), or up to four spread evenly over the classes seen."""
    seen = [int(c) for c in np.flatnonzero(sum(b.counts for b in stats.blocks))]
    if classes is None:
        count = min(DEFAULT_CLASSES, len(seen))
        picks = np.linspace(0, len(seen) - 1, count).round().astype(int) if count else []
        return [seen[i] for i in picks]
    chosen = class_ids(classes, stats.classes)
    for index in chosen:
        if index not in seen:
            raise ValueError(
                f"class {stats.classes[index]!r} has no image among the {stats.images} analysed: "
                "raise --max-images or choose another class"
            )
    return chosen


def sample_channels(channels: int, count: int) -> np.ndarray:
    """``count`` channel indices spread evenly over ``0..channels-1`` (all of them if there are fewer)."""
    if count < 1:
        raise ValueError(f"channels to plot must be >= 1, got {count}")
    return np.linspace(0, channels - 1, min(count, channels)).round().astype(int)


def _figure(panels: int, columns: int = 3, size: tuple[float, float] = (4.6, 3.2)) -> tuple[Any, list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows))
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(panels)]
    return figure, axes


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for axis in figure.axes:
        if axis.get_xlabel().startswith("channel"):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def _gate_limits(axis: Any, block: BlockStats) -> None:
    """The gate's whole range on the y axis for bounded gates (sigmoid: 0..1), so that panels compare."""
    if block.gate in ("sigmoid", "tanh"):
        low, high = _GATE_RANGES[block.gate]
        margin = 0.04 * (high - low)
        axis.set_ylim(low - margin, high + margin)


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "class"


def plot_excitations(
    stats: ExcitationStats,
    out_dir: str | Path,
    *,
    classes: Sequence[str] | str | None = None,
    channels: int = DEFAULT_CHANNELS,
) -> list[Path]:
    """Draw the statistics into ``out_dir`` (PNG, matplotlib's Agg backend):

    * ``excitation-classes.png`` (Fig. 6): per block, the mean gate of ``channels`` evenly spaced channels for
      each chosen class and over all images;
    * ``excitation-mean-std-<class>.png`` (Fig. 7): per chosen class, per block, mean and +-1 std over its
      images;
    * ``excitation-histograms.png``: per block, the distribution of all gate values;
    * ``class-specificity.png``: the two class-specificity measures per block (module doc).
    """
    require_matplotlib()  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = choose_classes(stats, classes)
    blocks = stats.blocks
    written: list[Path] = []
    colours = [f"C{i}" for i in range(10)]

    figure, axes = _figure(len(blocks))
    for axis, block in zip(axes, blocks, strict=True):
        picks = sample_channels(block.channels, channels)
        rows = {int(c): i for i, c in enumerate(block.class_ids)}
        means = block.class_mean
        for n, class_id in enumerate(chosen):
            label = stats.classes[class_id]
            axis.plot(
                picks, means[rows[class_id]][picks], ".-", lw=1, ms=3, color=colours[n % 10], label=label
            )
        axis.plot(picks, block.mean[picks], "--", color="black", lw=1.2, label="all classes")
        axis.set_title(f"{block.name} ({block.path})", fontsize=9)
        axis.set_xlabel(f"channel ({len(picks)} of {block.channels})", fontsize=8)
        axis.set_ylabel("mean gate", fontsize=8)
        _gate_limits(axis, block)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{stats.model}: mean excitation per channel ({stats.images} images)", fontsize=10)
    written.append(_save(figure, out / "excitation-classes.png"))

    for class_id in chosen:
        name = stats.classes[class_id]
        figure, axes = _figure(len(blocks))
        for axis, block in zip(axes, blocks, strict=True):
            picks = sample_channels(block.channels, channels)
            row = list(block.class_ids).index(class_id)
            mean, std = block.class_mean[row][picks], block.class_std[row][picks]
            axis.plot(picks, mean, ".-", lw=1, ms=3, label="mean")
            axis.fill_between(picks, mean - std, mean + std, alpha=0.3, label="+-1 std")
            axis.set_title(f"{block.name}: class {name} ({int(block.counts[class_id])} images)", fontsize=9)
            axis.set_xlabel(f"channel ({len(picks)} of {block.channels})", fontsize=8)
            axis.set_ylabel("gate", fontsize=8)
            _gate_limits(axis, block)
            axis.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        written.append(_save(figure, out / f"excitation-mean-std-{_file_part(name)}.png"))

    figure, axes = _figure(len(blocks))
    for axis, block in zip(axes, blocks, strict=True):
        edges = block.hist_edges
        share = block.hist / max(block.hist.sum(), 1)
        axis.bar(edges[:-1], share, width=np.diff(edges), align="edge", color="C0")
        axis.set_title(f"{block.name}: {block.images} images x {block.channels} channels", fontsize=9)
        axis.set_xlabel(f"gate value ({block.gate})", fontsize=8)
        axis.set_ylabel("share of gates", fontsize=8)
        axis.grid(alpha=0.3)
    written.append(_save(figure, out / "excitation-histograms.png"))

    rows = stats.specificity()
    figure, axes = _figure(2, columns=2, size=(max(4.0, 0.7 * len(rows) + 1.5), 3.4))
    labels = [row["block"] for row in rows]
    for axis, key, title in (
        (axes[0], "l1_specificity", "mean |class mean - overall mean| (gate units)"),
        (axes[1], "eta_squared", "share of gate variance between classes"),
    ):
        axis.bar(range(len(rows)), [row[key] for row in rows], color="C1")
        axis.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
        axis.set_title(title, fontsize=9)
        axis.grid(alpha=0.3, axis="y")
    axes[1].plot(range(len(rows)), [row["eta_squared_chance"] for row in rows], "k_", ms=14, label="chance")
    axes[1].legend(fontsize=7)
    figure.suptitle(f"{stats.model}: class specificity of the excitation", fontsize=10)
    written.append(_save(figure, out / "class-specificity.png"))
    return written


# ------------------------------------------------------------------------------------------ removal


@dataclass(frozen=True, eq=False)
class Removal:
    """One choice of SE blocks to remove, with its label for the table."""

    label: str
    blocks: tuple[SEBlock, ...]


def removal_choices(model: nn.Module, choices: Sequence[str | Sequence[str]] | None = None) -> list[Removal]:
    """The rows of :func:`evaluate_se_removal`: the full model first, then each of ``choices`` (names or
    wildcards, a choice's names removed together), or by default each stage's blocks (the last stage is the
    paper's Sec. 7 remark) and all blocks. Choices that remove the same blocks are merged."""
    blocks = se_blocks(model)
    _require_se(model, blocks)
    rows = [Removal("none (full model)", ())]
    if choices is not None:
        rows += [Removal(",".join(_split(c)), tuple(select_blocks(model, c))) for c in choices]
    else:
        stages = list(dict.fromkeys(b.stage for b in blocks if b.stage is not None))
        for stage in stages:
            label = f"SE_{stage}_* (stage {stage}{', the last: paper Sec. 7' if stage == stages[-1] else ''})"
            rows.append(Removal(label, tuple(b for b in blocks if b.stage == stage)))
        rows.append(Removal("all SE blocks", tuple(blocks)))
    merged: dict[frozenset[int], Removal] = {}
    for row in rows:
        key = frozenset(id(b) for b in row.blocks)
        if key in merged:
            merged[key] = Removal(f"{merged[key].label} = {row.label}", merged[key].blocks)
        else:
            merged[key] = row
    return list(merged.values())


@dataclass
class RemovalResult:
    """The error of the network with one choice of SE blocks removed, and what the removal saves."""

    label: str
    blocks: list[str]
    params_saved: int
    params_total: int
    top1_err: float
    top5_err: float
    top1_change: float  # percentage points vs the full model (the first row)
    top5_change: float
    images: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "removed": self.label,
            "blocks": " ".join(self.blocks),
            "params_saved": self.params_saved,
            "params_saved_pct": 100 * self.params_saved / self.params_total,
            "top1_err": self.top1_err,
            "top5_err": self.top5_err,
            "top1_change": self.top1_change,
            "top5_change": self.top5_change,
            "images": self.images,
        }


def evaluate_se_removal(
    model: nn.Module,
    loader: Any,
    choices: Sequence[str | Sequence[str]] | None = None,
    *,
    device: torch.device | str | None = None,
) -> list[RemovalResult]:
    """Top-1/top-5 error (%) of ``model`` on ``loader`` with each choice of SE blocks removed (gates 1,
    :func:`se_removed`), the change vs the full model, and the parameters each removal saves (the removed
    blocks' ``fc1``/``fc2``). ``choices``: see :func:`removal_choices`."""

    device = torch.device(device) if device is not None else next(model.parameters()).device
    total = sum(p.numel() for p in model.parameters())
    was_training = model.training
    results: list[RemovalResult] = []
    try:
        for removal in removal_choices(model, choices):
            with se_removed(model, list(removal.blocks)):
                metrics = evaluate(model, loader, device)
            if metrics["val_images"] == 0:
                raise ValueError("the data gave no images to evaluate on")
            top1, top5 = metrics["val_top1_err"], metrics["val_top5_err"]
            base = results[0] if results else None
            results.append(
                RemovalResult(
                    label=removal.label,
                    blocks=[b.name for b in removal.blocks],
                    params_saved=sum(b.params for b in removal.blocks),
                    params_total=total,
                    top1_err=top1,
                    top5_err=top5,
                    top1_change=top1 - base.top1_err if base else 0.0,
                    top5_change=top5 - base.top5_err if base else 0.0,
                    images=int(metrics["val_images"]),
                )
            )
    finally:
        model.train(was_training)
    return results


def format_removal_table(results: Sequence[RemovalResult]) -> str:
    """The results as a Markdown table (errors in %, changes in percentage points vs the full model)."""
    header = [
        "removed SE blocks",
        "blocks",
        "params saved",
        "top-1 err",
        "change",
        "top-5 err",
        "change",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for r in results:
        saved = f"{r.params_saved:,} ({100 * r.params_saved / r.params_total:.1f}%)"
        cells = [
            r.label,
            compress_names(r.blocks),
            saved,
            f"{r.top1_err:.2f}",
            f"{r.top1_change:+.2f}",
            f"{r.top5_err:.2f}",
            f"{r.top5_change:+.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_removal_table(results: Sequence[RemovalResult], path: str | Path) -> Path:
    """``.csv``: one row per result (``RemovalResult.as_dict``); otherwise the Markdown table."""
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        rows = [r.as_dict() for r in results]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text(format_removal_table(results) + "\n")
    return path


# ------------------------------------------------------------------------------------------ checkpoints


@dataclass
class AnalysisInput:
    """A trained network in eval mode on its device, and the data it is analysed on."""

    model: nn.Module
    dataset: Any  # the validation split
    targets: list[int] | None
    classes: list[str]
    source: str
    device: torch.device


def load_for_analysis(
    checkpoint: str | Path,
    data: str | None = None,
    *,
    data_root: str | None = None,
    weights: str = "last",
    device: str = "auto",
) -> AnalysisInput:
    """Load ``checkpoint`` (a run directory, one of its ``checkpoint-*.json``, or a senet weights file) with
    :func:`senet.load_pretrained` and build the validation split of ``data`` as ``senet eval`` does: a run on
    its own data by default, with its evaluation transform; a weights file on an image folder with its
    recorded preprocessing. Refuses a network without SE blocks and data whose classes are not the
    network's."""

    model, source, root, options, config = load_with_data_source(checkpoint, data, data_root, weights)
    info = model.pretrained_info
    if not se_blocks(model):
        raise ValueError(f"{checkpoint} holds {info.model}, which has no SE blocks; {_NO_SE_FIX}")
    spec = build_data(source, root=root, eval_crop=config.eval_crop if config else None, **options)
    if spec.num_classes != info.num_classes:
        raise ValueError(
            f"{checkpoint} predicts {info.num_classes} classes; {source} has {spec.num_classes}: "
            "give the data it was trained on (--data)"
        )
    if config is not None and info.labels and list(spec.classes) != list(info.labels):
        differ = next(i for i, (a, b) in enumerate(zip(spec.classes, info.labels, strict=True)) if a != b)
        raise ValueError(
            f"{checkpoint} was trained on other classes than {source} holds (class {differ}: "
            f"{info.labels[differ]!r} there, {spec.classes[differ]!r} here): "
            "give the data it was trained on (--data)"
        )
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels != spec.in_chans:
        raise ValueError(
            f"{checkpoint} takes {first_conv.in_channels}-channel images; {source} has {spec.in_chans}: "
            "give the data it was trained on (--data)"
        )
    target = resolve_device(device)
    targets = getattr(spec.val, "targets", None)
    return AnalysisInput(
        model.to(target),
        spec.val,
        list(targets) if targets is not None else None,
        spec.classes,
        source,
        target,
    )


def _loader(inputs: AnalysisInput, max_images: int | None, seed: int, batch_size: int, workers: int) -> Any:
    from torch.utils.data import Subset

    indices = sample_indices(inputs.targets, len(inputs.dataset), max_images, seed)
    dataset = inputs.dataset if len(indices) == len(inputs.dataset) else Subset(inputs.dataset, indices)
    return build_loader(
        dataset,
        batch_size=batch_size,
        train=False,
        workers=workers,
        pin_memory=inputs.device.type == "cuda",
    )


def analyze_excitation(
    checkpoint: str | Path,
    data: str | None,
    output: str | Path,
    *,
    blocks: str | Sequence[str] | None = None,
    classes: str | Sequence[str] | None = None,
    max_images: int | None = DEFAULT_MAX_IMAGES,
    channels: int = DEFAULT_CHANNELS,
    seed: int = 0,
    data_root: str | None = None,
    weights: str = "last",
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    figures: bool = True,
) -> tuple[ExcitationStats, list[Path]]:
    """``senet analyze excitation``: collect the gates of ``blocks`` over a stratified sample of at most
    ``max_images`` validation images (``None``: all), write the statistics and (with ``figures``, which need
    matplotlib) the figures into ``output``."""
    if channels < 1:
        raise ValueError(f"--channels must be >= 1, got {channels}")
    inputs = load_for_analysis(checkpoint, data, data_root=data_root, weights=weights, device=device)
    chosen = select_blocks(inputs.model, blocks)
    if classes is not None:
        class_ids(classes, inputs.classes)  # an unknown class fails before the images are run
    loader = _loader(inputs, max_images, seed, batch_size, workers)
    stats = collect_excitations(inputs.model, loader, chosen, classes=inputs.classes, device=inputs.device)
    choose_classes(stats, classes)  # a class without images fails before anything is written
    written = stats.save(output)
    if figures:
        written += plot_excitations(stats, output, classes=classes, channels=channels)
    return stats, written


def analyze_se_removal(
    checkpoint: str | Path,
    data: str | None = None,
    *,
    choices: Sequence[str | Sequence[str]] | None = None,
    max_images: int | None = None,
    seed: int = 0,
    data_root: str | None = None,
    weights: str = "last",
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
) -> tuple[list[RemovalResult], AnalysisInput]:
    """``senet analyze remove-se``: :func:`evaluate_se_removal` on the validation split (all of it, or a
    stratified sample of ``max_images``)."""
    inputs = load_for_analysis(checkpoint, data, data_root=data_root, weights=weights, device=device)
    removal_choices(inputs.model, choices)  # unknown names fail before the first evaluation
    loader = _loader(inputs, max_images, seed, batch_size, workers)
    return evaluate_se_removal(inputs.model, loader, choices, device=inputs.device), inputs
