"""DataLoaders: epoch-deterministic samplers, class-balanced sampling, and a collate that drops unreadable
images.

Every loader yields ``(images, targets, num_skipped)``. Sample order is a pure function of ``(seed, epoch)``
(the engine calls ``loader.sampler.set_epoch(epoch)`` every epoch), so a resumed run replays epoch e exactly.
Packed shards (``senet.data.shards.ShardDataset``, and any dataset that gives its ``shard_sizes``) are read
shard by shard (``_ShardSampler``).
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import signal
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

Batch = tuple[torch.Tensor, torch.Tensor, int]


def _generator(*keys: int) -> torch.Generator:
    """A generator whose stream depends on ``keys`` only, e.g. (seed, epoch); SeedSequence keeps (0, 1) and
    (1, 0) apart, which ``seed + epoch`` would not."""
    state = np.random.SeedSequence(list(keys)).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class _ResumableSampler(Sampler[int]):
    """An epoch's order as a pure function of ``(seed, epoch)``, from any position in it.

    ``set_epoch(epoch, start)`` yields that epoch's indices from the ``start``-th on: a run resumed mid-epoch
    continues with exactly the samples it had not trained on, without loading the ones it had.
    """

    epoch = 0
    start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch = epoch
        self.start = start

    def _order(self) -> list[int]:
        raise NotImplementedError

    def _full_length(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return max(0, self._full_length() - self.start)


class _EpochSampler(_ResumableSampler):
    """All indices once per epoch: in order, or shuffled by a generator seeded from (seed, epoch)."""

    def __init__(self, length: int, *, shuffle: bool, seed: int) -> None:
        self.length = length
        self.shuffle = shuffle
        self.seed = seed

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.length))
        return torch.randperm(self.length, generator=_generator(self.seed, self.epoch)).tolist()

    def _full_length(self) -> int:
        return self.length


class _ClassBalancedSampler(_ResumableSampler):
    """Class-balanced sampling with replacement: every draw picks each class with equal probability.

    The data balancing for minibatch sampling of the paper's CVPR version (Sec. 5.1 there), after Shen et al.,
    "Relay Backpropagation for Effective Learning of Deep Convolutional Neural Networks" (ECCV 2016), which
    keeps rare classes of long-tailed sets such as Places365 in the minibatches. An epoch is ``len(targets)``
    draws; with several replicas every rank computes the same global draw and keeps its own strided shard.
    """

    def __init__(self, targets: Sequence[int], *, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if not targets:
            raise ValueError("balanced sampling needs a non-empty list of training targets")
        labels = torch.as_tensor(list(targets), dtype=torch.long)
        counts = torch.bincount(labels)
        # Weight 1/count per item: each class's items sum to 1, so each (present) class is equally likely.
        self.weights = 1.0 / counts[labels].double()
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.num_samples = math.ceil(len(labels) / num_replicas)

    def _order(self) -> list[int]:
        total = self.num_samples * self.num_replicas
        draws = torch.multinomial(
            self.weights, total, replacement=True, generator=_generator(self.seed, self.epoch)
        )
        return draws[self.rank :: self.num_replicas].tolist()

    def _full_length(self) -> int:
        return self.num_samples


class _DistributedEpochSampler(_ResumableSampler, DistributedSampler):
    """torch's DistributedSampler (each rank a strided shard of one shuffled order), resumable."""

    def _order(self) -> list[int]:
        return list(DistributedSampler.__iter__(self))

    def _full_length(self) -> int:
        return self.num_samples


