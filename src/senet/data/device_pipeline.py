"""A GPU input pipeline: loader workers read JPEG files and draw the augmentation; the device does the rest.
And the CPU loader on a GPU: workers send uint8 images, the device converts and normalises them.

On a GPU the CPU transform (decode, random-resized crop, flip, normalise, Cutout: about 250 images/s a core)
starves training. Here a worker only reads a file's bytes, reads its size from the header (no decoding) and
draws the augmentation with torchvision's own ``make_params`` from the torch RNG, in exactly the order and
number of calls the CPU transform makes: with the same worker seeds both paths crop the same boxes, flip the
same images and cut out the same squares. The device then decodes the batch in one ``decode_jpeg`` call
(nvjpeg on CUDA), crops and resizes each uint8 image, stacks, flips, converts, normalises and cuts out.

The files are an image folder's, or the members of packed shards (``senet.data.shards``: a worker reads each
image's bytes with one ranged read, and the loader reads shard by shard as the CPU loader does). A batch
flows as::

    RawImageDataset[i] -> (bytes uint8 (L,), label, ImageParams)        # in a loader worker
                       or (image float (3, S, S), label, ImageParams)   # CPU fallback: not a plain JPEG
                       or None                                          # unreadable (skipped, counted)
    collate_raw(items) -> RawBatch                                      # bytes concatenated, one tensor
    DeviceBatchPipeline(batch, device, channels_last)
                       -> (images float (N, 3, S, S), targets (N,), num_skipped)

Files that are not RGB or greyscale JPEGs (PNG, CMYK JPEG, ...) and files whose header cannot be read are
decoded and transformed in the worker by the CPU transform itself (the "fallback"), drawing from the RNG as
it would; their images join the batch at their places. A JPEG the device cannot decode is retried alone
(on CUDA, then with the CPU decoder); one that still fails is dropped and counted, or, with ``strict``, stops
the run naming the file. Only a JPEG whose header reads but whose data is broken draws its parameters before
it is found unreadable; the CPU path draws none for it, so the worker's later draws shift from then on.

The transform is replayed from the dataset's own ``v2.Compose`` (``plan_transform``): ToImage, Resize,
CenterCrop, RandomResizedCrop, RandomHorizontalFlip, ToDtype, Normalize, Cutout, ToPureTensor. Anything else,
ten-crop evaluation included, is refused with one line: it stays on the CPU loader.

The CPU loader on a GPU (``convert_on_device``): the workers run the CPU transform up to its float conversion
and draw the Cutout square there (the transform's last draw), and send uint8 batches, a quarter of float32's
bytes to pin and copy; the device converts, normalises and cuts out the batch with the transform's own
arithmetic (``ConvertOnDevice``)::

    dataset[i] -> ((image uint8 (C, S, S), Cutout square or None), label)   # in a loader worker
    collate_uint8(items) -> Uint8Batch -> ConvertOnDevice(batch, device, channels_last)
                       -> (images float (N, C, S, S), targets (N,), num_skipped)
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import tv_tensors
from torchvision.datasets.folder import default_loader
from torchvision.datasets.vision import StandardTransform, VisionDataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size

from senet.data.folders import DECODE_ERRORS, report_unreadable
from senet.data.loaders import build_loader
from senet.data.shards import ShardDataset, decode_image
from senet.data.spec import DataSpec
from senet.data.transforms import Cutout

__all__ = [
    "ConvertOnDevice",
    "DeviceBatchPipeline",
    "DeviceLoader",
    "DevicePlan",
    "ImageParams",
    "RawBatch",
    "RawImageDataset",
    "Uint8Batch",
    "build_raw_loader",
    "collate_raw",
    "collate_uint8",
    "convert_on_device",
    "decodes_on_device",
    "device_pipeline_datasets",
    "plan_transform",
]

_LOG = logging.getLogger("senet.data")

# JPEG colour modes the device decodes to RGB as PIL's convert("RGB") does; others (CMYK, ...) stay on host.
_DEVICE_MODES = ("RGB", "L")

_GEOMETRIC = (v2.RandomResizedCrop, v2.Resize, v2.CenterCrop, v2.RandomHorizontalFlip)
_POINTWISE = (v2.ToDtype, v2.Normalize)  # the same for every pixel: pixel selection commutes with them
_BATCHED = (v2.ToDtype, v2.Normalize, Cutout)  # applied to the stacked batch, in the transform's order
_RANDOM = (v2.RandomResizedCrop, v2.RandomHorizontalFlip, Cutout)  # the steps that draw: one of each kind
_NO_OPS = (v2.ToImage, v2.ToPureTensor)  # decode_jpeg already gives a plain uint8 (C, H, W) tensor


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class DevicePlan:
    """A ``v2.Compose`` taken apart for the device.

    ``steps``: the transform's own steps, in order: the host draws walk them, so the RNG is called as the CPU
    transform calls it. ``geometry``: per uint8 image, in order. ``batch_flip``: the horizontal flip is the
    last geometric step, applied to the stacked batch. ``batched``: ToDtype, Normalize and Cutout on the
    stacked batch, in order. ``output_size``: (height, width) of every image after ``geometry``.
    """

    steps: tuple[nn.Module, ...]
    geometry: tuple[nn.Module, ...]
    batch_flip: bool
    batched: tuple[nn.Module, ...]
    output_size: tuple[int, int]

    @property
    def random(self) -> bool:
        return any(isinstance(s, _RANDOM) for s in self.steps)

    def draw(self, height: int, width: int) -> dict[str, Any]:
        """The random parameters for an image of ``height`` x ``width``, drawn exactly as the CPU transform
        draws them: the same torchvision/senet ``make_params`` (and the flip's ``torch.rand(1)``), in the same
        order, from the same global torch RNG. Keys: ``crop``, ``flip``, ``cutout``."""
        size = (height, width)
        drawn: dict[str, Any] = {"crop": None, "flip": False, "cutout": None}
        for step in self.steps:
            if isinstance(step, v2.RandomResizedCrop):
                box = step.make_params([_canvas(size)])
                drawn["crop"] = (box["top"], box["left"], box["height"], box["width"])
                size = (step.size[0], step.size[1])
            elif isinstance(step, v2.RandomHorizontalFlip):
                # _RandomApplyTransform.forward: ``if torch.rand(1) >= self.p: return inputs`` (no flip); the
                # flip's make_params draws nothing.
                drawn["flip"] = not bool(torch.rand(1) >= step.p)
            elif isinstance(step, Cutout):
                square = step.make_params([_canvas(size)])
                drawn["cutout"] = (square["i"], square["j"], square["h"], square["w"])
            elif isinstance(step, v2.Resize):
                resized = _compute_resized_output_size(size, step.size, step.max_size)
                size = (resized[0], resized[1])
            elif isinstance(step, v2.CenterCrop):
                size = (step.size[0], step.size[1])
        return drawn


def _canvas(size: tuple[int, int]) -> tv_tensors.Image:
    """A stand-in image of ``size`` for ``make_params``, which only reads its size: no pixels allocated."""
    return tv_tensors.Image(torch.zeros((), dtype=torch.uint8).expand(3, *size))


def plan_transform(transform: Any) -> DevicePlan:
    """Take ``transform`` (a ``v2.Compose`` of senet.data.transforms) apart for the device, or refuse it in
    one line (ten-crop, a step the device pipeline does not replay, or an output whose size is not fixed)."""
    if not isinstance(transform, v2.Compose):
        raise ValueError(
            "the device pipeline replays a torchvision v2.Compose transform, not "
            f"{type(transform).__name__}; "
            "use the CPU loader"
        )
    steps = tuple(transform.transforms)
    geometry: list[nn.Module] = []
    batched: list[nn.Module] = []
    fixed: tuple[int, int] | None = None  # exact size after the geometry so far, when it is known
    least = 0  # both sides are at least this after the geometry so far
    seen: set[type] = set()
    for index, step in enumerate(steps):
        name = type(step).__name__
        if isinstance(step, (v2.TenCrop, v2.FiveCrop)):
            raise ValueError(
                "ten-crop evaluation stays on the CPU loader: the device pipeline takes one crop per image "
                "(evaluate without ten_crop, or use the CPU loader)"
            )
        if isinstance(step, _NO_OPS):
            continue
        problem = _unreplayable(step, seen)
        if problem:
            raise ValueError(problem)
        if isinstance(step, _BATCHED):
            batched.append(step)
            continue
        if not isinstance(step, _GEOMETRIC):
            raise ValueError(
                f"the device pipeline cannot apply {name} (step {index} of the transform); use the CPU loader"
            )
        if batched and not _moves_before_pointwise(step, batched, least):
            raise ValueError(
                f"{name} after {type(batched[0]).__name__}: the device pipeline resizes uint8 images before "
                "converting them and cannot replay this order; use the CPU loader"
            )
        geometry.append(step)
        if isinstance(step, (v2.RandomResizedCrop, v2.CenterCrop)):
            fixed = (step.size[0], step.size[1])
            least = min(fixed)
        elif isinstance(step, v2.Resize):
            if len(step.size) == 2:
                fixed = (step.size[0], step.size[1])
                least = min(fixed)
            else:  # the shorter side becomes size[0] (max_size may shrink it)
                fixed = None
                least = step.size[0] if step.max_size is None else 0
    if fixed is None:
        raise ValueError(
            "the device pipeline stacks a batch on the device: the transform must end in a fixed-size crop "
            "or resize; use the CPU loader"
        )
    batch_flip = bool(geometry) and isinstance(geometry[-1], v2.RandomHorizontalFlip)
    if batch_flip:
        geometry.pop()
    return DevicePlan(steps, tuple(geometry), batch_flip, tuple(batched), fixed)


def _unreplayable(step: nn.Module, seen: set[type]) -> str | None:
    """Why the device cannot replay ``step`` of a transform, or None: a second random step of one kind
    (``seen``: the kinds met so far, ``step``'s added), or a ToDtype with a dtype per input type."""
    if isinstance(step, _RANDOM):
        if type(step) in seen:
            return f"the device pipeline replays one {type(step).__name__} per transform; use the CPU loader"
        seen.add(type(step))
    if isinstance(step, v2.ToDtype) and not isinstance(step.dtype, torch.dtype):
        return "the device pipeline replays ToDtype with one dtype; use the CPU loader"
    return None


def _moves_before_pointwise(step: nn.Module, batched: list[nn.Module], least: int) -> bool:
    """Whether ``step``, placed after ``batched``, gives the same pixels when applied before them: a flip or a
    centre crop that pads nothing, after per-pixel steps only (Cutout's square depends on where pixels
    are)."""
    if not all(isinstance(s, _POINTWISE) for s in batched):
        return False
    if isinstance(step, v2.RandomHorizontalFlip):
        return True
    # A crop larger than the image pads with 0, which is not 0 once moved before the normalisation.
    return isinstance(step, v2.CenterCrop) and least >= max(step.size)


# ---------------------------------------------------------------------------------------- the worker side


@dataclass(frozen=True)
class ImageParams:
    """One item's image and what the host drew for it.

    ``path``: where the image is, as an error names it: its file, or ``KEY in shard URL``.
    ``fallback``: the item was decoded and transformed in the worker by the CPU transform (the other fields
    are then unused). ``size``: (height, width) from the JPEG header. ``crop``: (top, left, height, width) of
    the random-resized crop in the source image; ``flip``: mirror it; ``cutout``: (top, left, height, width)
    of the square zeroed in the output. ``train``: it comes from a training dataset (picks the pipeline's
    plan).
    """

    path: str
    train: bool
    fallback: bool = False
    size: tuple[int, int] | None = None
    crop: tuple[int, int, int, int] | None = None
    flip: bool = False
    cutout: tuple[int, int, int, int] | None = None


RawItem = tuple[torch.Tensor, int, ImageParams]


class _FileReader:
    """The images of an image folder: ``samples`` (path, label), each file read whole; a file that cannot be
    opened is unreadable (skipped), as the folder's loader finds it."""

    skipped_read_errors: tuple[type[BaseException], ...] = (OSError,)
    fix = "fix or delete the file"  # what an error about an unreadable image advises

    def __init__(self, folder_dataset: Any) -> None:
        self.samples: list[tuple[str, int]] = [
            (str(path), int(label)) for path, label in folder_dataset.samples
        ]
        self.loader: Callable[[str], Any] = getattr(folder_dataset, "loader", default_loader)

    def name(self, index: int) -> str:
        return self.samples[index][0]

    def read(self, index: int) -> bytearray:
        with open(self.samples[index][0], "rb") as file:
            return bytearray(file.read())

    def decode(self, index: int, data: bytearray) -> Any:
        return self.loader(self.samples[index][0])  # the folder's own loader, as its items are decoded


class _ShardReader:
    """The images of packed shards: one ranged read each through ``ShardDataset.read_bytes``; a read that
    still fails after its retries is an error, never a skipped image, as for the CPU loader of shards."""

    skipped_read_errors: tuple[type[BaseException], ...] = ()
    fix = ShardDataset.UNREADABLE_FIX

    def __init__(self, shards: ShardDataset) -> None:
        self.shards = shards

    def name(self, index: int) -> str:
        return self.shards.describe(index)

    def read(self, index: int) -> bytearray:
        return bytearray(self.shards.read_bytes(index))  # writable: torch.frombuffer shares it

    def decode(self, index: int, data: bytearray) -> Any:
        return decode_image(bytes(data))


class RawImageDataset(Dataset[RawItem | None]):
    """An image-folder or shard dataset whose items are ``(image file bytes uint8 (L,), label, ImageParams)``.

    ``dataset``: a ``senet.data.shards.ShardDataset`` (its ``shard_sizes`` are kept: ``build_loader`` reads it
    shard by shard), or a folder dataset with ``samples`` ((path, label) pairs) and ``loader`` (PIL by
    default). Its ``transform`` is the CPU transform this replays (see ``plan_transform``); ``strict`` is
    used when present, as in ``senet.data.folders.SkippingImageFolder``. Items that are not RGB/greyscale
    JPEGs come transformed, ``(image float (C, S, S), label, ImageParams(fallback=True))``; an unreadable
    image gives None (warned once per image per process), or raises naming it under ``strict``.
    ``train=False`` needs a deterministic transform (evaluation).
    """

    def __init__(self, dataset: Any, train: bool, *, strict: bool | None = None) -> None:
        if isinstance(dataset, ShardDataset):
            self.reader: _FileReader | _ShardReader = _ShardReader(dataset)
            self.shard_sizes = list(dataset.shard_sizes)
            self.targets = list(dataset.targets)
        elif getattr(dataset, "samples", None) is not None:
            self.reader = _FileReader(dataset)
            self.samples = self.reader.samples
            self.targets = [label for _, label in self.samples]
        else:
            raise ValueError(
                f"the device pipeline reads image files or shards; {type(dataset).__name__} has neither a "
                "samples (path, label) list nor shards: use the CPU loader"
            )
        self.transform: Callable[[Any], torch.Tensor] = dataset.transform
        self.strict = bool(getattr(dataset, "strict", False) if strict is None else strict)
        self.train = train
        self.plan = plan_transform(self.transform)
        if not train and self.plan.random:
            raise ValueError("an evaluation dataset (train=False) needs a deterministic transform")
        self._warned: set[str] = set()  # per process: each loader worker warns on its own

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> RawItem | None:
        what, target = self.reader.name(index), self.targets[index]
        try:
            data = self.reader.read(index)
        except self.reader.skipped_read_errors as error:
            return self._unreadable(what, error)
        size = _jpeg_size(data)
        if size is None:
            return self._on_host(index, what, data, target)
        drawn = self.plan.draw(*size)
        params = ImageParams(what, self.train, size=size, **drawn)
        return torch.frombuffer(data, dtype=torch.uint8), target, params

    def _on_host(self, index: int, what: str, data: bytearray, target: int) -> RawItem | None:
        """Exactly the CPU dataset's item: decoded as it decodes, the CPU transform draws and transforms."""
        try:
            image = self.reader.decode(index, data)
        except DECODE_ERRORS as error:
            return self._unreadable(what, error)
        return self.transform(image), target, ImageParams(what, self.train, fallback=True)

    def _unreadable(self, what: str, error: BaseException) -> None:
        report_unreadable(what, error, strict=self.strict, warned=self._warned, fix=self.reader.fix)
        return None


def _jpeg_size(data: bytearray) -> tuple[int, int] | None:
    """(height, width) of an RGB or greyscale JPEG, from its header (nothing is decoded); None for anything
    else, which the CPU transform then handles."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and image.mode in _DEVICE_MODES:
                return image.height, image.width
    except Exception:  # whatever PIL makes of it, the CPU path decides (and reports) the same
        return None
    return None


# -------------------------------------------------------------------------------------------------- collate


@dataclass
class RawBatch:
    """What a loader of ``RawImageDataset`` yields (``collate_raw``), for ``DeviceBatchPipeline``.

    ``encoded``: every JPEG of the batch, concatenated (one tensor: one shared-memory transfer from a worker);
    ``lengths``: each one's bytes; ``params``: each one's ImageParams, in batch order. ``host_images``: the
    fallback items, already transformed (float (M, C, S, S), or empty); ``host_positions``: their places in
    the batch. ``targets``: every kept item's label, in batch order; ``num_skipped``: unreadable items
    dropped; ``train``: which plan applies (None for a batch with no item left).
    """

    encoded: torch.Tensor
    lengths: list[int]
    params: list[ImageParams]
    host_images: torch.Tensor
    host_positions: list[int]
    targets: torch.Tensor
    num_skipped: int
    train: bool | None

    def __len__(self) -> int:
        return len(self.targets)

    def pin_memory(self) -> "RawBatch":
        # DataLoader(pin_memory=True) calls this. decode_jpeg reads the bytes on the host: pin only these.
        return replace(self, host_images=self.host_images.pin_memory(), targets=self.targets.pin_memory())


def collate_raw(batch: list[RawItem | None]) -> RawBatch:
    """Collate ``RawImageDataset`` items (None: unreadable, counted in ``num_skipped``) to a ``RawBatch``."""
    kept = [item for item in batch if item is not None]
    jpegs = [item for item in kept if not item[2].fallback]
    hosts = [(position, item) for position, item in enumerate(kept) if item[2].fallback]
    encoded = torch.cat([item[0] for item in jpegs]) if jpegs else torch.empty(0, dtype=torch.uint8)
    host_images = torch.stack([item[0] for _, item in hosts]) if hosts else torch.empty(0)
    return RawBatch(
        encoded=encoded,
        lengths=[item[0].numel() for item in jpegs],
        params=[item[2] for item in jpegs],
        host_images=host_images,
        host_positions=[position for position, _ in hosts],
        targets=torch.tensor([item[1] for item in kept], dtype=torch.long),
        num_skipped=len(batch) - len(kept),
        train=kept[0][2].train if kept else None,
    )


def build_raw_loader(dataset: RawImageDataset, **kwargs: Any) -> DataLoader[Any]:
    """``build_loader(dataset, **kwargs)`` (the same sampler, worker seeding and options, hence the same draws
    as the CPU loader with the same arguments) collating with ``collate_raw``: it yields ``RawBatch``es."""
    return build_loader(dataset, collate_fn=collate_raw, **kwargs)


# ---------------------------------------------------------------------------------------- the device side


class _BatchConversion:
    """The steps of a transform from its float conversion on (ToDtype, Normalize, Cutout), applied to a
    stacked batch on its device with the CPU transform's own arithmetic; the constants kept on the device."""

    def __init__(self) -> None:
        self._constants: dict[tuple[Any, ...], torch.Tensor] = {}

    def _convert(
        self,
        steps: tuple[nn.Module, ...],
        batch: torch.Tensor,
        squares: list[tuple[int, int, int, int] | None],
    ) -> torch.Tensor:
        """``steps`` on ``batch`` in order; ``squares``: each image's Cutout square, drawn on the host."""
        for step in steps:
            if isinstance(step, v2.ToDtype):
                batch = F.to_dtype(batch, step.dtype, scale=step.scale)
            elif isinstance(step, v2.Normalize):
                # F.normalize's arithmetic (sub, then div), without its host check of std on the device.
                mean = self._constant("mean", step.mean, batch)
                std = self._constant("std", step.std, batch)
                batch = batch.sub(mean).div_(std)
            elif isinstance(step, Cutout):
                batch = _erase(batch, squares)
        return batch

    def _constant(self, name: str, values: Any, like: torch.Tensor) -> torch.Tensor:
        key = (name, tuple(values), like.dtype, like.device)
        if key not in self._constants:
            self._constants[key] = torch.as_tensor(list(values), dtype=like.dtype, device=like.device).view(
                -1, 1, 1
            )
        return self._constants[key]


class DeviceBatchPipeline(_BatchConversion):
    """``RawBatch`` -> ``(images, targets, num_skipped)`` on ``device``, as the CPU loader's batch would be.

    ``images``: float (N, C, S, S), normalised (channels-last when asked); ``targets``: int64 (N,);
    ``num_skipped``: the workers' unreadable items plus the JPEGs the device could not decode. A batch with
    nothing left gives ``images`` and ``targets`` with no element (``targets.numel() == 0``), as the CPU
    loader's. ``train``/``val``: the plans of the two datasets (``RawImageDataset.plan``); ``strict``: a JPEG
    that does not decode raises, naming it, instead of being dropped; ``fix``: what that error advises.
    ``collate``: the collate function of its loaders.
    """

    collate = staticmethod(collate_raw)

    def __init__(
        self,
        train: DevicePlan | None,
        val: DevicePlan | None,
        *,
        strict: bool = False,
        fix: str = _FileReader.fix,
    ) -> None:
        super().__init__()
        self.plans = {True: train, False: val}
        self.strict, self.fix = strict, fix
        self._warned: set[str] = set()

    def __call__(
        self, batch: RawBatch, device: torch.device | str, channels_last: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        device = torch.device(device)
        plan = None if batch.train is None else self.plans[batch.train]  # None: every item was unreadable
        if batch.train is not None and plan is None:
            raise ValueError(f"this pipeline has no {'training' if batch.train else 'evaluation'} plan")
        decoded = self._decode(batch, device)
        good = [k for k, image in enumerate(decoded) if image is not None]
        skipped = batch.num_skipped + len(decoded) - len(good)
        # Places in the batch: the fallback items' are given, the JPEGs fill the others in order.
        hosts = set(batch.host_positions)
        jpeg_positions = [k for k in range(len(batch.targets)) if k not in hosts]
        parts, order = [], [jpeg_positions[k] for k in good] + batch.host_positions
        if good:
            assert plan is not None
            parts.append(self._transform(plan, [decoded[k] for k in good], [batch.params[k] for k in good]))
        if batch.host_positions:
            parts.append(batch.host_images.to(device, non_blocking=True))
        if not parts:  # as the CPU loader's empty batch
            return torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device), skipped
        images = torch.cat(parts) if len(parts) > 1 else parts[0]
        ranked = sorted(range(len(order)), key=order.__getitem__)
        if ranked != list(range(len(order))):
            images = images[torch.tensor(ranked, device=device)]
        targets = batch.targets if len(order) == len(batch.targets) else batch.targets[sorted(order)]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(device, non_blocking=True), skipped

    # -- decoding

    def _decode(self, batch: RawBatch, device: torch.device) -> list[torch.Tensor | None]:
        """Every JPEG of the batch decoded to uint8 (3, H, W) on ``device`` (None: dropped): one batched call;
        if it fails, each image alone, so that one bad file does not lose the batch."""
        if not batch.lengths:
            return []
        chunks = list(batch.encoded.split(batch.lengths))
        try:
            images: list[torch.Tensor | None] = list(_decode_jpegs(chunks, device))
        except torch.OutOfMemoryError:
            raise
        except Exception:  # the batched call does not say which image failed: find it
            images = [
                self._decode_one(chunk, params.path, device)
                for chunk, params in zip(chunks, batch.params, strict=True)
            ]
        for k, (image, params) in enumerate(zip(images, batch.params, strict=True)):
            if image is not None and tuple(image.shape[-2:]) != params.size:
                error = ValueError(f"decoded {tuple(image.shape[-2:])}, but its header says {params.size}")
                report_unreadable(params.path, error, strict=self.strict, warned=self._warned, fix=self.fix)
                images[k] = None
        return images

    def _decode_one(self, chunk: torch.Tensor, path: str, device: torch.device) -> torch.Tensor | None:
        error: BaseException | None = None
        for where in (device, torch.device("cpu")) if device.type != "cpu" else (device,):
            try:
                return _decode_jpegs([chunk], where)[0].to(device)
            except torch.OutOfMemoryError:
                raise
            except Exception as failure:  # nvjpeg and libjpeg raise RuntimeError; anything else too
                error = failure
        assert error is not None
        report_unreadable(path, error, strict=self.strict, warned=self._warned, fix=self.fix)
        return None

    # -- the transform

    def _transform(
        self, plan: DevicePlan, images: list[torch.Tensor], params: list[ImageParams]
    ) -> torch.Tensor:
        """The CPU transform's computation on decoded uint8 images: the same torchvision kernels."""
        out = [self._geometry(plan, image, p) for image, p in zip(images, params, strict=True)]
        batch = torch.stack(out)
        device = batch.device
        if plan.batch_flip:
            flips = torch.tensor([p.flip for p in params]).to(device, non_blocking=True)
            batch = torch.where(flips.view(-1, 1, 1, 1), F.horizontal_flip(batch), batch)
        return self._convert(plan.batched, batch, [p.cutout for p in params])

    @staticmethod
    def _geometry(plan: DevicePlan, image: torch.Tensor, params: ImageParams) -> torch.Tensor:
        for step in plan.geometry:
            if isinstance(step, v2.RandomResizedCrop):
                assert params.crop is not None
                image = F.resized_crop(
                    image,
                    *params.crop,
                    size=list(step.size),
                    interpolation=step.interpolation,
                    antialias=step.antialias,
                )
            elif isinstance(step, v2.Resize):
                image = F.resize(
                    image,
                    step.size,
                    interpolation=step.interpolation,
                    max_size=step.max_size,
                    antialias=step.antialias,
                )
            elif isinstance(step, v2.CenterCrop):
                image = F.center_crop(image, list(step.size))
            elif isinstance(step, v2.RandomHorizontalFlip) and params.flip:
                image = F.horizontal_flip(image)
        return image


def _decode_jpegs(chunks: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)


def _erase(batch: torch.Tensor, squares: list[tuple[int, int, int, int] | None]) -> torch.Tensor:
    """Zero each image's (top, left, height, width) square, as Cutout's ``F.erase(..., v=0)``, in one pass."""
    boxes = torch.tensor([square or (0, 0, 0, 0) for square in squares], dtype=torch.long)
    boxes = boxes.to(batch.device, non_blocking=True)
    top, left, height, width = boxes.unbind(1)
    rows = torch.arange(batch.shape[-2], device=batch.device)
    cols = torch.arange(batch.shape[-1], device=batch.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    inside = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    # masked_fill would return a contiguous tensor: keep the batch's layout (channels_last)
    return batch.clone(memory_format=torch.preserve_format).masked_fill_(inside, 0)


# ------------------------------------------------------------------------ the CPU loader on a GPU: uint8


class _UntilConversion(nn.Module):
    """A worker's part of a transform cut at its float conversion: the steps before it, then the Cutout square
    drawn as Cutout draws it (the transform's last draw: nothing after the cut draws before Cutout). Gives
    ``(image (C, H, W), (top, left, height, width) or None)``."""

    def __init__(self, steps: tuple[nn.Module, ...], cutout: Cutout | None) -> None:
        super().__init__()
        self.steps = v2.Compose(list(steps))
        self.cutout = cutout

    def forward(self, image: Any) -> tuple[torch.Tensor, tuple[int, int, int, int] | None]:
        image = self.steps(image)
        square = None
        if self.cutout is not None:
            drawn = self.cutout.make_params([image])
            square = (drawn["i"], drawn["j"], drawn["h"], drawn["w"])
        return image.as_subclass(torch.Tensor), square


def _split_at_conversion(transform: Any) -> tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]] | None:
    """(the steps before the float conversion, the conversion's steps) of a ``v2.Compose`` that makes a
    tensor image (ToImage) and from its first ToDtype on only converts, normalises and cuts out (at most one
    Cutout); None for any other transform (ten-crop's stacking, a step of another kind)."""
    if not isinstance(transform, v2.Compose):
        return None
    steps = list(transform.transforms)
    first = next((k for k, step in enumerate(steps) if isinstance(step, v2.ToDtype)), None)
    if first is None or not any(isinstance(step, v2.ToImage) for step in steps[:first]):
        return None
    after = tuple(step for step in steps[first:] if not isinstance(step, v2.ToPureTensor))
    if not all(isinstance(step, _BATCHED) for step in after):
        return None
    seen: set[type] = set()
    if any(_unreplayable(step, seen) for step in after):
        return None
    return tuple(steps[:first]), after


@dataclass
class Uint8Batch:
    """What the CPU loader sends a GPU (``collate_uint8``): ``images`` before their float conversion (uint8
    (N, C, S, S) for image files and CIFAR), ``squares``: each one's Cutout square (top, left, height, width)
    or None, ``targets`` (N,), and ``num_skipped``: the unreadable items dropped."""

    images: torch.Tensor
    squares: list[tuple[int, int, int, int] | None]
    targets: torch.Tensor
    num_skipped: int

    def __len__(self) -> int:
        return len(self.targets)

    def pin_memory(self) -> "Uint8Batch":
        return replace(self, images=self.images.pin_memory(), targets=self.targets.pin_memory())


def collate_uint8(batch: list[tuple[tuple[torch.Tensor, Any], int] | None]) -> Uint8Batch:
    """Collate the items of a ``convert_on_device`` dataset (None: unreadable, counted in ``num_skipped``)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return Uint8Batch(torch.empty(0, dtype=torch.uint8), [], torch.empty(0, dtype=torch.long), len(batch))
    # default_collate stacks into shared memory in a worker: the batch is not copied again to be sent
    images, targets = default_collate([(image, label) for (image, _), label in kept])
    return Uint8Batch(images, [square for (_, square), _ in kept], targets, len(batch) - len(kept))


class ConvertOnDevice(_BatchConversion):
    """``Uint8Batch`` -> ``(images, targets, num_skipped)`` on ``device``: the batch is copied as it is and
    converted, normalised and cut out there with the CPU transform's arithmetic (``steps``: its ToDtype,
    Normalize and Cutout, in order): the CPU loader's float batch, bit for bit on CPU (tested). ``images``:
    float (N, C, S, S), channels-last when asked; a batch of unreadable images only gives ``images`` and
    ``targets`` with no element, as the CPU loader's. ``collate``: the collate function of its loader."""

    collate = staticmethod(collate_uint8)

    def __init__(self, steps: tuple[nn.Module, ...]) -> None:
        super().__init__()
        self.steps = steps

    def __call__(
        self, batch: Uint8Batch, device: torch.device | str, channels_last: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        device = torch.device(device)
        targets = batch.targets.to(device, non_blocking=True)
        if not len(batch):
            return torch.empty(0, device=device), targets, batch.num_skipped
        images = batch.images.to(device, non_blocking=True)
        # Before the conversion, uint8 is cheaper to move; the float ops and _erase keep the layout.
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        images = self._convert(self.steps, images, batch.squares)
        return images, targets, batch.num_skipped


def convert_on_device(dataset: Any) -> tuple[Any, ConvertOnDevice] | None:
    """The CPU loader's dataset for a GPU, and what finishes its batches there; None where it cannot be split.

    The dataset is a shallow copy of ``dataset`` (the same images, reading and unreadable handling) whose
    transform stops before the float conversion: items ``((image, Cutout square or None), label)``, drawn from
    the RNG in the CPU transform's order. Load it with ``build_loader(..., collate_fn=collate_uint8)`` (the
    same sampler and worker seeds: the same draws) and finish each batch with ``finish(batch, device,
    channels_last)``. None when ``dataset``'s ``transform`` does not end in ToDtype, Normalize and Cutout
    after making a tensor image (see ``_split_at_conversion``): load it as it is.
    """
    split = _split_at_conversion(getattr(dataset, "transform", None))
    if split is None:
        return None
    before, after = split
    cutout = next((step for step in after if isinstance(step, Cutout)), None)
    host = copy.copy(dataset)  # a ShardDataset's copy opens its own shards (its __getstate__)
    host.transform = _UntilConversion(before, cutout)
    if isinstance(host, VisionDataset):  # torchvision keeps the transform twice
        host.transforms = StandardTransform(host.transform, host.target_transform)
    return host, ConvertOnDevice(after)


# ----------------------------------------------------------------------------------------------- the entry


def decodes_on_device(spec: DataSpec) -> bool:
    """Whether the GPU loader can read ``spec``: image files, of an image folder or packed in shards."""
    return all(
        isinstance(split, ShardDataset) or hasattr(split, "samples") for split in (spec.train, spec.val)
    )


def device_pipeline_datasets(spec: DataSpec) -> tuple[RawImageDataset, RawImageDataset, DeviceBatchPipeline]:
    """The raw datasets of an image-folder or shards ``spec``, and the pipeline that finishes their batches on
    a device.

    Load them with ``build_raw_loader`` (``build_loader``'s arguments), then ``pipeline(batch, device,
    channels_last)`` per batch. Other sources (digits and CIFAR, held as tensors) and ten-crop evaluation are
    refused in one line: they stay on the CPU loader.
    """
    if not decodes_on_device(spec):
        raise ValueError(
            f"the GPU loader reads the image files of an image folder or of its shards; {spec.name} data "
            f"({type(spec.train).__name__}: tensors in memory) is neither: use the CPU loader"
        )
    train = RawImageDataset(spec.train, train=True)
    val = RawImageDataset(spec.val, train=False)
    if train.plan.output_size != (spec.image_size, spec.image_size):
        raise ValueError(
            f"the training transform gives {train.plan.output_size} images, not the spec's {spec.image_size}"
        )
    pipeline = DeviceBatchPipeline(
        train.plan, val.plan, strict=train.strict or val.strict, fix=train.reader.fix
    )
    return train, val, pipeline


class DeviceLoader:
    """A loader whose batches ``pipeline`` finishes on ``device`` (a ``DeviceBatchPipeline`` or a
    ``ConvertOnDevice``): iterates like the CPU loader (batches ``(images, targets, num_skipped)``, already on
    the device), with its ``sampler`` and length."""

    def __init__(
        self,
        loader: DataLoader[Any],
        pipeline: DeviceBatchPipeline | ConvertOnDevice,
        device: torch.device,
        channels_last: bool,
    ) -> None:
        self.loader, self.pipeline, self.device, self.channels_last = loader, pipeline, device, channels_last

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        for batch in self.loader:
            yield self.pipeline(batch, self.device, self.channels_last)
