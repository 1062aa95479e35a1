"""A GPU input pipeline: loader workers read JPEG files and draw the augmentation; the device does the rest.

On a GPU the CPU transform (decode, random-resized crop, flip, normalise, Cutout: about 250 images/s a core)
starves training. Here a worker only reads a file's bytes, reads its size from the header (no decoding) and
draws the augmentation with torchvision's own ``make_params`` from the torch RNG, in exactly the order and
number of calls the CPU transform makes: with the same worker seeds both paths crop the same boxes, flip the
same images and cut out the same squares. The device then decodes the batch in one ``decode_jpeg`` call
(nvjpeg on CUDA), crops and resizes each uint8 image, stacks, flips, converts, normalises and cuts out.

A batch flows as::

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
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import default_loader
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size

from senet.data.datasets import DataSpec, report_unreadable
from senet.data.loaders import build_loader
from senet.data.transforms import Cutout

__all__ = [
    "DeviceBatchPipeline",
    "DevicePlan",
    "ImageParams",
    "RawBatch",
    "RawImageDataset",
    "build_raw_loader",
    "collate_raw",
    "device_pipeline_datasets",
    "plan_transform",
]

_LOG = logging.getLogger("senet.data")

# What PIL raises on a file it cannot decode (as senet.data.datasets): garbage, truncation, bad plugin data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# JPEG colour modes the device decodes to RGB as PIL's convert("RGB") does; others (CMYK, ...) stay on host.
_DEVICE_MODES = ("RGB", "L")

_GEOMETRIC = (v2.RandomResizedCrop, v2.Resize, v2.CenterCrop, v2.RandomHorizontalFlip)
_POINTWISE = (v2.ToDtype, v2.Normalize)  # the same for every pixel: pixel selection commutes with them
_BATCHED = (v2.ToDtype, v2.Normalize, Cutout)  # applied to the stacked batch, in the transform's order
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
        return any(isinstance(s, (v2.RandomResizedCrop, v2.RandomHorizontalFlip, Cutout)) for s in self.steps)

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
        if isinstance(step, (v2.RandomResizedCrop, v2.RandomHorizontalFlip, Cutout)):
            if type(step) in seen:
                raise ValueError(f"the device pipeline replays one {name} per transform; use the CPU loader")
            seen.add(type(step))
        if isinstance(step, _BATCHED):
            if isinstance(step, v2.ToDtype) and not isinstance(step.dtype, torch.dtype):
                raise ValueError("the device pipeline replays ToDtype with one dtype; use the CPU loader")
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
    """One item's file and what the host drew for it.

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


class RawImageDataset(Dataset[RawItem | None]):
    """An image-folder dataset whose items are ``(file bytes uint8 (L,), label, ImageParams)``.

    ``folder_dataset`` needs ``samples`` ((path, label) pairs) and ``transform`` (the CPU transform this
    replays, see ``plan_transform``); ``loader`` (PIL by default) and ``strict`` are used when present, as in
    ``senet.data.datasets._ImageFolder``. Items that are not RGB/greyscale JPEGs come transformed,
    ``(image float (C, S, S), label, ImageParams(fallback=True))``; an unreadable file gives None (warned once
    per path per process), or raises naming the path under ``strict``. ``train=False`` needs a deterministic
    transform (evaluation).
    """

    def __init__(self, folder_dataset: Any, train: bool, *, strict: bool | None = None) -> None:
        samples = getattr(folder_dataset, "samples", None)
        if samples is None:
            raise ValueError(
                f"the device pipeline reads image files; {type(folder_dataset).__name__} has no samples "
                "(path, label) list: use the CPU loader"
            )
        self.samples: list[tuple[str, int]] = [(str(path), int(label)) for path, label in samples]
        self.targets = [label for _, label in self.samples]
        self.transform: Callable[[Any], torch.Tensor] = folder_dataset.transform
        self.loader: Callable[[str], Any] = getattr(folder_dataset, "loader", default_loader)
        self.strict = bool(getattr(folder_dataset, "strict", False) if strict is None else strict)
        self.train = train
        self.plan = plan_transform(self.transform)
        if not train and self.plan.random:
            raise ValueError("an evaluation dataset (train=False) needs a deterministic transform")
        self._warned: set[str] = set()  # per process: each loader worker warns on its own

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> RawItem | None:
        path, target = self.samples[index]
        try:
            with open(path, "rb") as file:
                data = bytearray(file.read())
        except OSError as error:
            return self._unreadable(path, error)
        size = _jpeg_size(data)
        if size is None:
            return self._on_host(path, target)
        drawn = self.plan.draw(*size)
        params = ImageParams(path, self.train, size=size, **drawn)
        return torch.frombuffer(data, dtype=torch.uint8), target, params

    def _on_host(self, path: str, target: int) -> RawItem | None:
        """Exactly the CPU dataset's item: the loader decodes, the CPU transform draws and transforms."""
        try:
            image = self.loader(path)
        except _DECODE_ERRORS as error:
            return self._unreadable(path, error)
        return self.transform(image), target, ImageParams(path, self.train, fallback=True)

    def _unreadable(self, path: str, error: BaseException) -> None:
        report_unreadable(path, error, strict=self.strict, warned=self._warned)
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
    loader = build_loader(dataset, **kwargs)
    loader.collate_fn = collate_raw  # read when an iterator (and its workers) starts
    return loader