class _ShardSampler(_ResumableSampler):
    """Shard-local order for packed shards: each epoch visits the shards in a shuffled order and the samples
    of each shard in a shuffled order, so that a store is read one shard at a time (a pure function of
    ``(seed, epoch)``). Unshuffled: the stored order, shard after shard.

    With several replicas every rank computes the same global order, padded like DistributedSampler's (its
    first samples repeated) to ``num_replicas * ceil(n / num_replicas)``, and takes its own contiguous
    ``ceil(n / num_replicas)`` of it: every rank makes the same number of steps, no sample is dropped (a few,
    fewer than the ranks, count twice per epoch), and each shard is read by one rank, except those that
    straddle two ranks' parts.
    """

    def __init__(
        self, shard_sizes: Sequence[int], *, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.shard_sizes = [int(n) for n in shard_sizes]
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.total = sum(self.shard_sizes)
        self.num_samples = math.ceil(self.total / num_replicas)

    def _global_order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.total)
        generator = _generator(self.seed, self.epoch)
        starts = [0, *np.cumsum(self.shard_sizes)[:-1].tolist()]
        shards = torch.randperm(len(self.shard_sizes), generator=generator).tolist()
        parts = [starts[s] + torch.randperm(self.shard_sizes[s], generator=generator) for s in shards]
        return torch.cat(parts) if parts else torch.arange(0)

    def _order(self) -> list[int]:
        order = self._global_order()
        padding = self.num_samples * self.num_replicas - self.total
        if padding and self.total:
            order = torch.cat([order, order.repeat(math.ceil(padding / self.total))[:padding]])
        return order[self.rank * self.num_samples : (self.rank + 1) * self.num_samples].tolist()

    def _full_length(self) -> int:
        return self.num_samples


def _collate_skipping(batch: list[tuple[torch.Tensor, int] | None]) -> Batch:
    """Stack the readable items; the datasets return None for an unreadable image, counted in
    ``num_skipped``."""
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if not kept:  # every image of the batch was unreadable: an empty batch the engine can step over
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(kept)
    return images, targets, skipped


# Workers ignore SIGTERM (below), so neither torch's fallback nor multiprocessing's exit handler can terminate
# them: a worker still running at exit (its loader kept by a traceback, or collected while the worker missed
# torch's join timeout) would hang the interpreter in multiprocessing's join of its children. They are shut
# down here first (atexit runs the last registered first; multiprocessing registered its handler when torch
# imported it).
_LOADERS_WITH_WORKERS: weakref.WeakSet[DataLoader[Any]] = weakref.WeakSet()


def shutdown_workers(loader: DataLoader[Any]) -> None:
    """Stop ``loader``'s persistent workers now, rather than whenever the loader is garbage-collected; the
    next iteration starts new ones. Workers that do not leave on the shutdown message are killed."""
    iterator = loader._iterator  # where a persistent-workers loader keeps its workers (as Lightning does)
    loader._iterator = None
    if iterator is None or not hasattr(iterator, "_shutdown_workers"):
        return
    workers = list(iterator._workers)
    iterator._shutdown_workers()
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join()


@atexit.register
def shutdown_all_loaders() -> None:
    """What happens at exit: every loader still alive shuts its workers down; then the daemonic children,
    which multiprocessing terminates at exit, are terminated here, and killed after a second if they ignore
    SIGTERM, as our workers do (one whose loader was collected is still running if it missed torch's join
    timeout)."""
    for loader in list(_LOADERS_WITH_WORKERS):
        shutdown_workers(loader)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.terminate()
            child.join(timeout=1)
            if child.is_alive():
                child.kill()
                child.join()


