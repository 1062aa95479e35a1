"""Datasets: the bundled digits, CIFAR-10/100, and ImageNet-layout image folders, behind one ``build_data``.

All layout problems are found by ``build_data``, before any training starts. An image that cannot be decoded
is only found when it is loaded: it is skipped with a warning (the loader's collate drops it and counts it),
or, with ``strict_data``, it stops the run with an error naming the file (a split of at most 64 images none of
which decodes is refused up front). CIFAR's pickles are read without running code (``_CifarUnpickler``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as nnf
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset

from senet.data import shards
from senet.data import transforms as T
from senet.data.folders import DEFAULT_FOLDER_SIZE, FOLDER_LAYOUT, build_folder, preview_names
from senet.data.spec import DataSpec

_SMALL_SIZE = 32  # native size of CIFAR, and of digits once upsampled


def build_data(
    source: str,
    *,
    root: str | None = None,
    image_size: int | None = None,
    eval_crop: int | None = None,
    ten_crop: bool = False,
    strict_data: bool = False,
    download: bool = False,
    cutout: int = 0,
    preprocessing: T.Preprocessing | None = None,
) -> DataSpec:
    """Build the train and val splits of ``source``.

    Args:
        source: ``"digits"`` (scikit-learn's bundled 8 x 8 digits, offline), ``"cifar10"``/``"cifar100"``
            (files in ``root``), or a directory: CIFAR when it holds
            ``cifar-10-batches-py``/``cifar-100-python``, otherwise an ImageNet-layout image folder
            (ROOT/train/CLASS/*.jpg, ROOT/val/CLASS/*.jpg; Places365 too). Or the ``index.json`` of tar shards
            written by ``senet data pack`` (``senet.data.shards``), the folder holding it, or an fsspec URL of
            either (``file://``, ``s3://``, ...): image-folder data as shards.
        root: the folder holding CIFAR's ``cifar-10-batches-py``/``cifar-100-python``; only the named CIFAR
            sources read it.
        image_size: training crop; 224 for image folders, 32 for digits/CIFAR (another size resizes them).
        eval_crop: evaluation crop; image folders resize to ``round(eval_crop / 0.875)`` then centre-crop
            (the paper's 320 crop: Table 8); digits/CIFAR resize their 32 x 32 images to it. Defaults to
            ``image_size``.
        ten_crop: image folders (and shards) only: evaluate ten crops per image, items (10, C, H, W).
        strict_data: image folders (and shards) only: an unreadable image stops the run instead of being
            skipped.
        download: CIFAR only: fetch the files with torchvision when they are missing.
        cutout: > 0 adds Cutout of that many pixels to the training transform (DeVries & Taylor 2017).
        preprocessing: image folders only: evaluate with this resize, crop, interpolation and normalisation
            (e.g. converted weights' own) instead of the paper's; ``eval_crop`` still sets the crop size.
    """
    for flag, value in (("image_size", image_size), ("eval_crop", eval_crop)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1 pixel, got {value}")
    if cutout < 0:
        raise ValueError(f"cutout must be >= 0 pixels (0 = off), got {cutout}")
    spec = _build_source(
        source, root, image_size, eval_crop, ten_crop, strict_data, download, cutout, preprocessing
    )
    _check_classes(source, spec)
    return spec


def _build_source(
    source: str,
    root: str | None,
    image_size: int | None,
    eval_crop: int | None,
    ten_crop: bool,
    strict_data: bool,
    download: bool,
    cutout: int,
    preprocessing: T.Preprocessing | None = None,
) -> DataSpec:
    if preprocessing is not None and (source in ("digits", *_CIFAR) or _detect_cifar(Path(source))[0]):
        raise ValueError(
            f"{source} has its own normalisation; weights with recorded preprocessing are evaluated on image "
            "folders (a run trained on it is evaluated through its run directory)"
        )
    if source == "digits":
        _no_ten_crop(source, ten_crop)
        return _build_digits(image_size or _SMALL_SIZE, eval_crop, cutout)
    if source in _CIFAR:
        _no_ten_crop(source, ten_crop)
        return _build_cifar(
            source, _cifar_root(source, root), image_size or _SMALL_SIZE, eval_crop, download, cutout
        )
    # image folders and their shards
    size = image_size or (preprocessing.input_size if preprocessing else DEFAULT_FOLDER_SIZE)
    index = shards.find_index(source)
    if index is not None:  # written by `senet data pack`: a local path or an fsspec URL
        return shards.build_shard_data(index, size, eval_crop, ten_crop, strict_data, cutout, preprocessing)
    path = Path(source).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data source {source!r} is neither digits, cifar10, cifar100, a shard index (senet data pack) "
            f"nor an existing directory; an image folder needs {FOLDER_LAYOUT}"
        )
    cifar_name, cifar_root = _detect_cifar(path)
    if cifar_name is not None:
        _no_ten_crop(cifar_name, ten_crop)
        return _build_cifar(cifar_name, cifar_root, image_size or _SMALL_SIZE, eval_crop, download, cutout)
    return build_folder(path, size, eval_crop, ten_crop, strict_data, cutout, preprocessing)


def _check_classes(source: str, spec: DataSpec) -> None:
    """Refuse data of fewer than two classes: a one-class "classifier" reaches 0 % error and means nothing."""
    used = sorted(set(spec.train_targets))
    if spec.num_classes >= 2 and len(used) >= 2:
        return
    if spec.num_classes < 2:
        found = f"{spec.num_classes} class{'' if spec.num_classes == 1 else 'es'}"
        names = spec.classes
    else:
        found = f"training images of only {len(used)} of its {spec.num_classes} classes"
        names = [spec.classes[i] for i in used]
    found += f" ({preview_names(names)})" if names else ""
    raise ValueError(f"{source} has {found}; classification needs at least two classes")


def _no_ten_crop(name: str, ten_crop: bool) -> None:
    # Ten crops of a 32 x 32 image at 32 x 32 would be ten copies of it (and its mirror).
    if ten_crop:
        raise ValueError(
            f"ten_crop needs images larger than the crop; {name} is 32 x 32: evaluate without it"
        )


class _TensorImages(Dataset[tuple[torch.Tensor, int]]):
    """Images held in memory as one (N, C, H, W) tensor, transformed per item."""

    def __init__(
        self, images: torch.Tensor, targets: list[int], transform: Callable[[Any], torch.Tensor]
    ) -> None:
        self.images = images
        self.targets = targets
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.targets[index]

    def __len__(self) -> int:
        return len(self.targets)


# ---------------------------------------------------------------------------------------------- digits


def _build_digits(image_size: int, eval_crop: int | None, cutout: int) -> DataSpec:
    """scikit-learn's 1,797 8 x 8 digits, upsampled once to 32 x 32; a fixed stratified 80/20 split."""
    try:  # scikit-learn is the optional "data" extra
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ValueError("the digits data set comes with scikit-learn: pip install 'senet[data]'") from None
    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # values 0..16 -> [0, 1]
    images = nnf.interpolate(pixels, size=(_SMALL_SIZE, _SMALL_SIZE), mode="bilinear", align_corners=False)
    labels = [int(label) for label in digits.target]
    # random_state fixed on purpose: the split must not move with the run's seed, or val scores would not
    # compare.
    train_idx, val_idx = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    train_images = images[train_idx]
    mean, std = (train_images.mean().item(),), (train_images.std().item(),)
    train_targets = [labels[i] for i in train_idx]
    train = _TensorImages(
        train_images,
        train_targets,
        T.small_train_transform(mean, std, padding=2, flip=False, size=image_size, cutout=cutout),
    )
    val = _TensorImages(
        images[val_idx],
        [labels[i] for i in val_idx],
        T.small_eval_transform(mean, std, size=eval_crop or image_size),
    )
    classes = [str(name) for name in digits.target_names]
    preprocessing = T.Preprocessing(mean, std, eval_crop or image_size, crop_fraction=1.0)
    return DataSpec(train, val, len(classes), classes, 1, image_size, "digits", train_targets, preprocessing)


# ----------------------------------------------------------------------------------------------- CIFAR


class _RefusedPickle(ValueError):
    """A pickle naming something besides arrays, lists, dicts, strings, bytes and numbers: it could run
    code."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(text, "latin1"); no other codec is needed, so none
    # runs.
    if not isinstance(text, str) or encoding != "latin1":
        raise TypeError(
            f"bytes stored as encode({type(text).__name__}, {encoding!r}), not encode(str, 'latin1')"
        )
    return text.encode("latin1")


# Everything a CIFAR file (or a numpy array, of any dtype, pickled by numpy 1 or 2 at any protocol) names.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    # b"", bytearray and complex numbers are calls to their types; protocols < 3 name builtins __builtin__.
    **{
        (module, t.__name__): t for t in (bytes, bytearray, complex) for module in ("builtins", "__builtin__")
    },
    # numpy 1 wrote numpy.core, numpy 2 writes numpy._core
    **{
        (f"{core}.{module}", function.__name__): function
        # _reconstruct(ndarray, shape, dtype) then raw bytes; scalar(dtype, raw bytes) for numpy scalars;
        # _frombuffer for protocol 5.
        for function, module in (
            (np.zeros(0).__reduce__()[0], "multiarray"),
            (np.float64(0).__reduce__()[0], "multiarray"),
            (np.zeros(1).__reduce_ex__(5)[0], "numeric"),
        )
        for core in ("numpy.core", "numpy._core")
    },
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's files hold: numpy arrays, lists, dicts, strings, bytes and numbers.

    ``pickle.load`` calls whatever a file names, so a crafted ``cifar-10-batches-py`` would run code; every
    name outside ``_SAFE_GLOBALS`` is refused before anything is called.
    """

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # the original files come from Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedPickle(
                f"refused to read {self.path}: it names {(module + '.' + name)[:100]!r}, and CIFAR's files "
                "hold only arrays, lists, dicts, strings and numbers; unpickling anything else could run code"
            ) from None


def _read_cifar_pickle(path: Path) -> Any:
    with open(path, "rb") as file:
        entry = _CifarUnpickler(file, path).load()
    if isinstance(entry, dict):  # files re-pickled from an encoding="bytes" load have b"data" keys
        entry = {
            key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()
        }
    return entry


class _CIFARFiles(CIFAR10):
    """torchvision's CIFAR10/100 reading their files with ``_CifarUnpickler``, and checking them.

    Only ``__init__`` differs from torchvision's: it used ``pickle.load``. Files are checked to exist, not
    for their md5 sums: hashing 180 MB on every build (and again for each evaluation scale) is slow, and it
    would reject the small files in the same format that the tests write. A damaged file still fails, at
    unpickling or here, with a clear error (see ``_load_cifar``); ``download`` still verifies the archive's
    md5.
    """

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        download: bool = False,
    ) -> None:
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        folder = Path(self.root) / self.base_folder
        meta = folder / self.meta["filename"]
        self.classes = [str(name) for name in _read_cifar_pickle(meta)[self.meta["key"]]]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        arrays, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            data, labels = self._read_batch(folder / name)
            arrays.append(data)
            self.targets.extend(labels)
        # Each row holds the R, G and B planes: to (N, H, W, C), as torchvision keeps them.
        self.data = np.vstack(arrays).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        wrong = sorted({label for label in self.targets if not 0 <= label < len(self.classes)})
        if wrong:
            raise ValueError(
                f"labels {preview_names([str(label) for label in wrong])} are not in "
                f"0..{len(self.classes) - 1} ({len(self.classes)} classes in {meta.name})"
            )

    @staticmethod
    def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
        entry = _read_cifar_pickle(path)
        data, labels = entry["data"], entry["labels"] if "labels" in entry else entry["fine_labels"]
        labels = [int(label) for label in labels]
        if not (
            isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (len(labels), 3072)
        ):
            found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(
                f"{path.name}: data is {found} for {len(labels)} labels, expected uint8 (N, 3072)"
            )
        return data, labels


class _CIFAR10Files(_CIFARFiles):
    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _CIFAR100Files(_CIFARFiles, CIFAR100):
    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


@dataclass(frozen=True)
class _Cifar:
    title: str
    dataset: type[CIFAR10]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def folder(self) -> str:
        return self.dataset.base_folder

    @property
    def files(self) -> list[str]:
        listed = self.dataset.train_list + self.dataset.test_list
        return [name for name, _ in listed] + [self.dataset.meta["filename"]]


_CIFAR = {
    "cifar10": _Cifar("CIFAR-10", _CIFAR10Files, T.CIFAR10_MEAN, T.CIFAR10_STD),
    "cifar100": _Cifar("CIFAR-100", _CIFAR100Files, T.CIFAR100_MEAN, T.CIFAR100_STD),
}


def _cifar_root(name: str, root: str | None) -> Path:
    if root is None:
        raise ValueError(
            f"{name} reads its files from a folder: pass root=DIR, with DIR/{_CIFAR[name].folder}/ holding "
            f"{', '.join(_CIFAR[name].files)} (or give DIR itself as the source)"
        )
    return Path(root).expanduser()


def _detect_cifar(path: Path) -> tuple[str | None, Path]:
    """Which CIFAR a directory holds (it, or its parent when given the batches folder itself), if any."""
    found = [name for name, cifar in _CIFAR.items() if (path / cifar.folder).is_dir()]
    if len(found) > 1:
        raise ValueError(
            f"{path} holds both CIFAR-10 and CIFAR-100; pass source='cifar10' or 'cifar100' "
            f"with root={str(path)!r}"
        )
    if found:
        return found[0], path
    for name, cifar in _CIFAR.items():
        if path.name == cifar.folder:
            return name, path.parent
    return None, path


def _build_cifar(
    name: str, root: Path, image_size: int, eval_crop: int | None, download: bool, cutout: int
) -> DataSpec:
    """CIFAR-10/100 with the standard augmentation: zero-pad 4, random 32 crop, horizontal flip
    (reference §8)."""
    cifar = _CIFAR[name]
    if download and _missing_cifar_files(cifar, root):
        _download_cifar(cifar, root)
    missing = _missing_cifar_files(cifar, root)
    if missing:
        raise FileNotFoundError(
            f"{cifar.title} files missing in {root / cifar.folder}: {', '.join(missing)}; "
            f"expected {', '.join(cifar.files)}: copy them there, or pass download=True (--download) "
            "where the network allows"
        )
    train_transform = T.small_train_transform(
        cifar.mean, cifar.std, padding=4, flip=True, size=image_size, cutout=cutout
    )
    eval_transform = T.small_eval_transform(cifar.mean, cifar.std, size=eval_crop or image_size)
    train = _load_cifar(cifar, root, train=True, transform=train_transform)
    val = _load_cifar(cifar, root, train=False, transform=eval_transform)
    classes = list(train.classes)
    preprocessing = T.Preprocessing(cifar.mean, cifar.std, eval_crop or image_size, crop_fraction=1.0)
    return DataSpec(
        train, val, len(classes), classes, 3, image_size, name, list(train.targets), preprocessing
    )


def _missing_cifar_files(cifar: _Cifar, root: Path) -> list[str]:
    return [name for name in cifar.files if not (root / cifar.folder / name).is_file()]


def _download_cifar(cifar: _Cifar, root: Path) -> None:
    try:
        cifar.dataset(root, train=True, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; torchvision raises RuntimeError on md5
        raise FileNotFoundError(
            f"{cifar.title} download into {root} failed ({type(error).__name__}: {error}); copy "
            f"{', '.join(cifar.files)} into {root / cifar.folder} by hand, or retry where the network allows"
        ) from error


def _load_cifar(cifar: _Cifar, root: Path, *, train: bool, transform: Callable[[Any], Any]) -> CIFAR10:
    try:
        return cifar.dataset(root, train=train, transform=transform)
    except _RefusedPickle:
        raise  # not damage: a file that could run code; its message says so
    except (
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,
    ) as error:
        raise ValueError(
            f"{cifar.title} files in {root / cifar.folder} are damaged or not in CIFAR's python format "
            f"({type(error).__name__}: {error}); replace them with the originals "
            "(or delete them and pass --download)"
        ) from error
