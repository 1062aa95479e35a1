"""``predict``: the top-k classes of image files, fed to a network as its weights record (``senet predict``).

Images are decoded by :func:`load_image`, which turns any common file into the 8-bit ``L`` or ``RGB`` image
the network's preprocessing expects: EXIF orientation applied, transparency flattened onto white, CMYK,
palette, 1-bit and 16-bit images converted (16-bit values scaled, not clipped). A file that cannot be decoded
(not an image, truncated, a decompression bomb) is reported by path and the others go on: prediction never
guesses pixels that are not in the file, and never stops a directory of thousands for one bad file.
"""

from __future__ import annotations

import logging
import struct
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import nn

from senet.data.transforms import Preprocessing
from senet.runtime import resolve_device
from senet.weights.info import WeightsInfo
from senet.weights.pretrained import load_pretrained

_LOG = logging.getLogger("senet.deploy")


class UnreadableImageError(ValueError):
    """A file that does not decode into an image; ``str()`` is one line naming the path and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}")


class _Unsupported(ValueError):
    """Pixels without a defined 8-bit meaning (32-bit integers, floats): refused, not guessed."""


class ClassScore(NamedTuple):
    """One of an image's top-k classes: its label, softmax probability and index in the classifier."""

    label: str
    prob: float
    index: int


