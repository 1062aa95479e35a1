"""Packed tar shards: senet data pack / verify, reading them through build_data, the shard-local sampler."""

from __future__ import annotations

import json
import logging
import pickle
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import distributed as dist

from senet.cli import main
from senet.data import build_data, build_loader, pack_folder, verify_shards
from senet.data import shards as S
from senet.data.loaders import _ClassBalancedSampler, _ShardSampler, shutdown_workers


def _pack(root: Path, out: Path, **options) -> Path:
    return pack_folder(root, out, images_per_shard=options.pop("images_per_shard", 5), **options)


def _index(path: Path) -> dict:
    return json.loads(path.read_text())


def _pixels(image: Image.Image) -> bytes:
    return np.asarray(image).tobytes()


@pytest.fixture
def packed(make_folder, tmp_path) -> tuple[Path, Path]:
    """(image folder of 3 classes x 4 images a split, the index of its shards: 5 images a shard at most)."""
    root = make_folder()
    return root, _pack(root, tmp_path / "shards")


def test_pack_then_read_gives_the_folder_images_and_labels(packed):
    root, index = packed
    folder, shards = build_data(str(root), image_size=32), build_data(str(index), image_size=32)
    assert (shards.name, shards.classes, shards.num_classes) == ("shards", folder.classes, 3)
    assert sorted(shards.train_targets) == sorted(folder.train_targets) and len(shards.train) == 12
    for split in ("train", "val"):
        ours, theirs = getattr(shards, split), getattr(folder, split)
        assert Counter((_pixels(ours.load_image(i)), ours.targets[i]) for i in range(len(ours))) == Counter(
            (_pixels(theirs.loader(path)), label) for path, label in theirs.samples
        )
    # The same evaluation transform: the same tensors.
    as_set = sorted((label, image.numpy().tobytes()) for image, label in (shards.val[i] for i in range(12)))
    assert as_set == sorted(
        (label, image.numpy().tobytes()) for image, label in (folder.val[i] for i in range(12))
    )
    # Samples were shuffled before sharding: the first shard is not the first class's images.
    assert S.SPLITS == ("train", "val") and shards.train.shard_sizes == [4, 4, 4]
    assert len(set(shards.train.targets[:4])) > 1


def test_repacking_is_byte_identical_and_the_seed_changes_the_order(packed, tmp_path):
    root, index = packed
    again = _pack(root, tmp_path / "again")
    files = sorted(p.name for p in index.parent.iterdir())
    assert (
        files
        == sorted(p.name for p in again.parent.iterdir())
        == [
            "index.json",
            *(f"{split}-00000{k}.tar" for split in ("train", "val") for k in range(3)),
        ]
    )
    assert all((index.parent / name).read_bytes() == (again.parent / name).read_bytes() for name in files)
    other = _index(_pack(root, tmp_path / "seed1", seed=1))
    assert (
        other["splits"]["train"]["shards"][0]["keys"] != _index(index)["splits"]["train"]["shards"][0]["keys"]
    )


def test_shards_follow_webdataset_conventions(make_folder, tmp_path):
    root = make_folder(classes=("cat", "dog"), per_class=3)
    Image.new("RGB", (20, 10), "red").save(root / "train" / "cat" / "red.png")
    index = _pack(root, tmp_path / "shards", images_per_shard=3)
    record = _index(index)
    assert record["classes"] == ["cat", "dog"] and record["format"] == "senet-shards"
    seen = []
    for shard in record["splits"]["train"]["shards"]:
        with tarfile.open(index.parent / shard["name"]) as tar:
            members = tar.getmembers()
            assert len(members) == 2 * shard["samples"]
            assert all((m.mtime, m.uid, m.gid, m.uname, m.mode) == (0, 0, 0, "", 0o644) for m in members)
            for n, (image, label) in enumerate(zip(members[::2], members[1::2], strict=True)):
                key, extension = image.name.split(".", 1)
                assert label.name == f"{key}.cls" and key == shard["keys"][n]
                assert tar.extractfile(label).read() == str(shard["labels"][n]).encode("ascii")
                assert (image.offset_data, image.size) == (shard["offsets"][n], shard["sizes"][n])
                cls, stem = key.split("/")
                original = root / "train" / cls / f"{stem}.{'png' if extension == 'png' else 'jpg'}"
                assert tar.extractfile(image).read() == original.read_bytes()  # stored, not re-encoded
                assert shard["labels"][n] == ["cat", "dog"].index(cls)
                seen.append(image.name)
    assert len(seen) == 7 and "cat/red.png" in seen and sum(name.endswith(".jpg") for name in seen) == 6