def _init_worker(worker_id: int) -> None:
    # The DataLoader already seeds torch, random and numpy per worker from its generator; one thread each
    # keeps `workers` processes from oversubscribing the cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group and a scheduler's SIGTERM may too: the main process decides when
    # to stop (after saving, see senet.train.control); a worker that died first would break its last batch.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def _distributed_world() -> tuple[int, int]:
    """(world size, rank) of the initialised default process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group; "
            "launch with torchrun and call init_process_group first, or pass distributed=False"
        )
    return dist.get_world_size(), dist.get_rank()


def _make_sampler(
    length: int,
    *,
    train: bool,
    seed: int,
    world: tuple[int, int] | None,
    balanced_targets: Sequence[int] | None,
    shard_sizes: Sequence[int] | None = None,
) -> Sampler[int]:
    """The sampler for ``build_loader``; ``world`` is (num_replicas, rank) when distributed, ``shard_sizes``
    the sample counts of packed shards (then read shard by shard)."""
    num_replicas, rank = world or (1, 0)
    if balanced_targets is not None:
        if not train:
            raise ValueError(
                "balanced_targets is for training loaders; evaluate on the data as it is (train=False)"
            )
        if len(balanced_targets) != length:
            raise ValueError(
                f"balanced_targets has {len(balanced_targets)} labels but the dataset has {length} items; "
                "pass the DataSpec's train_targets with its train dataset"
            )
        return _ClassBalancedSampler(balanced_targets, seed=seed, num_replicas=num_replicas, rank=rank)
    if shard_sizes is not None:
        return _ShardSampler(shard_sizes, shuffle=train, seed=seed, num_replicas=num_replicas, rank=rank)
    if world is not None:
        # Eval shards are padded by DistributedSampler to equal length: a few items count twice.
        return _DistributedEpochSampler(
            range(length), num_replicas=num_replicas, rank=rank, shuffle=train, seed=seed
        )
    return _EpochSampler(length, shuffle=train, seed=seed)


def build_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    balanced_targets: list[int] | None = None,
    pin_memory: bool = False,
    drop_last: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """A DataLoader over ``dataset`` yielding ``(images, targets, num_skipped)`` batches.

    Args:
        dataset: a ``DataSpec.train`` / ``.val`` dataset (items ``(image, label)``, or None when unreadable).
        batch_size: items per batch, before unreadable ones are dropped.
        train: shuffle (epoch order a function of ``(seed, epoch)``) and, by default, drop the last partial
            batch.
        workers: loader processes; > 0 keeps them alive across epochs, one torch thread each.
        seed: seeds the sample order and the per-worker augmentation RNG.
        distributed: shard across the ranks of the initialised process group (DistributedSampler; packed
            shards: contiguous parts of the shard-local order, see ``_ShardSampler``).
        balanced_targets: the label of every item; draws classes with equal probability (data balancing).
        pin_memory: pin batches for faster host-to-GPU copies.
        drop_last: overrides the ``train`` default.
        collate_fn: turns a list of items (None where unreadable) into a batch; default: stacked images and
            labels, unreadable items dropped and counted (``senet.detection.data.collate`` for detection).

    ``loader.sampler.set_epoch(epoch, start=0)`` exists in every mode (``start``: skip the epoch's first
    indices, to resume mid-epoch). A dataset with ``shard_sizes`` (a ``ShardDataset``, or the GPU loader's
    dataset of one) is read shard by shard (``_ShardSampler``), unless ``balanced_targets`` asks for
    class-balanced draws. A batch whose images were all unreadable is
    empty (``targets.numel() == 0``) with ``num_skipped == batch_size``; skip it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    world = _distributed_world() if distributed else None
    sampler = _make_sampler(
        len(dataset),  # type: ignore[arg-type]
        train=train,
        seed=seed,
        world=world,
        balanced_targets=balanced_targets,
        shard_sizes=getattr(dataset, "shard_sizes", None),  # read shard by shard: see _ShardSampler
    )
    rank = world[1] if world else 0
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn or _collate_skipping,
        pin_memory=pin_memory,
        drop_last=train if drop_last is None else drop_last,
        worker_init_fn=_init_worker if workers > 0 else None,
        persistent_workers=workers > 0,
        # Only the workers' base seeds come from this generator (the sampler has its own per epoch); the rank
        # keeps the ranks' workers from drawing the same augmentations.
        generator=_generator(seed, rank),
    )
    if workers > 0:
        _LOADERS_WITH_WORKERS.add(loader)
    return loader
