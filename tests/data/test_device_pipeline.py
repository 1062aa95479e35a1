"""The GPU input pipeline (senet.data.device_pipeline), checked on CPU against the CPU transforms it replaces:
from image folders and from their shards; and the CPU loader's uint8 batches converted on the device.

On CPU, PIL and torchvision's decode_jpeg are both libjpeg-turbo with the same settings and the device path
runs the same torchvision kernels on the same uint8 images: the outputs are measured bit-exact (max and mean
abs diff 0.0 in normalised units), and asserted so. A CUDA test (skipped here) checks nvjpeg's output.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from senet.data import build_data, build_loader, device_pipeline, pack_folder
from senet.data.device_pipeline import (
    RawImageDataset,
    build_raw_loader,
    collate_raw,
    convert_on_device,
    device_pipeline_datasets,
    plan_transform,
)
from senet.data.loaders import _ShardSampler
from senet.data.transforms import Cutout

SIZE, CUTOUT = 24, 8
# Measured on CPU: 0.0 and 0.0 (bit-exact). A difference means PIL's and torchvision's libjpeg disagree.
CPU_MAX_ABS, CPU_MEAN_ABS = 0.0, 0.0


def _noise(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _save(image: Image.Image, path: Path, **options: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _truncated_jpeg(path: Path) -> Path:
    """A JPEG whose header reads (PIL.Image.open succeeds) but whose data ends halfway: decoders raise."""
    buffer = io.BytesIO()
    _noise(99).save(buffer, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.fixture
def root(make_folder) -> Path:
    """Two classes of 48 x 40 noise JPEGs, plus a greyscale, a progressive and a 4:4:4 JPEG in each split."""
    root = make_folder(classes=("cat", "dog"), per_class=3)
    for split in ("train", "val"):
        _save(_noise(50).convert("L"), root / split / "cat" / "grey.jpg", format="JPEG")
        _save(_noise(51, (40, 52)), root / split / "dog" / "progressive.jpg", format="JPEG", progressive=True)
        _save(_noise(52, (60, 36)), root / split / "dog" / "full.jpg", format="JPEG", subsampling=0)
    return root


def _spec(root: Path, **options: Any):
    return build_data(str(root), image_size=SIZE, cutout=CUTOUT, **options)


def _cpu_items(dataset, indices, seed: int) -> list:
    torch.manual_seed(seed)
    return [dataset[i] for i in indices]


def _raw_items(dataset, indices, seed: int) -> list:
    torch.manual_seed(seed)
    return [dataset[i] for i in indices]


def _assert_matches(images: torch.Tensor, expected: torch.Tensor) -> None:
    assert images.shape == expected.shape and images.dtype == expected.dtype == torch.float32
    diff = (images - expected).abs()
    assert diff.max().item() <= CPU_MAX_ABS and diff.mean().item() <= CPU_MEAN_ABS, (
        f"max abs diff {diff.max().item():.4g}, mean {diff.mean().item():.4g} (normalised units)"
    )


def test_host_draws_are_the_cpu_transforms_draws(root: Path) -> None:
    """The same crop boxes, flips and Cutout squares from the same RNG calls; the RNG ends in one state."""
    spec = _spec(root)
    raw = RawImageDataset(spec.train, train=True)
    crop, flip, cutout = (
        next(s for s in spec.train.transform.transforms if isinstance(s, kind))
        for kind in (v2.RandomResizedCrop, v2.RandomHorizontalFlip, Cutout)
    )
    record: dict[str, Any] = {}
    for step, key in ((crop, "crop"), (cutout, "cutout")):

        def make_params(flat_inputs, _original=step.make_params, _key=key):
            record[_key] = _original(flat_inputs)
            return record[_key]

        step.make_params = make_params
    original_flip = flip.transform

    def flip_transform(inpt, params):
        record["flip"] = True
        return original_flip(inpt, params)

    flip.transform = flip_transform

    order = [3, 0, 7, 5, 1, 8, 2, 6, 4] * 3
    flips = 0
    for seed in range(4):
        torch.manual_seed(seed)
        expected = []
        for i in order:
            record.clear()
            spec.train[i]
            expected.append(
                (
                    tuple(record["crop"][k] for k in ("top", "left", "height", "width")),
                    record.get("flip", False),
                    tuple(record["cutout"][k] for k in ("i", "j", "h", "w")),
                )
            )
        cpu_state = torch.get_rng_state()
        torch.manual_seed(seed)
        drawn = [(p.crop, p.flip, p.cutout) for _, _, p in (raw[i] for i in order)]
        assert drawn == expected
        assert torch.equal(torch.get_rng_state(), cpu_state)
        flips += sum(f for _, f, _ in drawn)
    assert 0 < flips < 4 * len(order)  # both branches of the flip were exercised


def test_training_batch_matches_cpu_transform(root: Path) -> None:
    spec = _spec(root)
    train, _, pipeline = device_pipeline_datasets(spec)
    indices = list(range(len(train)))
    for seed in (0, 1, 2):
        expected = _cpu_items(spec.train, indices, seed)
        batch = collate_raw(_raw_items(train, indices, seed))
        assert not batch.host_positions and len(batch.params) == len(
            indices
        )  # every file decodes on the device
        images, targets, skipped = pipeline(batch, "cpu")
        _assert_matches(images, torch.stack([image for image, _ in expected]))
        assert targets.tolist() == [label for _, label in expected] and skipped == 0


def test_channels_last_output(root: Path) -> None:
    spec = _spec(root)
    train, _, pipeline = device_pipeline_datasets(spec)
    images, _, _ = pipeline(collate_raw([train[i] for i in range(4)]), "cpu", channels_last=True)
    assert images.shape == (4, 3, SIZE, SIZE) and images.is_contiguous(memory_format=torch.channels_last)


def test_cutout_on_the_batch_is_cutouts_erase_and_keeps_channels_last() -> None:
    """One pass over the batch zeroes what Cutout's ``F.erase(..., v=0)`` zeroes image by image (None: no
    square), and a channels-last batch stays channels-last (the model's layout, no copy back)."""
    torch.manual_seed(0)
    batch = torch.randn(4, 3, 6, 7).contiguous(memory_format=torch.channels_last)
    squares = [(1, 2, 3, 3), None, (0, 0, 6, 7), (4, 5, 4, 4)]  # the last runs off the corner, as Cutout's
    erased = device_pipeline._erase(batch, squares)
    expected = [
        image if sq is None else F.erase(image, *sq, v=torch.tensor(0.0))
        for image, sq in zip(batch, squares, strict=True)
    ]
    assert torch.equal(erased, torch.stack(expected))
    assert erased.is_contiguous(memory_format=torch.channels_last)
    assert batch.abs().min() > 0  # the input is not erased in place


def test_eval_batch_matches_eval_transform(root: Path) -> None:
    spec = _spec(root, eval_crop=20)  # resize the shorter side to round(20 / 0.875) = 23, centre 20 x 20
    _, val, pipeline = device_pipeline_datasets(spec)
    indices = list(range(len(val)))
    expected = _cpu_items(spec.val, indices, 0)
    images, targets, skipped = pipeline(collate_raw(_raw_items(val, indices, 0)), "cpu")
    assert images.shape == (len(indices), 3, 20, 20)
    _assert_matches(images, torch.stack([image for image, _ in expected]))
    assert targets.tolist() == [label for _, label in expected] and skipped == 0


def test_png_and_cmyk_go_through_the_cpu_fallback_exactly(root: Path) -> None:
    _save(_noise(60), root / "train" / "cat" / "a.png", format="PNG")
    _save(_noise(61).convert("CMYK"), root / "train" / "dog" / "cmyk.jpg", format="JPEG")
    spec = _spec(root)
    train, _, pipeline = device_pipeline_datasets(spec)
    paths = [path for path, _ in train.samples]
    indices = list(range(len(train)))
    items = _raw_items(train, indices, 7)
    fallback = sorted(Path(items[k][2].path).name for k in indices if items[k][2].fallback)
    assert fallback == ["a.png", "cmyk.jpg"]
    batch = collate_raw(items)
    assert batch.host_positions == [paths.index(p) for p in paths if p.endswith(("a.png", "cmyk.jpg"))]
    images, targets, _ = pipeline(batch, "cpu")
    expected = _cpu_items(spec.train, indices, 7)
    assert torch.equal(images, torch.stack([image for image, _ in expected]))  # the fallback: exactly
    assert targets.tolist() == [label for _, label in expected]


def test_unreadable_files_are_skipped_and_counted(
    root: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file PIL cannot open is dropped in the worker; a JPEG whose header reads but whose data is broken
    fails the batched decode, is retried alone and dropped; the other images keep their places."""
    garbage = root / "val" / "cat" / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    truncated = _truncated_jpeg(root / "val" / "dog" / "truncated.jpg")
    _save(_noise(60), root / "val" / "dog" / "a.png", format="PNG")  # a fallback among them keeps its place
    spec = _spec(root)
    _, val, pipeline = device_pipeline_datasets(spec)
    paths = [path for path, _ in val.samples]
    bad = {paths.index(str(garbage)), paths.index(str(truncated))}
    indices = list(range(len(val)))
    decode, calls = device_pipeline._decode_jpegs, []

    def counted(chunks, where):
        calls.append(len(chunks))
        return decode(chunks, where)

    monkeypatch.setattr(device_pipeline, "_decode_jpegs", counted)
    with caplog.at_level(logging.WARNING, logger="senet.data"):
        batch = collate_raw([val[i] for i in indices])
        images, targets, skipped = pipeline(batch, "cpu")
    assert str(truncated) in [p.path for p in batch.params]  # its header read: it went to the device
    assert batch.host_positions == [paths.index(str(root / "val" / "dog" / "a.png")) - 1]  # garbage dropped
    assert calls == [len(indices) - 2] + [1] * (len(indices) - 2)  # the batch failed; each image alone
    assert skipped == 2
    good = [spec.val[i] for i in indices if i not in bad]
    _assert_matches(images, torch.stack([image for image, _ in good]))
    assert targets.tolist() == [label for _, label in good]
    assert str(garbage) in caplog.text and str(truncated) in caplog.text


def test_strict_data_raises_naming_the_file(root: Path) -> None:
    garbage = root / "train" / "cat" / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    truncated = _truncated_jpeg(root / "train" / "dog" / "truncated.jpg")
    train, _, pipeline = device_pipeline_datasets(_spec(root, strict_data=True))
    paths = [path for path, _ in train.samples]
    with pytest.raises(ValueError, match=f"unreadable image {garbage}"):
        train[paths.index(str(garbage))]  # in the worker
    batch = collate_raw([train[0], train[paths.index(str(truncated))]])
    with pytest.raises(ValueError, match=f"unreadable image {truncated}"):
        pipeline(batch, "cpu")  # on the device


def test_all_unreadable_batch_is_empty(root: Path) -> None:
    for k in range(3):
        (root / "train" / "cat" / f"garbage{k}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        _truncated_jpeg(root / "train" / "dog" / f"truncated{k}.jpg")
    train, _, pipeline = device_pipeline_datasets(_spec(root))
    for stem in ("garbage", "truncated"):
        items = [train[i] for i, (path, _) in enumerate(train.samples) if Path(path).stem.startswith(stem)]
        images, targets, skipped = pipeline(collate_raw(items), "cpu")
        assert images.numel() == 0 and targets.numel() == 0 and skipped == len(items) == 3


def test_two_worker_loader_matches_cpu_loader(root: Path) -> None:
    """build_raw_loader keeps build_loader's sampler and worker seeding: batch for batch the CPU loader's."""
    spec = _spec(root)
    train, _, pipeline = device_pipeline_datasets(spec)
    options = dict(batch_size=4, train=True, workers=2, seed=5)
    cpu_loader, raw_loader = build_loader(spec.train, **options), build_raw_loader(train, **options)
    pickle.dumps(train)  # what a worker started by spawn receives
    batches = 0
    for (expected, expected_targets, expected_skipped), raw in zip(cpu_loader, raw_loader, strict=True):
        images, targets, skipped = pipeline(raw, "cpu")
        _assert_matches(images, expected)
        assert torch.equal(targets, expected_targets) and skipped == expected_skipped
        batches += 1
    assert batches == len(train) // 4


def test_refuses_what_it_cannot_replay(root: Path, cifar10_root: Path) -> None:
    with pytest.raises(ValueError, match="is neither: use the CPU loader"):
        device_pipeline_datasets(build_data(str(cifar10_root)))
    with pytest.raises(ValueError, match="ten-crop evaluation stays on the CPU loader"):
        device_pipeline_datasets(_spec(root, ten_crop=True))
    with pytest.raises(ValueError, match="cannot apply ColorJitter"):
        plan_transform(v2.Compose([v2.ToImage(), v2.ColorJitter(0.4), v2.CenterCrop(8)]))
    with pytest.raises(ValueError, match="must end in a fixed-size crop"):
        plan_transform(v2.Compose([v2.ToImage(), v2.Resize(16)]))
    with pytest.raises(ValueError, match="RandomHorizontalFlip after Cutout"):
        plan_transform(v2.Compose([v2.ToImage(), v2.CenterCrop(8), Cutout(2), v2.RandomHorizontalFlip()]))
    # the same two refusals for the device pipeline (an error) and the uint8 batches (None: loaded as it is)
    to_float = v2.ToDtype(torch.float32, scale=True)
    for transform, message in (
        (
            [v2.ToImage(), v2.CenterCrop(8), to_float, Cutout(2), Cutout(3)],
            "replays one Cutout per transform",
        ),
        (
            [v2.ToImage(), v2.CenterCrop(8), v2.ToDtype({tv_tensors.Image: torch.float32})],
            "ToDtype with one dtype",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            plan_transform(v2.Compose(transform))
        assert convert_on_device(SimpleNamespace(transform=v2.Compose(transform))) is None
    assert convert_on_device(SimpleNamespace(transform=v2.Compose([v2.ToImage(), to_float, Cutout(2)])))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_cuda_pipeline_close_to_cpu_transform(tmp_path: Path) -> None:
    """nvjpeg and the CUDA resize (float, rounded back to uint8) are not libjpeg and the CPU's uint8 resize:
    smooth images, mean abs diff within 2 uint8 steps (not yet measured on a GPU: a first bound)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:120, 0:160]
    for k in range(8):
        phase = rng.uniform(0, 6, 3)
        pixels = np.stack([127 + 120 * np.sin(x / (9 + 3 * c) + y / 17 + phase[c]) for c in range(3)], -1)
        image = Image.fromarray(pixels.astype(np.uint8))
        image = image.convert("L") if k == 0 else image  # greyscale, decoded to RGB by nvjpeg
        for split in ("train", "val"):
            # k == 1 progressive: nvjpeg's batched decode may refuse it; the per-image retry must recover it
            _save(image, tmp_path / split / f"c{k % 2}" / f"{k}.jpg", format="JPEG", progressive=k == 1)
    spec = build_data(str(tmp_path), image_size=64, cutout=16)
    train, val, pipeline = device_pipeline_datasets(spec)
    step = 1 / 255 / min(0.229, 0.224, 0.225)  # one uint8 step in normalised units, at most
    for cpu, raw in ((spec.train, train), (spec.val, val)):
        indices = list(range(len(raw)))
        expected = torch.stack([image for image, _ in _cpu_items(cpu, indices, 3)])
        images, _, skipped = pipeline(collate_raw(_raw_items(raw, indices, 3)), "cuda")
        diff = (images.cpu() - expected).abs()
        assert skipped == 0 and diff.mean().item() < 2 * step, f"mean {diff.mean():.4g}, max {diff.max():.4g}"


# ----------------------------------------------------------------------------------------------- shards


def _with_problem_files(root: Path) -> Path:
    """``root`` plus, in train, a PNG, a CMYK JPEG (both through the fallback) and garbage (skipped in the
    worker); in val, a JPEG whose data breaks off (skipped on the device) and a PNG."""
    _save(_noise(60), root / "train" / "cat" / "a.png", format="PNG")
    _save(_noise(61).convert("CMYK"), root / "train" / "dog" / "cmyk.jpg", format="JPEG")
    (root / "train" / "cat" / "garbage.jpg").write_bytes(b"not an image at all")
    _truncated_jpeg(root / "val" / "dog" / "truncated.jpg")
    _save(_noise(62), root / "val" / "dog" / "b.png", format="PNG")
    return root


def test_shards_feed_the_device_pipeline_as_the_cpu_loader_reads_them(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers read each member's bytes from the shard; the same sampler (shard by shard), the same draws,
    the same fallbacks and skips: batch for batch the CPU shard loader's, bit-exact on CPU."""
    index = pack_folder(_with_problem_files(root), tmp_path / "shards", images_per_shard=4)
    spec = build_data(str(index), image_size=SIZE, cutout=CUTOUT)
    train, val, pipeline = device_pipeline_datasets(spec)
    pickle.dumps(train)  # what a worker started by spawn receives (no open shard)
    with caplog.at_level(logging.WARNING, logger="senet.data"):
        for cpu_set, raw_set, options in (
            (spec.train, train, dict(train=True, seed=5, workers=1)),  # worker seeds: the same draws
            (spec.val, val, dict(train=False)),
        ):
            cpu_loader = build_loader(cpu_set, batch_size=4, **options)
            raw_loader = build_raw_loader(raw_set, batch_size=4, **options)
            assert isinstance(raw_loader.sampler, _ShardSampler)
            fallbacks, skipped_in_all = 0, 0
            for (expected, expected_targets, expected_skipped), raw in zip(
                cpu_loader, raw_loader, strict=True
            ):
                images, targets, skipped = pipeline(raw, "cpu")
                _assert_matches(images, expected)
                assert torch.equal(targets, expected_targets) and skipped == expected_skipped
                fallbacks, skipped_in_all = fallbacks + len(raw.host_positions), skipped_in_all + skipped
            # train: the PNG and the CMYK JPEG, the garbage; val: the PNG, the broken JPEG
            assert (fallbacks, skipped_in_all) == ((2, 1) if options["train"] else (1, 1))
    assert "dog/truncated in shard" in caplog.text  # the device's skip names shard and key


def test_strict_data_on_shards_names_shard_and_key(root: Path, tmp_path: Path) -> None:
    _truncated_jpeg(root / "train" / "dog" / "truncated.jpg")
    index = pack_folder(root, tmp_path / "shards", images_per_shard=4)
    train, _, pipeline = device_pipeline_datasets(build_data(str(index), image_size=SIZE, strict_data=True))
    bad = next(i for i in range(len(train)) if train.reader.name(i).startswith("dog/truncated in shard"))
    batch = collate_raw([train[bad], train[(bad + 1) % len(train)]])
    with pytest.raises(
        ValueError, match=r"unreadable image dog/truncated in shard .*train-\d{6}\.tar.*re-pack"
    ):
        pipeline(batch, "cpu")


# ------------------------------------------------------------------- the CPU loader on a GPU: uint8 batches


def _source(kind: str, root: Path, cifar10_root: Path, tmp_path: Path):
    if kind == "cifar10":
        return build_data(str(cifar10_root), cutout=CUTOUT)
    if kind == "digits":
        return build_data("digits", cutout=CUTOUT)
    (root / "train" / "cat" / "garbage.jpg").write_bytes(b"not an image at all")  # skipped and counted
    (root / "val" / "dog" / "garbage.jpg").write_bytes(b"not an image at all")
    if kind == "shards":
        root = pack_folder(root, tmp_path / "shards", images_per_shard=4)
    return _spec(root)


@pytest.mark.parametrize(
    "kind, channels_last, workers",
    [
        ("folder", False, 0),
        ("folder", True, 1),
        ("shards", True, 0),
        ("cifar10", False, 0),
        ("digits", True, 0),
    ],
)
def test_the_cpu_loader_on_a_gpu_sends_uint8_and_converts_there_bit_identically(
    kind: str, channels_last: bool, workers: int, root: Path, cifar10_root: Path, tmp_path: Path
) -> None:
    """Train (crop, flip, Cutout after the normalisation) and val transforms: uint8 batches, a quarter of the
    float32 bytes, and once converted on the device exactly the CPU loader's float32 batches (torch.equal).
    Digits are float before their conversion: the same values, no bytes saved."""
    spec = _source(kind, root, cifar10_root, tmp_path)
    skipped_in_all = 0
    for dataset, options in ((spec.train, dict(train=True, seed=3)), (spec.val, dict(train=False))):
        host, finish = convert_on_device(dataset)
        options = dict(batch_size=4, workers=workers, drop_last=False, **options)
        if kind == "digits":  # 1,797 images: the first 64 of each split are enough
            dataset, host = (torch.utils.data.Subset(d, range(64)) for d in (dataset, host))
        torch.manual_seed(0)  # workers=0: the transforms draw from this process's RNG
        expected = list(build_loader(dataset, **options))
        torch.manual_seed(0)
        sent = list(build_loader(host, collate_fn=finish.collate, **options))
        assert len(sent) == len(expected) > 0
        for (images, targets, skipped), batch in zip(expected, sent, strict=True):
            assert images.dtype == torch.float32
            if kind == "digits":
                assert batch.images.dtype == torch.float32
            else:
                assert batch.images.dtype == torch.uint8 and 4 * batch.images.nbytes == images.nbytes
            converted, converted_targets, converted_skipped = finish(batch, "cpu", channels_last)
            assert torch.equal(converted, images) and converted.dtype == torch.float32
            assert converted.is_contiguous(memory_format=torch.channels_last) == channels_last
            assert torch.equal(converted_targets, targets) and converted_skipped == skipped
            skipped_in_all += skipped
    assert skipped_in_all == (2 if kind in ("folder", "shards") else 0)


def test_uint8_batches_step_aside_for_transforms_they_cannot_split(root: Path) -> None:
    """Ten-crop evaluation (crops stacked after the normalisation) stays float in the workers."""
    spec = _spec(root, ten_crop=True)
    assert convert_on_device(spec.val) is None and convert_on_device(spec.train) is not None
    assert convert_on_device(torch.utils.data.TensorDataset(torch.zeros(2, 3))) is None