@dataclass(frozen=True)
class Prediction:
    """An input file's top-k classes, most probable first; or, for a file that failed, the cause."""

    path: str
    top: list[ClassScore] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        """The JSON record of ``senet predict --format jsonl``."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "top": [{"label": s.label, "index": s.index, "prob": s.prob} for s in self.top],
        }


# What PIL raises on a file it cannot decode: garbage (UnidentifiedImageError is an OSError), truncation
# (OSError from load()), broken plugin data (SyntaxError, ValueError, EOFError, struct.error from EXIF or
# headers), or a decompression bomb (an error above 2x MAX_IMAGE_PIXELS, a warning above it: made an error).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

# 16-bit greyscale files open as I;16 (little-endian), I;16B (big-endian) or, in older Pillows, I (int32).
_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def _cause(error: BaseException) -> str:
    """The reason a file did not decode, in words (PIL's messages repeat the path, or say little)."""
    if isinstance(error, _Unsupported):
        return str(error)
    if isinstance(error, UnidentifiedImageError):
        return "not an image (or of a format PIL cannot read)"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"refused as a possible decompression bomb ({error})"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "a directory, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    # PIL says "image file is truncated" or "Truncated File Read", depending on where the data ran out.
    if isinstance(error, OSError) and "truncated" in str(error).lower():
        return f"truncated image ({error})"
    text = str(error).strip().splitlines()
    return f"damaged or unsupported image ({type(error).__name__}: {text[0] if text else 'no details'})"


def _integer_to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit ``L``, 65535 -> 255: PIL's own convert("L") clips at 255 instead,
    which makes nearly every 16-bit image all white."""
    values = np.asarray(image)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:  # a genuine 32-bit integer image: no agreed 0..255 mapping, none is guessed
        raise _Unsupported(
            f"mode {image.mode} pixels span {low}..{high}, beyond 16 bits; convert the file to 8 or 16 bits"
        )
    return Image.fromarray(np.rint(values.astype(np.float64) * (255 / 65535)).astype(np.uint8))


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in _ALPHA_MODES or "transparency" in image.info:  # tRNS of P, L and RGB files
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _to_model_mode(image: Image.Image, in_chans: int) -> Image.Image:
    """Any decoded image as the 8-bit ``L`` (in_chans 1) or ``RGB`` (in_chans 3) image a network is fed."""
    if image.mode == "F":
        raise _Unsupported(
            "32-bit float pixels (mode F) have no defined 0..255 range; convert the file to 8 or 16 bits"
        )
    if image.mode in _INTEGER_MODES:
        image = _integer_to_8bit(image)
    elif image.mode == "1":
        image = image.convert("L")  # 0 / 255
    if _has_alpha(image):
        # Transparent pixels keep whatever colour the file stores under them (often black, or noise):
        # dropping the alpha channel would show it. Composite onto white instead, as a viewer shows a
        # transparent logo or product photo on a page, so that the network sees what a person sees.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, HSV, P, RGBA (after compositing), ...
    wanted = "L" if in_chans == 1 else "RGB"  # RGB -> L is ITU-R 601 luma; L -> RGB replicates the channel
    return image if image.mode == wanted else image.convert(wanted)


def load_image(path: str | Path, in_chans: int = 3) -> Image.Image:
    """Decode ``path`` into the 8-bit image a network of ``in_chans`` input channels takes (1: L, 3: RGB).

    EXIF orientation is applied; transparency is composited onto white; palette, 1-bit, CMYK and 16-bit images
    are converted (16-bit values scaled by 255/65535). A file that does not decode raises
    :class:`UnreadableImageError` naming the path and the cause: not an image; truncated (this module never
    sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``, so a cut file is an error, not grey pixels); or larger than
    ``PIL.Image.MAX_IMAGE_PIXELS``, a possible decompression bomb (PIL only warns up to twice the limit; here
    that is an error too).
    """
    if in_chans not in (1, 3):
        raise ValueError(f"images are fed as 1 (L) or 3 (RGB) channels; the network takes {in_chans}")
    try:
        with warnings.catch_warnings():  # only for this load: PIL's global limit and filters stay as they are
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()  # decode now, inside the handlers: truncation only shows here
                image = ImageOps.exif_transpose(opened)
        return _to_model_mode(image, in_chans)
    except _DECODE_ERRORS as error:
        raise UnreadableImageError(path, _cause(error)) from error


# What a directory is searched for: every extension PIL can open (JPEG, PNG, WebP, TIFF, BMP, GIF, ...).
# A file given by name is always tried, whatever its name.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[tuple[str, str | None]], bool]:
    """Input paths as files to predict, each with None or why it cannot be, and whether any was a folder.

    A directory contributes its image files, recursively and sorted; one without any is reported itself."""
    found: list[tuple[str, str | None]] = []
    any_directory = False
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            any_directory = True
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not files:
                found.append((str(path), "a directory without image files"))
            found += [(str(p), None) for p in files]
        elif path.exists() or path.is_symlink():
            found.append((str(path), None))  # a broken link fails at decoding, with its own cause
        else:
            found.append((str(path), "no such file or directory"))
    return found, any_directory


def read_labels(path: str | Path, num_classes: int | None) -> list[str]:
    """One label per line (trailing blank lines ignored); exactly ``num_classes`` of them (``None``: any
    number, checked later), none blank."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"labels file {path} is missing") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"labels file {path} is not UTF-8 text ({error.reason})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    return _check_labels(labels, num_classes, f"labels file {path}")


def _check_labels(labels: Sequence[str], num_classes: int | None, origin: str) -> list[str]:
    if num_classes is not None and len(labels) != num_classes:
        raise ValueError(
            f"{origin} has {len(labels)} labels; the network has {num_classes} classes, one per line"
        )
    blank = [n for n, label in enumerate(labels, 1) if not str(label).strip()]
    if blank:
        raise ValueError(f"{origin}: label {blank[0]} is blank")
    return [str(label) for label in labels]


def _resolve_model(source: str | Path | nn.Module, weights: str) -> tuple[nn.Module, WeightsInfo]:
    if isinstance(source, nn.Module):
        info = getattr(source, "pretrained_info", None)
        if not isinstance(info, WeightsInfo):
            raise ValueError(
                "predict needs the network's preprocessing: pass a model from senet.load_pretrained "
                "(it carries .pretrained_info), a weights file or a run directory"
            )
        return source, info

    model = load_pretrained(source, weights=weights)  # type: ignore[arg-type]  # checked there
    return model, model.pretrained_info


def predict(
    source: str | Path | nn.Module,
    inputs: str | Path | Iterable[str | Path],
    *,
    topk: int = 5,
    labels: str | Path | Sequence[str] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    weights: Literal["last", "best"] = "last",
    progress: bool | None = None,
) -> Iterator[Prediction]:
    """The ``topk`` most probable classes of each image in ``inputs``, streamed in input order.

    Args:
        source: a senet weights file, a run directory of ``senet train`` (or a ``checkpoint-*.json``), or a
            network from ``senet.load_pretrained`` (moved to ``device`` and run in eval mode; its training
            flag is restored when the iteration ends).
        inputs: image files and directories (searched recursively for :data:`IMAGE_EXTENSIONS`, sorted).
        topk: classes per image; capped at the network's class count.
        labels: a file of one label per line, or a list; else the labels recorded with the weights; else the
            class indices as strings.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        weights: for a run directory, its ``last`` checkpoint or ``best`` epoch.
        progress: a tqdm bar on stderr; None: when a directory was given, stderr is a terminal and there is
            more than one file.

    Each image is preprocessed as recorded with the weights (``WeightsInfo.preprocessing``). A file that
    cannot be predicted (missing, not an image, truncated, a decompression bomb) gives a :class:`Prediction`
    with its ``error``; the others go on. Problems of the network, labels or arguments raise at the call,
    before any image is read.
    """

    if not (isinstance(topk, int) and topk >= 1):
        raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    model, info = _resolve_model(source, weights)
    preprocessing = info.preprocessing
    in_chans = info.options.get("in_chans", preprocessing.in_chans)
    if in_chans != preprocessing.in_chans:
        raise ValueError(
            f"the network takes {in_chans} input channels but its preprocessing normalises "
            f"{preprocessing.in_chans}; the weights record is inconsistent"
        )
    if in_chans not in (1, 3):
        raise ValueError(f"images are fed as 1 (L) or 3 (RGB) channels; the network takes {in_chans}")
    if isinstance(labels, (str, Path)):
        names = read_labels(labels, info.num_classes)
    elif labels is not None:
        names = _check_labels(list(labels), info.num_classes, "labels")
    elif info.labels is not None:
        names = list(info.labels)
    else:
        names = [str(k) for k in range(info.num_classes)]
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set elsewhere in this process: PIL then hides truncation from us
        _LOG.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files will be predicted from partly grey "
            "pixels instead of being reported"
        )
    files, any_directory = expand_inputs([inputs] if isinstance(inputs, (str, Path)) else inputs)
    return _run(
        model,
        files,
        names,
        preprocessing=preprocessing,
        topk=min(topk, info.num_classes),
        batch_size=batch_size,
        device=resolve_device(device),
        progress=_show_progress(progress, any_directory, len(files)),
    )


