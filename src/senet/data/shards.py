"""Image-folder data as WebDataset-style tar shards with an index: ``senet data pack``, ``verify``, reading.

``pack_folder`` turns ROOT/{train,val}/CLASS/*.jpg into, per split, tar shards ``train-000000.tar``, ... in
WebDataset's format (consecutive members ``KEY.jpg`` -- the original file's bytes, another image format keeps
its extension, e.g. ``KEY.png`` -- and ``KEY.cls``, the class index as ASCII) plus ``index.json``: the class
names and, per shard, its name, size, SHA-256 and every sample's key, label and the byte range of its image
inside the tar. Samples are shuffled once (``seed``) before they are cut into shards, so every shard is a
random sample of its split. Every file is written to a hidden temporary file beside it and renamed into place;
the index is written last, so a pack that dies leaves no index, and no shard under its final name half
written.

``build_data(INDEX)`` (``build_shard_data``) reads them back through fsspec (a local path, ``file://``,
``s3://``, ... -- a remote protocol needs its fsspec package, e.g. s3fs): ``ShardDataset`` item i is one
ranged read of its image, decoded and transformed exactly as an image folder's. Lengths, labels and class
names come from the index, without touching the shards; checksums are verified only on request
(``verify_shards``). ``build_loader`` gives a ShardDataset the shard-local sampler of ``senet.data.loaders``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from senet.data import transforms as T
from senet.data.folders import (
    DECODE_ERRORS,
    FOLDER_LAYOUT,
    PROBE_LIMIT,
    folder_transforms,
    image_spec,
    report_unreadable,
    scan_folder,
)
from senet.data.spec import DataSpec
from senet.fileio import atomic_write, fsync_dir

_LOG = logging.getLogger("senet.data")

INDEX_NAME = "index.json"
FORMAT = "senet-shards"
VERSION = 1
SPLITS = ("train", "val")
DEFAULT_IMAGES_PER_SHARD = 5000  # ~0.5 GB of ImageNet JPEGs; ImageNet's train split in 257 shards

_JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}
_SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar$")
_STALE_TEMP = re.compile(r"^\.((train|val)-\d{6}\.tar|index\.json)\..+\.tmp$")  # a killed pack's leftovers

# Remote reads: every attempt reopens the shard; a read that still fails names the URL.
_RETRY_DELAYS_S = (0.5, 2.0)  # 3 attempts in all
_TIMEOUT_S = 60.0  # connect / read timeout, where the filesystem takes one (see _storage_options)
_MAX_OPEN = 16  # shard handles kept open per process (each may hold a read-ahead block)
_BLOCK_SIZE = 1 << 20  # read-ahead of remote files: one image is ~0.1 MB, the next of a shard often follows


# --------------------------------------------------------------------------------------------- writing


def pack_folder(
    folder: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
    seed: int = 0,
    overwrite: bool = False,
    on_shard: Callable[[str, int], None] | None = None,
) -> Path:
    """Pack the image folder ``folder`` (ROOT/{train,val}/CLASS/*) into tar shards in ``out_dir``.

    Args:
        folder: an ImageNet-layout image folder; refused with build_data's errors when it is not one.
        out_dir: where the shards and ``index.json`` go (created if missing).
        images_per_shard: at most this many images a shard; a split's shards hold as equal counts as possible.
        seed: the one shuffle of each split before it is cut into shards. The same folder and seed give
            byte-identical shards and index.
        overwrite: replace the shards and index already in ``out_dir`` (refused otherwise).
        on_shard: called with each shard's file name and image count once it is in place (progress).

    Returns the path of the index. Image files are stored as they are (never re-encoded).
    """
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root, out = Path(folder).expanduser(), Path(out_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} is not a directory; expected {FOLDER_LAYOUT}")
    train, val = scan_folder(root, _identity, _identity, strict=True)
    # In ROOT, build_data(ROOT) would read the shards instead; in ROOT/train, the output would be a class.
    for inner in (root, root / "train", root / "val"):
        if out.resolve() == inner.resolve() or (inner != root and inner.resolve() in out.resolve().parents):
            raise ValueError(
                f"--out {out} is {inner} or inside it; write the shards outside the image folder"
            )
    index_path = out / INDEX_NAME
    old_shards: list[str] = []
    if index_path.exists():
        if not overwrite:
            raise ValueError(
                f"{out} already holds a shard index ({INDEX_NAME}); pass overwrite=True (--overwrite) to "
                "replace it, or choose another --out"
            )
        with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
            old = _read_index(str(index_path))
            old_shards = [shard["name"] for split in old["splits"].values() for shard in split["shards"]]
        index_path.unlink()  # first: while shards are rewritten no index describes them
    out.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(out):
        if _STALE_TEMP.match(entry.name) and entry.is_file():
            Path(entry.path).unlink(missing_ok=True)
    splits: dict[str, Any] = {}
    for split, dataset in zip(SPLITS, (train, val), strict=True):
        samples = _with_keys(dataset.samples, root / split)
        order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(samples))
        count = math.ceil(len(samples) / images_per_shard)
        shards = []
        for number, part in enumerate(np.array_split(order, count)):
            name = f"{split}-{number:06d}.tar"
            shards.append(_write_shard(out / name, [samples[i] for i in part]))
            if on_shard is not None:
                on_shard(name, len(part))
        splits[split] = {"samples": len(samples), "shards": shards}
    index = {
        "format": FORMAT,
        "version": VERSION,
        "classes": list(train.classes),
        "seed": seed,
        "images_per_shard": images_per_shard,
        "splits": splits,
    }

    # atomic_write made every shard's rename durable before this index that lists them
    atomic_write(index_path, json.dumps(index, separators=(",", ":")).encode())
    written = {shard["name"] for split in splits.values() for shard in split["shards"]}
    for name in old_shards:  # the earlier pack's shards that this one did not rewrite
        if name not in written and _SHARD_NAME.match(name):
            (out / name).unlink(missing_ok=True)
    fsync_dir(out)
    return index_path


def _identity(image: Any) -> Any:
    return image


def _key_part(text: str) -> str:
    # WebDataset splits a member name at the first dot of its base name: keys hold none (nor spaces, etc.).
    return re.sub(r"[^\w-]", "_", text) or "_"


def _with_keys(samples: list[tuple[str, int]], split_root: Path) -> list[tuple[str, int, str, str]]:
    """(path, label, key, extension): key CLASS/STEM (CLASS/SUBFOLDER/STEM), unique in the split, sanitised;
    extension "jpg" for any JPEG."""
    seen: set[str] = set()
    keyed = []
    for path, label in samples:
        file = Path(path)
        folders = file.relative_to(split_root).parent.parts
        key = base = "/".join([*(_key_part(folder) for folder in folders), _key_part(file.stem)])
        n = 1
        while key in seen:  # x.jpg beside x.png, or names equal once sanitised
            key, n = f"{base}_{n}", n + 1
        seen.add(key)
        suffix = file.suffix.lower()
        keyed.append((path, label, key, "jpg" if suffix in _JPEG_SUFFIXES else suffix[1:]))
    return keyed


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha256, self.position = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.sha256.update(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position


def _member(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: two packs of the same folder are byte-identical.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append a member; returns the offset of its data in the tar."""
    tar.addfile(_member(name, len(data)), io.BytesIO(data))
    return tar.offset - math.ceil(len(data) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _write_shard(path: Path, samples: list[tuple[str, int, str, str]]) -> dict[str, Any]:
    keys, labels, offsets, sizes = [], [], [], []
    writers: list[_HashingWriter] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            writers.append(_HashingWriter(handle))
            with tarfile.open(fileobj=writers[0], mode="w", format=tarfile.PAX_FORMAT) as tar:
                for file, label, key, extension in samples:
                    data = Path(file).read_bytes()
                    offsets.append(_add(tar, f"{key}.{extension}", data))
                    _add(tar, f"{key}.cls", str(label).encode("ascii"))
                    keys.append(key)
                    labels.append(label)
                    sizes.append(len(data))

    atomic_write(path, write)  # hidden temporary file beside it, fsynced, renamed once whole
    writer = writers[0]
    return {
        "name": path.name,
        "samples": len(samples),
        "bytes": writer.position,
        "sha256": writer.sha256.hexdigest(),
        "keys": keys,
        "labels": labels,
        "offsets": offsets,
        "sizes": sizes,
    }


# --------------------------------------------------------------------------------------------- locating


def _is_url(source: str) -> bool:
    return "://" in source


def find_index(source: str) -> str | None:
    """The index of ``source`` if it names shards: an ``index.json`` (any ``*.json``), a local folder holding
    one, or a URL of either (a URL not ending in .json is taken as the folder); else None."""
    if _is_url(source):
        return source if source.endswith(".json") else f"{source.rstrip('/')}/{INDEX_NAME}"
    path = Path(source).expanduser()
    if path.suffix == ".json":
        return str(path)
    if path.is_dir() and (path / INDEX_NAME).is_file():
        return str(path / INDEX_NAME)
    return None


def _index_of(source: str) -> str:
    """``find_index(source)``, or an error saying what to give."""
    index = find_index(source)
    if index is None:
        raise FileNotFoundError(
            f"no {INDEX_NAME} in {source}: give the index written by `senet data pack` "
            "(or the folder holding it)"
        )
    return index


def _sibling(index_url: str, name: str) -> str:
    """The URL of file ``name`` beside the index."""
    if _is_url(index_url):
        return f"{index_url.rsplit('/', 1)[0]}/{name}"
    return str(Path(index_url).parent / name)


def _storage_options(protocol: str, timeout_s: float = _TIMEOUT_S) -> dict[str, Any]:
    """Connect/read timeouts for the filesystems that take them: s3fs (botocore) and HTTP (aiohttp).

    Settings given through fsspec's configuration (``FSSPEC_S3_...`` variables) win over these."""
    configured = dict(_fsspec().config.conf.get(protocol, {}))
    if protocol in ("s3", "s3a"):
        timeouts = {"connect_timeout": timeout_s, "read_timeout": timeout_s}
        return {"config_kwargs": {**timeouts, **configured.get("config_kwargs", {})}}
    if protocol in ("http", "https") and "client_kwargs" not in configured:
        try:
            import aiohttp
        except ImportError:  # fsspec's HTTP filesystem then cannot be used either
            return {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        return {"client_kwargs": {"timeout": timeout}}
    return {}


def _fsspec() -> Any:
    try:
        import fsspec
        import fsspec.config
    except ImportError:  # a dependency of torch too: only a broken install lacks it
        raise ValueError("reading shards needs fsspec: pip install fsspec") from None
    return fsspec


def _filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path in it) for ``url``; fsspec keeps one instance per process and options."""
    fsspec = _fsspec()
    protocol = url.split("://", 1)[0] if _is_url(url) else "file"
    try:
        return fsspec.core.url_to_fs(url, **_storage_options(protocol))
    except ImportError as error:  # e.g. s3:// without s3fs
        raise ValueError(f"cannot read {url}: {error}") from None


_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _with_retries(what: str, action: Callable[[], Any], on_failure: Callable[[], None] | None = None) -> Any:
    """``action()``, tried again after the delays of ``_RETRY_DELAYS_S`` when it raises OSError (connection
    errors and timeouts are OSErrors); the last error is re-raised naming ``what``."""
    for attempt in range(len(_RETRY_DELAYS_S) + 1):
        try:
            return action()
        except _PERMANENT:  # waiting will not make it appear
            raise
        except OSError as error:
            if on_failure is not None:
                on_failure()
            if attempt == len(_RETRY_DELAYS_S):
                raise OSError(
                    f"cannot read {what} after {attempt + 1} attempts ({type(error).__name__}: {error})"
                ) from error
            _LOG.debug("reading %s failed (%s); retrying", what, error)
            time.sleep(_RETRY_DELAYS_S[attempt])


# --------------------------------------------------------------------------------------------- reading


def _read_index(index_url: str) -> dict[str, Any]:
    def read() -> bytes:
        fs, path = _filesystem(index_url)
        with fs.open(path, "rb") as handle:
            return handle.read()

    try:
        text = _with_retries(index_url, read)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no shard index at {index_url}: give the {INDEX_NAME} written by `senet data pack` "
            "(or its folder)"
        ) from None
    try:
        index = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{index_url} is not a shard index of `senet data pack` ({error})") from None
    found = (index.get("format"), index.get("version")) if isinstance(index, dict) else None
    if found != (FORMAT, VERSION):
        raise ValueError(
            f"{index_url} is not a shard index of `senet data pack` (format {found}, expected "
            f"{(FORMAT, VERSION)}); pack the image folder with this version of senet"
        )
    try:
        _check_index(index_url, index)
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{index_url} is damaged ({type(error).__name__}: {error}); re-pack the image folder"
        ) from None
    return index


def _check_index(index_url: str, index: dict[str, Any]) -> None:
    """Counts, lengths and labels consistent: a hand-edited or damaged index is one line, not an
    IndexError."""
    classes = index["classes"]
    for split in SPLITS:
        record = index["splits"].get(split)
        if record is None:
            raise ValueError(f"{index_url} has no {split} split; re-pack the image folder")
        total = 0
        for shard in record["shards"]:
            n = shard["samples"]
            lengths = {len(shard[column]) for column in ("keys", "labels", "offsets", "sizes")}
            labels = shard["labels"]
            if lengths != {n} or any(not 0 <= label < len(classes) for label in labels):
                raise ValueError(
                    f"{index_url}: the entry of shard {shard['name']} is inconsistent (sample lists of "
                    f"{sorted(lengths)} items for {n} samples, or labels outside 0..{len(classes) - 1}); "
                    "re-pack the image folder"
                )
            total += n
        if total != record["samples"]:
            raise ValueError(f"{index_url}: {split} lists {record['samples']} samples, its shards {total}")


def decode_image(data: bytes) -> Image.Image:
    """A stored image file as an RGB PIL image: torchvision's pil_loader, from bytes (Image.open, then
    convert("RGB"), which decodes the whole image); raises what PIL raises for an undecodable one."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class ShardDataset(Dataset[Any]):
    """One split of packed shards, map-style: item i is ``(transform(image), label)``, or None when
    unreadable.

    An item is one ranged read of the image's bytes (offset and size from the index), decoded like an image
    folder's (PIL, RGB). Shards are opened lazily in each process (a loader worker opens its own; nothing open
    is pickled), kept open (the ``_MAX_OPEN`` most recently used), and every read is retried; an image that
    does not decode is skipped (None, warned once per key) or, with ``strict``, an error naming shard and key.
    """

    UNREADABLE_FIX = "re-pack it from a fixed image folder"  # what an error about an unreadable item advises

    def __init__(
        self,
        index_url: str,
        index: dict[str, Any],
        split: str,
        transform: Callable[[Any], torch.Tensor],
        *,
        strict: bool,
    ) -> None:
        shards = index["splits"][split]["shards"]
        self.index_url, self.split, self.transform, self.strict = index_url, split, transform, strict
        self.classes: list[str] = list(index["classes"])
        self.shard_names: list[str] = [shard["name"] for shard in shards]
        self.shard_urls = [_sibling(index_url, name) for name in self.shard_names]
        self.shard_sizes: list[int] = [shard["samples"] for shard in shards]
        self.shard_bytes: list[int] = [shard["bytes"] for shard in shards]
        self._ends = np.cumsum(self.shard_sizes, dtype=np.int64)
        # numpy columns: one buffer each, cheap to pickle into workers (ImageNet: 1.28 M samples)
        self.targets: list[int] = [label for shard in shards for label in shard["labels"]]
        self._offsets = np.array([o for shard in shards for o in shard["offsets"]], dtype=np.int64)
        self._sizes = np.array([s for shard in shards for s in shard["sizes"]], dtype=np.int64)
        self._keys = np.array([k.encode() for shard in shards for k in shard["keys"]], dtype=np.bytes_)
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()
        self._warned: set[str] = set()  # per process: each loader worker warns on its own

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()  # a worker opens its own
        return state

    def locate(self, index: int) -> tuple[int, str]:
        """(shard number, sample key) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return int(np.searchsorted(self._ends, index, side="right")), self._keys[index].decode()

    def read_bytes(self, index: int) -> bytes:
        """The stored image file of item ``index``: one ranged read of its shard."""
        shard, key = self.locate(index)
        offset, size = int(self._offsets[index]), int(self._sizes[index])

        def read() -> bytes:
            handle = self._handle(shard)
            handle.seek(offset)
            return handle.read(size)

        url = self.shard_urls[shard]
        data = _with_retries(f"{url} (sample {key})", read, on_failure=lambda: self._close(shard))
        if len(data) != size:
            raise ValueError(
                f"shard {url} ends inside sample {key} (bytes {offset}..{offset + size}): it is truncated or "
                f"not the one indexed; re-copy it (senet data verify {self.index_url} checks every shard)"
            )
        return data

    def load_image(self, index: int) -> Image.Image:
        """Item ``index``'s image as an RGB PIL image, as torchvision's loader opens an image file; raises
        what PIL raises for an undecodable one."""
        return decode_image(self.read_bytes(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        data = self.read_bytes(index)  # a failed read is an error, never a skipped image
        try:
            image = decode_image(data)
        except DECODE_ERRORS as error:
            self._unreadable(index, error)
            return None
        return self.transform(image), self.targets[index]

    def describe(self, index: int) -> str:
        """How an unreadable item ``index`` is named: ``KEY in shard URL``."""
        shard, key = self.locate(index)
        return f"{key} in shard {self.shard_urls[shard]}"

    def _unreadable(self, index: int, error: BaseException) -> None:
        report_unreadable(
            self.describe(index), error, strict=self.strict, warned=self._warned, fix=self.UNREADABLE_FIX
        )

    def _handle(self, shard: int) -> Any:
        if self._pid != os.getpid():  # a forked worker: the parent's handles share its file positions
            self._handles, self._pid = OrderedDict(), os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            fs, path = _filesystem(self.shard_urls[shard])
            handle = fs.open(path, "rb", block_size=_BLOCK_SIZE, cache_type="readahead")
            self._handles[shard] = handle
            while len(self._handles) > _MAX_OPEN:
                _, oldest = self._handles.popitem(last=False)
                with contextlib.suppress(Exception):
                    oldest.close()
        self._handles.move_to_end(shard)
        return handle

    def _close(self, shard: int) -> None:
        handle = self._handles.pop(shard, None)
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()

    def close(self) -> None:
        """Close the shards this process has open (they reopen on the next read)."""
        for shard in list(self._handles):
            self._close(shard)

    def check_decodable(self) -> None:
        """Refuse a small split (``PROBE_LIMIT``) in which no image decodes; stops at the first good one."""
        if len(self) > PROBE_LIMIT:
            return
        first = ""
        for index in range(len(self)):
            data = self.read_bytes(index)
            try:
                decode_image(data)
                return
            except DECODE_ERRORS as error:
                first = first or f"{self.locate(index)[1]}: {type(error).__name__}: {error}"
        raise ValueError(
            f"none of the {len(self)} {self.split} images in {self.index_url} can be decoded "
            f"(first: {first}); re-pack from readable images"
        )


def _check_shards(index_url: str, datasets: list[ShardDataset]) -> None:
    """Every shard present with the size the index gives, from one listing of the index's folder: catches
    shards not copied, or cut short, before training starts. Skipped where the store does not list."""
    fs, folder = _filesystem(_sibling(index_url, ""))
    try:
        listing = fs.ls(folder.rstrip("/") or "/", detail=True)
    except (OSError, NotImplementedError) as error:  # e.g. a bucket policy that allows reads only
        _LOG.debug("not checking the shards of %s: listing failed (%s)", index_url, error)
        return
    found = {Path(entry["name"]).name: entry.get("size") for entry in listing}
    shards = [item for d in datasets for item in zip(d.shard_names, d.shard_urls, d.shard_bytes, strict=True)]
    missing = [url for name, url, _ in shards if name not in found]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"shard {missing[0]}{more} of {index_url} is missing; copy every shard beside the index"
        )
    for name, url, size in shards:
        if found[name] is not None and found[name] != size:
            raise ValueError(
                f"shard {url} is {found[name]} bytes, the index says {size}: it is truncated or from "
                f"another pack; re-copy it (senet data verify {index_url} checks every shard)"
            )


def build_shard_data(
    index_url: str,
    image_size: int,
    eval_crop: int | None,
    ten_crop: bool,
    strict: bool,
    cutout: int,
    preprocessing: T.Preprocessing | None,
) -> DataSpec:
    """The DataSpec of packed shards: the transforms, checks and facts of the image folder they came from."""
    index = _read_index(index_url)
    train_transform, eval_transform, preprocessing = folder_transforms(
        image_size, eval_crop, ten_crop, cutout, preprocessing
    )
    train = ShardDataset(index_url, index, "train", train_transform, strict=strict)
    val = ShardDataset(index_url, index, "val", eval_transform, strict=strict)
    _check_shards(index_url, [train, val])
    return image_spec(train, val, list(index["classes"]), image_size, "shards", preprocessing)


def read_counts(index: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(number of classes, {split: (images, shards)}) of ``index``, from the index alone."""
    record = _read_index(_index_of(index))
    splits = {
        split: (record["splits"][split]["samples"], len(record["splits"][split]["shards"]))
        for split in SPLITS
    }
    return len(record["classes"]), splits


# ------------------------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class ShardReport:
    """One shard as ``verify_shards`` found it."""

    split: str
    name: str
    samples: int
    bytes: int


class _HashingReader:
    """A read-only stream that hashes and counts what is read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha256, self.position = raw, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.position += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _shard_problem(url: str, shard: dict[str, Any]) -> str | None:
    """What is wrong with one shard, read once from start to end; None when it matches its index entry."""
    fs, path = _filesystem(url)
    expected = list(zip(shard["keys"], shard["labels"], shard["offsets"], shard["sizes"], strict=True))
    with fs.open(path, "rb", block_size=8 * _BLOCK_SIZE) as raw:
        reader = _HashingReader(raw)
        found, pending = 0, None
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    key, _, extension = member.name.partition(".")
                    if extension != "cls":
                        if found >= len(expected) or expected[found][0] != key:
                            listed = expected[found][0] if found < len(expected) else "no more samples"
                            return f"member {member.name} where the index has {listed}"
                        _, _, offset, size = expected[found]
                        if (member.offset_data, member.size) != (offset, size):
                            return (
                                f"sample {key} at bytes {member.offset_data}+{member.size}, "
                                f"index {offset}+{size}"
                            )
                        pending = key
                        continue
                    handle = tar.extractfile(member)
                    label = handle.read().decode("ascii", "replace").strip() if handle else ""
                    if pending != key or label != str(expected[found][1]):
                        return f"{member.name} holds label {label!r}, the index {expected[found][1]}"
                    found, pending = found + 1, None
            reader.drain()
        except (tarfile.TarError, EOFError, OSError) as error:
            with contextlib.suppress(OSError):
                reader.drain()
            if reader.position == shard["bytes"]:
                return f"unreadable as a tar after {found} samples ({type(error).__name__}: {error})"
    if reader.position != shard["bytes"]:
        return f"{reader.position} bytes, the index says {shard['bytes']} (truncated, or from another pack)"
    if found != shard["samples"]:
        return f"{found} samples, the index says {shard['samples']}"
    digest = reader.sha256.hexdigest()
    if digest != shard["sha256"]:
        return f"SHA-256 {digest[:16]}... differs from the index's {shard['sha256'][:16]}..."
    return None


def verify_shards(index: str, on_shard: Callable[[ShardReport], None] | None = None) -> list[ShardReport]:
    """Read every shard of ``index`` (a path or URL, as for ``build_data``) in full and check it against the
    index: members, byte ranges, labels, sample count, size and SHA-256.

    Raises ValueError naming the first bad shard (and how many more), FileNotFoundError for a missing one.
    ``on_shard`` is called with each good shard's report (progress).
    """
    index_url = _index_of(index)
    record = _read_index(index_url)
    reports, bad = [], []
    for split in SPLITS:
        for shard in record["splits"][split]["shards"]:
            url = _sibling(index_url, shard["name"])
            try:
                problem = _shard_problem(url, shard)
            except FileNotFoundError:
                problem = "missing"
            if problem is not None:
                bad.append(f"shard {url}: {problem}")
                continue
            report = ShardReport(split, shard["name"], shard["samples"], shard["bytes"])
            reports.append(report)
            if on_shard is not None:
                on_shard(report)
    if bad:
        more = f" (and {len(bad) - 1} more bad shards)" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0]}{more}; re-copy it, or re-pack the image folder")
    return reports