def test_a_file_url_works_like_a_path(packed):
    _, index = packed
    by_path = build_data(str(index.parent), image_size=32)
    by_url = build_data(index.parent.resolve().as_uri(), image_size=32)
    by_index_url = build_data(index.resolve().as_uri(), image_size=32)
    assert by_url.train_targets == by_path.train_targets == by_index_url.train_targets
    assert by_url.train.shard_urls[0].startswith("file://")
    assert all(torch.equal(by_url.val[i][0], by_path.val[i][0]) for i in range(12))


def test_the_shard_sampler_reads_shard_by_shard_and_resumes():
    sizes = [5, 3, 4]
    shard_of = [s for s, n in enumerate(sizes) for _ in range(n)]
    sampler = _ShardSampler(sizes, shuffle=True, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(12)) and len(sampler) == 12
        runs = [shard_of[i] for n, i in enumerate(order) if n == 0 or shard_of[i] != shard_of[order[n - 1]]]
        assert sorted(runs) == [0, 1, 2]  # each shard's samples come together
        orders.append(order)
    assert len({tuple(o) for o in orders}) == 3 and orders[0] != list(range(12))
    sampler.set_epoch(1, start=7)
    assert list(sampler) == orders[1][7:] and len(sampler) == 5
    restarted = _ShardSampler(sizes, shuffle=True, seed=3)  # a resumed run: a new sampler, the same order
    restarted.set_epoch(2)
    assert list(restarted) == orders[2]
    unshuffled = _ShardSampler(sizes, shuffle=False, seed=3)
    unshuffled.set_epoch(5)
    assert list(unshuffled) == list(range(12))


@pytest.mark.parametrize("shuffle", [True, False])
def test_two_replicas_get_disjoint_equal_parts(shuffle):
    sizes = [4, 4, 3]  # 11 samples: padded to 12, one sample counts twice
    parts = []
    for rank in (0, 1):
        sampler = _ShardSampler(sizes, shuffle=shuffle, seed=1, num_replicas=2, rank=rank)
        sampler.set_epoch(4)
        parts.append(list(sampler))
    assert len(parts[0]) == len(parts[1]) == 6
    assert set(parts[0] + parts[1]) == set(range(11)) and len(set(parts[0]) & set(parts[1])) <= 1
    assert len(set(parts[0])) == 6  # the repeated sample is the order's first, on the last rank
    sampler.set_epoch(4, start=2)
    assert list(sampler) == parts[1][2:]


def test_build_loader_gives_shards_their_sampler_also_distributed(packed, monkeypatch):
    from senet.data.device_pipeline import build_raw_loader, device_pipeline_datasets

    spec = build_data(str(packed[1]), image_size=16)
    raw_train, _, _ = device_pipeline_datasets(spec)  # the GPU loader's dataset is read shard by shard too
    assert isinstance(build_raw_loader(raw_train, batch_size=4, train=True).sampler, _ShardSampler)
    assert isinstance(build_loader(spec.train, batch_size=4, train=True).sampler, _ShardSampler)
    assert isinstance(build_loader(spec.val, batch_size=4, train=False).sampler, _ShardSampler)
    balanced = build_loader(spec.train, batch_size=4, train=True, balanced_targets=spec.train_targets)
    assert isinstance(balanced.sampler, _ClassBalancedSampler)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    labels = []
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, rank=rank: rank)
        loader = build_loader(spec.train, batch_size=3, train=True, seed=2, distributed=True)
        loader.sampler.set_epoch(1)
        assert len(loader) == 2
        labels += [t for _, targets, _ in loader for t in targets.tolist()]
    assert sorted(labels) == sorted(spec.train_targets)


@pytest.fixture
def corrupt_packed(make_folder, tmp_path) -> Path:
    """The index of a pack whose train/dog/1.jpg is garbage."""
    root = make_folder()
    (root / "train" / "dog" / "1.jpg").write_bytes(b"\x00garbage, not a JPEG" * 10)
    return _pack(root, tmp_path / "shards")


