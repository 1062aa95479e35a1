"""Training configuration: one dataclass, presets that reproduce the paper's recipes, and CLI overrides.

Precedence: the dataclass defaults < the preset (which may depend on the model) < explicit overrides.
The resolved config is saved as ``config.json`` in the run directory and inside every checkpoint.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, TypeVar

import torch

from senet.layers.squeeze_excite import SEConfig
from senet.models.features import apply_backbone_options
from senet.models.registry import create_model, list_models, model_info
from senet.models.torchvision_models import build_torchvision

Schedule = str  # "step" | "multistep" | "cosine"


# The fields that every task's config declares alike (TrainConfig here, and DetectionConfig in
# senet.detection.config): each one's default and the help of its flag, written once. A task may give one
# another default (batch size).
SHARED_FIELDS: dict[str, tuple[Any, str]] = {
    "batch_size": (64, "global batch size, split over the processes of a torchrun job"),
    "momentum": (0.9, "SGD momentum, in [0, 1)"),
    "weight_decay": (1e-4, "L2 weight decay"),
    "seed": (0, "random seed of weights, data order and augmentation"),
    "device": ("auto", "auto, cpu, cuda or cuda:N"),
    "amp": (False, "mixed precision: bf16 on CPU, fp16 with a gradient scaler on CUDA"),
    "log_interval": (20, "plain progress line every N batches when not on a terminal (0: none)"),
    # Run control: how often and how many checkpoints; not what is trained, so a resume may change them.
    "save_every_steps": (0, "also checkpoint every N optimizer steps (0: at epoch ends only)"),
    "save_every_minutes": (0.0, "also checkpoint when this many minutes passed since the last save (0: off)"),
    "keep": (2, "checkpoints kept in the run directory: the newest N"),
}

# A row of check_ranges: (field, type, valid(config, value), the valid range in words, in which a field's
# name in braces, e.g. {epochs}, stands for the config's value of it).
Range = tuple[str, type, Callable[[Any, Any], bool], str]

# The valid ranges of the shared fields, and of the fields that both tasks check alike.
SHARED_RANGES: tuple[Range, ...] = (
    ("batch_size", int, lambda c, v: v >= 1, ">= 1"),
    ("workers", int, lambda c, v: v >= 0, ">= 0"),
    ("lr", float, lambda c, v: v > 0, "> 0"),
    ("momentum", float, lambda c, v: 0 <= v < 1, "in [0, 1)"),
    ("weight_decay", float, lambda c, v: v >= 0, ">= 0"),
    ("gamma", float, lambda c, v: v > 0, "> 0"),
    ("seed", int, lambda c, v: v >= 0, ">= 0"),
    ("log_interval", int, lambda c, v: v >= 0, ">= 0 (0: no progress lines)"),
    ("save_every_steps", int, lambda c, v: v >= 0, ">= 0 (0: at epoch ends only)"),
    ("save_every_minutes", float, lambda c, v: v >= 0, ">= 0 (0: off)"),
    ("keep", int, lambda c, v: v >= 1, ">= 1"),
)

_Config = TypeVar("_Config")


def option(default: Any, help: str, **flag: Any) -> Any:
    """A config field with its default and the help of its command-line flag (``metadata["help"]``); ``flag``:
    the flag's ``metavar`` or ``choices`` where the field's type does not say them."""
    return field(default=default, metadata={"help": help, **flag})


def shared_field(name: str, default: Any = dataclasses.MISSING) -> Any:
    """The config field ``name`` of :data:`SHARED_FIELDS`, with ``default`` instead of its own if given."""
    own, text = SHARED_FIELDS[name]
    return option(own if default is dataclasses.MISSING else default, text)


@dataclass
class TrainConfig:
    """Everything a run needs. ``lr`` is the rate at ``lr_reference_batch`` (scaled linearly with the
    global batch size, Goyal et al. 2017) or, when that is ``None``, the rate used as is.

    Each field declares the help of its ``senet train`` flag (:func:`option`); a field's default is appended
    to it unless the text names it."""

    model: str = option("se_resnet20_cifar", "registered model name (senet models)")
    model_options: dict[str, Any] = field(default_factory=dict)  # given as --model-opt KEY=VALUE
    pretrained: str | None = option(
        None,
        "start from these weights: a senet weights file (senet convert) or a run directory; a "
        "new classifier where the data has another class count (default: none, random initialisation)",
    )
    data: str = option(
        "digits",
        "digits, cifar10, cifar100, an image folder ROOT with train/ and val/, or the index.json "
        "of its shards (senet data pack; a path or fsspec URL)",
    )
    data_root: str | None = option(None, "folder holding the CIFAR files (default: none)")
    download: bool = option(False, "download CIFAR into --data-root when the network allows")
    image_size: int | None = option(
        None, "training crop (default: 32 for digits/CIFAR, 224 for folders, or the preset's)"
    )
    eval_crop: int | None = option(
        None, "evaluation crop, e.g. 320: resize 366, centre crop 320 (default: the training crop)"
    )
    cutout: int = option(0, "Cutout square size in pixels (0: off)")
    balanced_sampling: bool = option(False, "class-balanced minibatches (the CVPR paper's data balancing)")
    strict_data: bool = option(False, "stop at the first unreadable image instead of skipping it")
    workers: int = option(0, "DataLoader worker processes (0: load in the training process)")
    loader: str = option(
        "auto",
        "where JPEGs are decoded and augmented: cpu (in the workers), gpu (workers read the "
        "bytes and draw the crops; the device decodes with nvJPEG and augments), auto (gpu on CUDA for "
        "image folders)",
    )

    epochs: int = option(10, "epochs to train")
    batch_size: int = shared_field("batch_size")
    lr: float = option(0.1, "learning rate (at --lr-reference-batch when that is set)")
    lr_reference_batch: int | None = option(
        None,
        "batch size at which --lr is given; the rate scales linearly from it (default: none, "
        "--lr as is, or the preset's)",
    )
    momentum: float = shared_field("momentum")
    nesterov: bool = option(False, "Nesterov momentum")
    weight_decay: float = shared_field("weight_decay")
    schedule: Schedule = option("cosine", "learning-rate schedule: step, multistep or cosine")
    step_epochs: int = option(30, "with --schedule step: multiply the rate by --gamma every N epochs")
    milestones: tuple[float, ...] = option(
        (),
        "with --schedule multistep: epochs (fractions allowed) where the rate is multiplied by "
        "--gamma (default: none, or the preset's)",
        metavar="E1,E2",
    )
    gamma: float = option(0.1, "factor of each step/multistep decay")
    warmup_epochs: float = option(0.0, "linear warm-up from 0 over this many epochs (fractions allowed)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy, in [0, 1)")
    drop_rate: float | None = option(
        None, "dropout before the classifier, in [0, 1) (default: the model's own, or the preset's)"
    )
    freeze_bn_epochs: int = option(0, "freeze BatchNorm for the last N epochs (SENet-154)")

    seed: int = shared_field("seed")
    device: str = shared_field("device")
    amp: bool = shared_field("amp")
    channels_last: bool = option(False, "channels-last memory format for the model and its inputs")
    compile: bool = option(False, "torch.compile the model")
    output: str | None = option(None, "run directory (default: runs/<time>-<model>)")
    log_interval: int = shared_field("log_interval")
    save_every_steps: int = shared_field("save_every_steps")
    save_every_minutes: float = shared_field("save_every_minutes")
    keep: int = shared_field("keep")

    def __post_init__(self) -> None:
        """Refuse every value that cannot be meant, naming the field and its valid range: a run that starts
        with a wrong setting gives plausible numbers for the wrong experiment."""
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a registered model name (senet models), got {self.model!r}")
        model_info(self.model)  # an unknown name fails here, with the closest known names
        if not isinstance(self.model_options, dict) or not all(
            isinstance(k, str) for k in self.model_options
        ):
            raise ValueError(f"model_options must map option names to values, got {self.model_options!r}")
        reserved = sorted({"num_classes", "in_chans"} & set(self.model_options))
        if reserved:
            raise ValueError(
                f"model option {', '.join(reserved)} is set by the dataset; leave it out of model_options"
            )
        if not isinstance(self.milestones, (tuple, list)):
            raise ValueError(
                f"milestones must be a sequence of epochs, e.g. (82, 123), got {self.milestones!r}"
            )
        for m in self.milestones:
            check_number("milestones", m, float)
        self.milestones = tuple(float(m) for m in self.milestones)
        if self.loader not in ("auto", "cpu", "gpu"):
            raise ValueError(f"unknown loader {self.loader!r}; choose auto (gpu on CUDA), cpu or gpu")
        if self.schedule not in ("step", "multistep", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose step, multistep or cosine")
        for name in _SWITCHES:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_ranges(self, _RANGES, _OPTIONAL)
        given = _epochs_text(self.milestones)
        steps = zip(self.milestones, self.milestones[1:], strict=False)
        if any(m <= 0 for m in self.milestones) or any(later <= earlier for earlier, later in steps):
            raise ValueError(f"milestones must be increasing epochs > 0, got {given}")
        if self.schedule == "multistep" and any(m > self.epochs for m in self.milestones):
            raise ValueError(f"milestones must lie within (0, epochs={self.epochs}], got {given}")

    def scaled_lr(self) -> float:
        """The learning rate at this run's global batch size."""
        if self.lr_reference_batch is None:
            return self.lr
        return self.lr * self.batch_size / self.lr_reference_batch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, values, "config")