def _show_progress(progress: bool | None, any_directory: bool, count: int) -> bool:
    """A bar when asked for; by default for directories of several files, on a terminal only (not in logs)."""
    if progress is not None:
        return progress
    return any_directory and count > 1 and sys.stderr.isatty()


def _run(
    model: nn.Module,
    files: list[tuple[str, str | None]],
    labels: list[str],
    *,
    preprocessing: Preprocessing,
    topk: int,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> Iterator[Prediction]:
    """Decode, batch, classify; yields each file's result in order, as soon as its batch is done."""
    from tqdm import tqdm

    transform = preprocessing.eval_transform()
    was_training = model.training
    model.to(device).eval()
    # Files waiting for their batch, in input order: a decoded tensor, or the reason it failed.
    pending: list[tuple[str, torch.Tensor | str]] = []
    waiting = 0

    def flush() -> Iterator[Prediction]:
        tensors = [item for _, item in pending if isinstance(item, torch.Tensor)]
        scores: list[list[ClassScore]] = []
        if tensors:
            scores = _classify(model, torch.stack(tensors), labels, topk, device)
        results = iter(scores)
        for path, item in pending:
            if isinstance(item, torch.Tensor):
                yield Prediction(path, next(results))
            else:
                yield Prediction(path, error=item)

    bar = tqdm(total=len(files), disable=not progress, file=sys.stderr, unit="image")
    try:
        for path, problem in files:
            if problem is None:
                try:
                    pending.append((path, transform(load_image(path, preprocessing.in_chans))))
                    waiting += 1
                except UnreadableImageError as error:
                    pending.append((path, error.cause))
            else:
                pending.append((path, problem))
            if waiting in (
                0,
                batch_size,
            ):  # a full batch, or failures with no image ahead of them to wait for
                yield from _counted(flush(), bar)
                pending, waiting = [], 0
        yield from _counted(flush(), bar)
    finally:
        bar.close()
        model.train(was_training)


def _counted(predictions: Iterator[Prediction], bar: Any) -> Iterator[Prediction]:
    for prediction in predictions:
        bar.update(1)
        yield prediction


def _classify(
    model: nn.Module, batch: torch.Tensor, labels: list[str], topk: int, device: torch.device
) -> list[list[ClassScore]]:
    """The top-k (label, probability, index) of each image of ``batch``."""
    # inference_mode only around the forward pass: held across the generator's yields it would leak into the
    # caller's code.
    with torch.inference_mode():
        logits = model(batch.to(device, non_blocking=True))
        if not (isinstance(logits, torch.Tensor) and logits.shape == (len(batch), len(labels))):
            found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(
                f"the network returned {found}, expected logits of shape ({len(batch)}, {len(labels)})"
            )
        probs, indices = logits.float().softmax(dim=1).topk(topk, dim=1)
    return [
        [ClassScore(labels[i], p, i) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(probs.cpu().tolist(), indices.cpu().tolist(), strict=True)
    ]


__all__ = [
    "IMAGE_EXTENSIONS",
    "ClassScore",
    "Prediction",
    "UnreadableImageError",
    "expand_inputs",
    "load_image",
    "predict",
    "read_labels",
]