def test_a_corrupt_image_is_skipped_counted_and_warned_once(corrupt_packed, caplog):
    spec = build_data(str(corrupt_packed), image_size=16)
    loader = build_loader(spec.train, batch_size=12, train=False)
    with caplog.at_level(logging.WARNING, logger="senet.data"):
        for _ in range(2):
            images, targets, skipped = next(iter(loader))
            assert skipped == 1 and images.shape == (11, 3, 16, 16) and targets.shape == (11,)
    warnings = [record.getMessage() for record in caplog.records if record.name == "senet.data"]
    assert len(warnings) == 1 and "dog/1 in shard" in warnings[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_strict_data_makes_a_corrupt_image_fatal_naming_shard_and_key(corrupt_packed, workers):
    spec = build_data(str(corrupt_packed), image_size=16, strict_data=True)
    loader = build_loader(spec.train, batch_size=12, train=False, workers=workers)
    with pytest.raises(
        ValueError, match=r"unreadable image dog/1 in shard .*train-00000\d\.tar.*--strict-data"
    ):
        next(iter(loader))
    shutdown_workers(loader)  # now: left to the collector, the failed worker's shutdown took 10 s


def test_verify_finds_an_altered_or_truncated_shard(packed, capsys):
    _, index = packed
    assert [report.samples for report in verify_shards(str(index))] == [4] * 6
    assert main(["data", "verify", str(index)]) == 0
    assert "all 6 shards match the index (24 images)" in capsys.readouterr().out
    shard = index.parent / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    offset = _index(index)["splits"]["train"]["shards"][1]["offsets"][2]
    data[offset + 600] ^= 0xFF  # one pixel's worth: the tar still reads, the checksum does not match
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"train-000001\.tar: SHA-256 .* differs from the index"):
        verify_shards(str(index))
    shard.write_bytes(bytes(data[: len(data) // 2]))
    assert main(["data", "verify", str(index.parent)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert re.match(r"senet data: error: shard .*train-000001\.tar: \d+ bytes, the index says", err)
    # Training refuses it up front too: from the listing's sizes, without reading the shards.
    with pytest.raises(ValueError, match=r"train-000001\.tar is \d+ bytes, the index says"):
        build_data(str(index))
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"train-000001\.tar of .* is missing"):
        build_data(str(index))


def test_a_pack_that_dies_midway_leaves_no_partial_shard_and_no_index(make_folder, tmp_path, monkeypatch):
    root, out = make_folder(), tmp_path / "shards"
    out.mkdir()
    (out / ".train-000000.tar.x1y2.tmp").write_bytes(b"left by a pack killed earlier")
    calls = 0
    add = S._add

    def dying(tar, name, data):
        nonlocal calls
        calls += 1
        if calls == 13:  # two members a sample, 4 samples a shard: midway through the second shard
            raise KeyboardInterrupt
        return add(tar, name, data)

    monkeypatch.setattr(S, "_add", dying)
    with pytest.raises(KeyboardInterrupt):
        pack_folder(root, out, images_per_shard=5)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["train-000000.tar"]  # the one shard completed, whole
    complete = out / "train-000000.tar"
    index = pack_folder(root, out, images_per_shard=5)  # no index yet: no --overwrite needed
    assert complete.is_file() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert verify_shards(str(index))


def test_an_existing_index_is_refused_unless_overwrite(packed, make_folder, tmp_path, capsys):
    root, index = packed
    with pytest.raises(ValueError, match=r"already holds a shard index .*overwrite"):
        pack_folder(root, index.parent)
    # Fewer, larger shards replace the old ones; none of the old is left over.
    pack_folder(root, index.parent, images_per_shard=100, overwrite=True)
    assert sorted(p.name for p in index.parent.iterdir()) == [
        "index.json",
        "train-000000.tar",
        "val-000000.tar",
    ]
    assert main(["data", "pack", str(root), "--out", str(index.parent)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(
        ValueError, match=r"is .*images or inside it; write the shards outside the image folder"
    ):
        pack_folder(root, root)
    with pytest.raises(ValueError, match=r"inside it"):
        pack_folder(root, root / "train" / "shards")
    with pytest.raises(FileNotFoundError, match=r"no index\.json in .*senet data pack"):
        verify_shards(str(root))
    (tmp_path / "index.json").write_text('{"format": "senet-shards", "version": 1, "classes": []}')
    with pytest.raises(ValueError, match=r"index\.json is damaged \(KeyError: 'splits'\)"):
        build_data(str(tmp_path / "index.json"))
    # A folder without the layout gets build_data's errors.
    (root / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError) as raised:
        build_data(str(root))
    with pytest.raises(FileNotFoundError, match=re.escape(str(raised.value))):
        pack_folder(root, tmp_path / "other")


def test_cli_pack_prints_the_index_and_counts(make_folder, tmp_path, capsys):
    root, out = make_folder(per_class=2), tmp_path / "out"
    assert main(["data", "pack", str(root), "--out", str(out), "--images-per-shard", "4", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert (
        captured.out
        == f"wrote {out / 'index.json'}: 3 classes; train 6 images in 2 shards, val 6 images in 2 shards\n"
    )
    assert "wrote train-000001.tar (3 images)" in captured.err
    assert _index(out / "index.json")["seed"] == 3


def test_reads_are_retried_then_name_the_url(packed, monkeypatch):
    spec = build_data(str(packed[1]), image_size=16)
    dataset = spec.train
    monkeypatch.setattr(S, "_RETRY_DELAYS_S", (0.0, 0.0))
    opened = []
    real_filesystem = S._filesystem

    failures = [0]  # reads that fail from now on, over all handles

    class Flaky:
        def __init__(self, handle):
            self.handle = handle

        def seek(self, offset):
            return self.handle.seek(offset)

        def read(self, size):
            if failures[0]:
                failures[0] -= 1
                raise ConnectionResetError("connection reset by peer")
            return self.handle.read(size)

        def close(self):
            self.handle.close()

    def filesystem(url):
        fs, path = real_filesystem(url)
        opened.append(url)

        class Wrapped:
            def open(self, path, mode, **kwargs):
                return Flaky(fs.open(path, mode, **kwargs))

        return Wrapped(), path

    monkeypatch.setattr(S, "_filesystem", filesystem)
    dataset.close()
    failures[0] = 1
    assert dataset[0] is not None and len(opened) == 2  # reopened after the failed read
    failures[0] = 3
    with pytest.raises(OSError, match=r"cannot read .*train-000000\.tar \(sample .*\) after 3 attempts"):
        dataset[0]


def test_datasets_open_shards_lazily_and_pickle_without_them(packed):
    dataset = build_data(str(packed[1]), image_size=16).train
    dataset.close()
    assert dataset[5] is not None and len(dataset._handles) == 1
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handles == {} and _pixels(clone.load_image(5)) == _pixels(dataset.load_image(5))
    assert len(clone._handles) == 1 and clone._handles[1] is not dataset._handles[1]
    assert S._storage_options("s3")["config_kwargs"] == {"connect_timeout": 60.0, "read_timeout": 60.0}
    assert S._storage_options("file") == {}


def test_training_runs_from_shards(packed, tmp_path):
    from senet.train import TrainConfig, train

    config = TrainConfig(
        model="resnet20_cifar",
        model_options={"widths": (4, 4, 4)},
        data=str(packed[1]),
        image_size=16,
        epochs=1,
        batch_size=4,
        lr=0.05,
        output=str(tmp_path / "run"),
        log_interval=0,
        device="cpu",
        workers=0,
    )
    result = train(config)
    record = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train_images"] == 12 and record["val_images"] == 12 and record["train_skipped"] == 0


def test_ddp_validation_reads_each_ranks_own_run_of_shards(make_folder, tmp_path, monkeypatch):
    """The engine's val_shard on 2 ranks (computed in one process): every validation image once over the
    ranks, each rank's part contiguous in the stored order, so a rank opens only the shards of its part, in
    order (the one holding the cut is opened by both). The old strided parts opened every shard on every
    rank."""
    from senet.data.device_pipeline import device_pipeline_datasets
    from senet.runtime import Dist
    from senet.train.lifecycle import val_shard

    root = make_folder(per_class=5)  # 15 val images: shards of 4, 4, 4, 3
    spec = build_data(str(_pack(root, tmp_path / "shards", images_per_shard=4)), image_size=16)
    assert spec.val.shard_sizes == [4, 4, 4, 3]
    filesystem, opened = S._filesystem, []
    monkeypatch.setattr(S, "_filesystem", lambda url: (opened.append(Path(url).name), filesystem(url))[1])
    labels, parts, opened_by = [], [], []
    for rank in (0, 1):
        spec.val.close()
        opened.clear()
        part = val_shard(spec.val, Dist(rank=rank, world_size=2))
        labels += [
            t for _, targets, _ in build_loader(part, batch_size=3, train=False) for t in targets.tolist()
        ]
        parts.append(list(part.indices))
        opened_by.append(list(opened))
    assert parts == [list(range(0, 7)), list(range(7, 15))]
    assert sorted(labels) == sorted(spec.val.targets)  # every image counted once over the ranks
    assert opened_by == [
        ["val-000000.tar", "val-000001.tar"],
        ["val-000001.tar", "val-000002.tar", "val-000003.tar"],
    ]
    # The GPU loader's dataset of shards is cut the same way; data without shards is strided, as before.
    _, raw_val, _ = device_pipeline_datasets(spec)
    assert list(val_shard(raw_val, Dist(rank=1, world_size=2)).indices) == list(range(7, 15))
    folder = build_data(str(root), image_size=16).val
    assert list(val_shard(folder, Dist(rank=1, world_size=2)).indices) == list(range(1, 15, 2))