def config_from_dict(cls: type[_Config], values: dict[str, Any], what: str) -> _Config:
    """The config dataclass ``cls`` of ``values``; a name it has no field of is refused as an unknown
    ``what`` field."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown := sorted(set(values) - known):
        raise ValueError(f"unknown {what} fields {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


def check_ranges(config: Any, ranges: tuple[Range, ...], optional: Collection[str] = ()) -> None:
    """Each field of ``ranges`` must be a finite number of its type within its range (a field named in
    ``optional`` may also be None); the first that is not is refused, naming its valid range."""
    for name, kind, valid, text in ranges:
        value = getattr(config, name)
        if value is None and name in optional:
            continue
        check_number(name, value, kind)
        if not valid(config, value):
            raise ValueError(f"{name} must be {text.format_map(vars(config))}, got {value!r}")


def check_number(name: str, value: Any, kind: type) -> None:
    """``value`` must be a finite number of ``kind`` (an int is a float too; a bool is neither)."""
    allowed = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or not math.isfinite(value):
        raise ValueError(
            f"{name} must be {'an integer' if kind is int else 'a finite number'}, got {value!r}"
        )


def _epochs_text(epochs: tuple[float, ...]) -> str:
    return ",".join(f"{m:g}" for m in epochs) or "none"


# The rows of check_ranges besides SHARED_RANGES; epochs first, as the later ones are bounded by it. Fields
# named in _OPTIONAL may also be None ("from the model" / "from the data" / "as is").
_RANGES: tuple[Range, ...] = (
    ("epochs", int, lambda c, v: v >= 1, ">= 1"),
    ("image_size", int, lambda c, v: v >= 1, ">= 1 (or None: the dataset's)"),
    ("eval_crop", int, lambda c, v: v >= 1, ">= 1 (or None: the dataset's)"),
    ("cutout", int, lambda c, v: v >= 0, ">= 0 (0: off)"),
    ("lr_reference_batch", int, lambda c, v: v >= 1, ">= 1 (or None: --lr as is)"),
    ("step_epochs", int, lambda c, v: v >= 1, ">= 1"),
    ("warmup_epochs", float, lambda c, v: 0 <= v <= c.epochs, "in [0, epochs={epochs}]"),
    ("label_smoothing", float, lambda c, v: 0 <= v < 1, "in [0, 1)"),
    ("drop_rate", float, lambda c, v: 0 <= v < 1, "in [0, 1) (or None: the model's)"),
    ("freeze_bn_epochs", int, lambda c, v: 0 <= v <= c.epochs, "in [0, epochs={epochs}]"),
    *SHARED_RANGES,
)
_SWITCHES = ("download", "balanced_sampling", "strict_data", "nesterov", "amp", "channels_last", "compile")
_OPTIONAL = {"image_size", "eval_crop", "lr_reference_batch", "drop_rate"}


def _imagenet_paper(model: str) -> dict[str, Any]:
    """Sec. 5.1 / reference Sec. 8: SGD momentum 0.9, lr 0.6 at batch 1024 divided by 10 every 30 epochs,
    100 epochs. Weight decay is not stated in the paper; 1e-4 is the ResNet standard."""
    recipe = dict(
        model=model,
        data="",
        epochs=100,
        batch_size=1024,
        lr=0.6,
        lr_reference_batch=1024,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="step",
        step_epochs=30,
        gamma=0.1,
        workers=8,
    )
    if model == "senet154":
        # Appendix (e)-(g): label smoothing, BN frozen for the last epochs (how many is not stated), lr 1.0 at
        # batch 2048; dropout 0.2 is senet154's own default.
        recipe.update(
            label_smoothing=0.1, freeze_bn_epochs=5, lr=1.0, lr_reference_batch=2048, batch_size=2048
        )
    return recipe


def _cifar_paper(model: str) -> dict[str, Any]:
    """Each CIFAR network as its own paper trained it (reference Sec. 8: "follow each original paper")."""
    common = dict(model=model, data="cifar10", batch_size=128, momentum=0.9, workers=4)
    if model.startswith(("wrn", "se_wrn")):
        # Zagoruyko & Komodakis 2016: Nesterov, lr 0.1 divided by 5 at 60/120/160, 200 epochs, wd 5e-4.
        return {
            **common,
            "epochs": 200,
            "lr": 0.1,
            "nesterov": True,
            "weight_decay": 5e-4,
            "schedule": "multistep",
            "milestones": (60, 120, 160),
            "gamma": 0.2,
        }
    if "shake_even" in model:
        # Gastaldi 2017 on CIFAR-100 (29 2x4x64d): cosine from 0.025, batch 32, wd 5e-4, 1800 epochs; the
        # paper adds Cutout, 8 px on CIFAR-100 (DeVries & Taylor 2017).
        return {
            **common,
            "data": "cifar100",
            "epochs": 1800,
            "batch_size": 32,
            "lr": 0.025,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "cutout": 8,
        }
    if "shake" in model:
        # Gastaldi 2017 on CIFAR-10 (26 2x96d): cosine from 0.2, batch 128, wd 1e-4, 1800 epochs; Cutout 16
        # px.
        return {**common, "epochs": 1800, "lr": 0.2, "weight_decay": 1e-4, "schedule": "cosine", "cutout": 16}
    # He et al. 2016: lr 0.1, divided by 10 at 32k and 48k iterations, 64k in all, at batch 128 on 50k images
    # (391 iterations per epoch): 164 epochs, milestones at epochs 82 and 123.
    return {
        **common,
        "epochs": 164,
        "lr": 0.1,
        "weight_decay": 1e-4,
        "schedule": "multistep",
        "milestones": (82, 123),
        "gamma": 0.1,
    }


def _demo(model: str) -> dict[str, Any]:
    """Seconds per run on 2 CPU cores: a CIFAR ResNet-20 on the embedded digits at 16 x 16 (closer to their
    native 8 x 8; 32 x 32 costs 4x the time for nothing), trained until it has converged."""
    return dict(
        model=model,
        data="digits",
        image_size=16,
        epochs=10,
        batch_size=64,
        lr=0.1,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=0.5,
    )


PRESETS: dict[str, Callable[[str], dict[str, Any]]] = {
    "demo": _demo,
    "imagenet-paper": _imagenet_paper,
    "cifar-paper": _cifar_paper,
}
DEFAULT_MODEL = {
    "demo": "se_resnet20_cifar",
    "imagenet-paper": "se_resnet50",
    "cifar-paper": "se_resnet110_cifar",
}


def resolve_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """Build a config from a preset (``demo``, ``imagenet-paper``, ``cifar-paper``) and explicit overrides."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        model = overrides.get("model") or DEFAULT_MODEL[preset]
        values.update(PRESETS[preset](model))
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not values.get("data", "digits"):
        raise ValueError(
            f"preset {preset!r} needs --data: an image folder (ROOT/train, ROOT/val) or a dataset name"
        )
    config = TrainConfig.from_dict(values)
    check_model_options(config)
    return config