# ---------------------------------------------------------------------------------------- the device side


class DeviceBatchPipeline:
    """``RawBatch`` -> ``(images, targets, num_skipped)`` on ``device``, as the CPU loader's batch would be.

    ``images``: float (N, C, S, S), normalised (channels-last when asked); ``targets``: int64 (N,);
    ``num_skipped``: the workers' unreadable items plus the JPEGs the device could not decode. A batch with
    nothing left gives ``images`` and ``targets`` with no element (``targets.numel() == 0``), as the CPU
    loader's. ``train``/``val``: the plans of the two datasets (``RawImageDataset.plan``); ``strict``: a JPEG
    that does not decode raises, naming it, instead of being dropped.
    """

    def __init__(self, train: DevicePlan | None, val: DevicePlan | None, *, strict: bool = False) -> None:
        self.plans = {True: train, False: val}
        self.strict = strict
        self._warned: set[str] = set()
        self._constants: dict[tuple[Any, ...], torch.Tensor] = {}

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
                self._decode_one(chunk, params.path, device) for chunk, params in zip(chunks, batch.params)
            ]
        for k, (image, params) in enumerate(zip(images, batch.params)):
            if image is not None and tuple(image.shape[-2:]) != params.size:
                error = ValueError(f"decoded {tuple(image.shape[-2:])}, but its header says {params.size}")
                report_unreadable(params.path, error, strict=self.strict, warned=self._warned)
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
        report_unreadable(path, error, strict=self.strict, warned=self._warned)
        return None

    # -- the transform

    def _transform(
        self, plan: DevicePlan, images: list[torch.Tensor], params: list[ImageParams]
    ) -> torch.Tensor:
        """The CPU transform's computation on decoded uint8 images: the same torchvision kernels."""
        out = [self._geometry(plan, image, p) for image, p in zip(images, params)]
        batch = torch.stack(out)
        device = batch.device
        if plan.batch_flip:
            flips = torch.tensor([p.flip for p in params]).to(device, non_blocking=True)
            batch = torch.where(flips.view(-1, 1, 1, 1), F.horizontal_flip(batch), batch)
        for step in plan.batched:
            if isinstance(step, v2.ToDtype):
                batch = F.to_dtype(batch, step.dtype, scale=step.scale)
            elif isinstance(step, v2.Normalize):
                # F.normalize's arithmetic (sub, then div), without its host check of std on the device.
                mean = self._constant("mean", step.mean, batch)
                std = self._constant("std", step.std, batch)
                batch = batch.sub(mean).div_(std)
            elif isinstance(step, Cutout):
                batch = _erase(batch, [p.cutout for p in params])
        return batch

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

    def _constant(self, name: str, values: Any, like: torch.Tensor) -> torch.Tensor:
        key = (name, tuple(values), like.dtype, like.device)
        if key not in self._constants:
            self._constants[key] = torch.as_tensor(list(values), dtype=like.dtype, device=like.device).view(
                -1, 1, 1
            )
        return self._constants[key]


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
    return batch.masked_fill(inside, 0)


# ----------------------------------------------------------------------------------------------- the entry


def device_pipeline_datasets(spec: DataSpec) -> tuple[RawImageDataset, RawImageDataset, DeviceBatchPipeline]:
    """The raw datasets of an image-folder ``spec`` and the pipeline that finishes their batches on a device.

    Load them with ``build_raw_loader`` (``build_loader``'s arguments), then ``pipeline(batch, device,
    channels_last)`` per batch. Other sources (digits and CIFAR, held as tensors; packed shards) and ten-crop
    evaluation are refused in one line: they stay on the CPU loader.
    """
    if not all(hasattr(split, "samples") for split in (spec.train, spec.val)):
        raise ValueError(
            f"the GPU loader reads the image files of an image folder; {spec.name} data "
            f"({type(spec.train).__name__}: tensors in memory, or packed shards) is not one: "
            "use the CPU loader"
        )
    train = RawImageDataset(spec.train, train=True)
    val = RawImageDataset(spec.val, train=False)
    if train.plan.output_size != (spec.image_size, spec.image_size):
        raise ValueError(
            f"the training transform gives {train.plan.output_size} images, not the spec's {spec.image_size}"
        )
    pipeline = DeviceBatchPipeline(train.plan, val.plan, strict=train.strict or val.strict)
    return train, val, pipeline


class DecodedLoader:
    """A raw loader whose batches ``pipeline`` finishes on ``device``: iterates like the CPU loader (batches
    ``(images, targets, num_skipped)``, already on the device), with its ``sampler`` and length."""

    def __init__(
        self,
        loader: DataLoader[Any],
        pipeline: DeviceBatchPipeline,
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
