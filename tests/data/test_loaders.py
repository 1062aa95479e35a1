"""build_loader: batch triples, deterministic epoch orders, class balancing, distributed shards, workers."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch import distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from senet.data import build_data, build_loader


class _Indices(Dataset):
    """Item i is (a dummy image, i): a loader's targets are then its sample order."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(1, 2, 2), index

    def __len__(self) -> int:
        return self.length


class _Threads(_Indices):
    """Item i reports the torch thread count of the process that loaded it."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(1, 2, 2), torch.get_num_threads()


def _order(loader, epoch: int | None = None) -> list[int]:
    if epoch is not None:
        loader.sampler.set_epoch(epoch)
    return [i for _, targets, _ in loader for i in targets.tolist()]


def test_digits_batches_are_triples():
    spec = build_data("digits")
    images, targets, skipped = next(iter(build_loader(spec.train, batch_size=8, train=True)))
    assert images.shape == (8, 1, 32, 32) and images.dtype == torch.float32
    assert targets.shape == (8,) and targets.dtype == torch.int64
    assert skipped == 0 and type(skipped) is int


def test_eval_order_is_sequential_and_keeps_the_last_batch():
    loader = build_loader(_Indices(10), batch_size=4, train=False)
    assert _order(loader) == list(range(10))
    loader.sampler.set_epoch(3)  # exists for every loader, changes nothing here
    assert _order(loader) == list(range(10))


def test_train_order_is_a_function_of_seed_and_epoch():
    first = build_loader(_Indices(20), batch_size=4, train=True, seed=7)
    epoch0, epoch1 = _order(first, 0), _order(first, 1)
    assert sorted(epoch0) == list(range(20)) and epoch0 != list(range(20))
    assert epoch1 != epoch0
    # A restarted run (a new loader) replays any epoch exactly.
    restarted = build_loader(_Indices(20), batch_size=4, train=True, seed=7)
    assert _order(restarted, 1) == epoch1 and _order(restarted, 0) == epoch0
    assert _order(build_loader(_Indices(20), batch_size=4, train=True, seed=8), 0) != epoch0


def test_train_drops_the_last_partial_batch_by_default():
    assert len(build_loader(_Indices(10), batch_size=4, train=True)) == 2
    assert len(build_loader(_Indices(10), batch_size=4, train=True, drop_last=False)) == 3


def test_balanced_sampler_draws_classes_equally():
    targets = [0] * 90 + [1] * 9 + [2] * 1
    loader = build_loader(_Indices(100), batch_size=10, train=True, seed=1, balanced_targets=targets)
    drawn = [targets[i] for epoch in range(10) for i in _order(loader, epoch)]
    assert len(drawn) == 1000
    assert (
        all(abs(count / 1000 - 1 / 3) < 0.06 for count in Counter(drawn).values())
        and len(Counter(drawn)) == 3
    )
    again = build_loader(_Indices(100), batch_size=10, train=True, seed=1, balanced_targets=targets)
    assert _order(again, 4) == _order(loader, 4) and _order(loader, 4) != _order(loader, 5)


def test_balanced_targets_must_match_the_dataset():
    with pytest.raises(ValueError, match="balanced_targets has 3 labels"):
        build_loader(_Indices(4), batch_size=2, train=True, balanced_targets=[0, 1, 1])


@pytest.fixture
def two_ranks(monkeypatch: pytest.MonkeyPatch):
    """Pretend to be rank `rank` of a 2-process group, without initialising one."""

    def as_rank(rank: int) -> None:
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)

    return as_rank


def test_distributed_shards_are_disjoint_and_cover_the_data(two_ranks):
    orders = []
    for rank in (0, 1):
        two_ranks(rank)
        loader = build_loader(_Indices(20), batch_size=5, train=True, seed=3, distributed=True)
        assert isinstance(loader.sampler, DistributedSampler)
        orders.append(_order(loader, 2))
    assert len(orders[0]) == len(orders[1]) == 10
    assert sorted(orders[0] + orders[1]) == list(range(20))


def test_distributed_balanced_sampler_shards_one_global_draw(two_ranks):
    targets = [0] * 15 + [1] * 5
    loader = build_loader(_Indices(20), batch_size=5, train=True, seed=3, balanced_targets=targets)
    global_draw = _order(loader, 2)
    for rank in (0, 1):
        two_ranks(rank)
        shard = build_loader(
            _Indices(20), batch_size=5, train=True, seed=3, distributed=True, balanced_targets=targets
        )
        assert _order(shard, 2) == global_draw[rank::2]


def test_distributed_needs_a_process_group():
    with pytest.raises(ValueError, match="process group"):
        build_loader(_Indices(4), batch_size=2, train=True, distributed=True)


def test_workers_give_the_same_batches_with_one_thread_each():
    loader = build_loader(_Indices(10), batch_size=4, train=True, seed=5, workers=1)
    assert loader.persistent_workers
    assert _order(loader, 1) == _order(build_loader(_Indices(10), batch_size=4, train=True, seed=5), 1)
    threads = build_loader(_Threads(4), batch_size=4, train=False, workers=1)
    assert _order(threads) == [1, 1, 1, 1]


@pytest.mark.parametrize(
    "options, message",
    [({"batch_size": 0}, "batch_size"), ({"workers": -1}, "workers"), ({"seed": -1}, "seed")],
)
def test_bad_arguments(options, message):
    kwargs = {"batch_size": 2, "train": True, **options}
    with pytest.raises(ValueError, match=message):
        build_loader(_Indices(4), **kwargs)


class _Counting(_Indices):
    """Counts the items it was asked to load."""

    loaded = 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.loaded += 1
        return super().__getitem__(index)


@pytest.mark.parametrize("mode", ["shuffled", "balanced", "distributed"])
def test_resuming_mid_epoch_continues_the_order_without_loading_what_was_done(two_ranks, mode):
    options = {"balanced_targets": [i % 3 for i in range(23)]} if mode == "balanced" else {}
    if mode == "distributed":
        two_ranks(1)
        options = {"distributed": True}
    full = _order(build_loader(_Indices(23), batch_size=4, train=True, seed=5, **options), 3)
    dataset = _Counting(23)
    loader = build_loader(dataset, batch_size=4, train=True, seed=5, **options)
    loader.sampler.set_epoch(3, start=2 * 4)  # two batches of epoch 3 were trained on before the interruption
    assert len(loader) == len(full) // 4 - 2
    assert _order(loader) == full[8:]
    assert dataset.loaded == len(full) - 8  # the skipped batches were never loaded
    loader.sampler.set_epoch(4)  # the next epoch starts from its beginning again
    assert len(_order(loader)) == len(full)


def test_with_workers_a_resumed_epoch_keeps_the_sample_order():
    full = _order(build_loader(_Indices(23), batch_size=4, train=True, seed=5), 3)
    loader = build_loader(_Indices(23), batch_size=4, train=True, seed=5, workers=2)
    loader.sampler.set_epoch(3, start=8)
    assert _order(loader) == full[8:]


_LOADER_LEFT_ALIVE_AT_EXIT = """
import sys
from senet.data import build_data, build_loader

spec = build_data("digits")
loader = build_loader(spec.train, batch_size=8, train=True, workers=2)
next(iter(loader))
# An exception's traceback that refers to the loader keeps it (and its persistent workers) alive until exit,
# as pytest.raises does; the workers ignore SIGTERM, so multiprocessing's exit handler cannot terminate them.
try:
    raise RuntimeError(loader)
except RuntimeError as error:
    kept = error
sys.exit(0)
"""


def test_workers_still_running_at_exit_do_not_hang_the_interpreter():
    done = subprocess.run(
        [sys.executable, "-c", _LOADER_LEFT_ALIVE_AT_EXIT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