def check_model_options(config: TrainConfig) -> None:
    """Build ``config``'s network on the meta device (no memory, no weights) so that an unknown or ill-typed
    model option fails now, in one line, rather than after a run directory was made."""
    options = dict(config.model_options)
    if config.drop_rate is not None:
        options["drop_rate"] = config.drop_rate  # as the engine's build_model passes it
    try:
        with torch.device("meta"):
            create_model(config.model, **options)
    except (TypeError, ValueError) as error:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(f"{config.model} cannot be built with {given}: {error}") from None


def parse_model_options(pairs: list[str] | None, booleans: Collection[str] | None = None) -> dict[str, Any]:
    """``["se_reduction=8", "se_stages=(1,2)"]`` -> ``{"se_reduction": 8, "se_stages": (1, 2)}``.

    A value is a Python literal or a bare word (``se_gate=tanh``); anything else (``widths=(4,8``) is refused
    rather than passed on as a string. An option in ``booleans`` (default: :func:`boolean_model_options`) is
    written as people write it: true/false, yes/no, on/off or 1/0 in any case (:func:`boolean_value`)."""
    booleans = boolean_model_options() if booleans is None else booleans
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key.isidentifier() or not text:
            raise ValueError(
                f"--model-opt expects KEY=VALUE with KEY an option name, e.g. se_reduction=8; got {pair!r}"
            )
        if key in options:
            raise ValueError(f"--model-opt {key} is given twice ({options[key]!r} and {text!r})")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            if not _BARE_WORD.fullmatch(text):
                raise ValueError(
                    f"--model-opt {pair!r}: {text!r} is neither a Python literal "
                    "(8, 0.5, (1, 2), 'avg') nor a bare word (tanh)"
                ) from None
            options[key] = text  # a bare word such as se_gate=tanh
        if key in booleans and options[key] is not None:  # None: "automatic", where the option allows it
            options[key] = boolean_value(key, options[key])
    return options


_BARE_WORD = re.compile(r"[A-Za-z_][\w.\-]*")
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def boolean_value(key: str, value: Any) -> bool:
    """``value`` of the boolean option ``key``: a bool, or true/false, yes/no, on/off, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    word = str(value).lower() if isinstance(value, (str, int)) else None
    if word not in _TRUE_WORDS + _FALSE_WORDS:
        raise ValueError(
            f"{key}={value!r}: {key} is true or false; write true/false, yes/no, on/off or 1/0 (any case)"
        )
    return word in _TRUE_WORDS


def _is_boolean(hint: Any) -> bool:
    """``bool`` or ``bool | None`` (an option whose None means "automatic")."""
    return hint is bool or set(typing.get_args(hint)) == {bool, type(None)}


@functools.cache
def boolean_model_options() -> frozenset[str]:
    """Build options that every place declaring them types as a boolean: the families' constructors (each
    registered builder's return type), the SE options (``se_`` + :class:`senet.layers.SEConfig` fields), the
    backbone options and ``torchvision:NAME``'s own (add_se)."""
    declared: dict[str, list[Any]] = {}
    families = {typing.get_type_hints(model_info(name).builder).get("return") for name in list_models()}
    functions = [f.__init__ for f in families if f is not None] + [apply_backbone_options, build_torchvision]
    for function in functions:
        for key, hint in typing.get_type_hints(function).items():
            declared.setdefault(key, []).append(hint)
    for key, hint in typing.get_type_hints(SEConfig).items():
        declared.setdefault(f"se_{key}", []).append(hint)
    return frozenset(key for key, hints in declared.items() if all(_is_boolean(h) for h in hints))


def boolean_fields(config_type: type) -> frozenset[str]:
    """A config dataclass's fields typed ``bool`` (or ``bool | None``)."""
    return frozenset(key for key, hint in typing.get_type_hints(config_type).items() if _is_boolean(hint))
