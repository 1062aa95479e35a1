"""Training configuration: one dataclass, presets that reproduce the paper's recipes, and CLI overrides.

Precedence: the dataclass defaults < the preset (which may depend on the model) < explicit overrides.
The resolved config is saved as ``config.json`` in the run directory and inside every checkpoint.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

Schedule = str  # "step" | "multistep" | "cosine"


@dataclass
class TrainConfig:
    """Everything a run needs. ``lr`` is the rate at ``lr_reference_batch`` (scaled linearly with the
    global batch size, Goyal et al. 2017) or, when that is ``None``, the rate used as is."""

    model: str = "se_resnet20_cifar"
    model_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # weights to start from: a senet weights file or run directory
    data: str = "digits"
    data_root: str | None = None
    download: bool = False
    image_size: int | None = None
    eval_crop: int | None = None
    cutout: int = 0
    balanced_sampling: bool = False
    strict_data: bool = False
    workers: int = 0
    loader: str = "auto"  # where images are decoded and augmented: auto (gpu on CUDA), cpu, gpu

    epochs: int = 10
    batch_size: int = 64  # global: split evenly over the processes of a distributed run
    lr: float = 0.1
    lr_reference_batch: int | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: Schedule = "cosine"
    step_epochs: int = 30  # "step": divide by 1/gamma every step_epochs
    milestones: tuple[
        float, ...
    ] = ()  # "multistep": epochs (fractions allowed) where lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    drop_rate: float | None = None  # None: the model's own default
    freeze_bn_epochs: int = 0

    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    output: str | None = None
    log_interval: int = 20
    # Run control: how often and how many checkpoints; not part of what is trained, so a resume may change them.
    save_every_steps: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    save_every_minutes: float = (
        0.0  # also checkpoint when this many minutes passed since the last save (0: off)
    )
    keep: int = 2  # checkpoints kept in the run directory (the newest K; at least 1)

    def __post_init__(self) -> None:
        """Refuse every value that cannot be meant, naming the field and its valid range: a run that starts
        with a wrong setting gives plausible numbers for the wrong experiment."""
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a registered model name (senet models), got {self.model!r}")
        from senet.models.registry import model_info

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
            _check_number("milestones", m, float)
        self.milestones = tuple(float(m) for m in self.milestones)
        if self.loader not in ("auto", "cpu", "gpu"):
            raise ValueError(f"unknown loader {self.loader!r}; choose auto (gpu on CUDA), cpu or gpu")
        if self.schedule not in ("step", "multistep", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose step, multistep or cosine")
        for name in _SWITCHES:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, kind, low, high, text in _RANGES:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            _check_number(name, value, kind)
            if (low is not None and not low(value)) or (high is not None and not high(self, value)):
                raise ValueError(f"{name} must be {text.format(epochs=self.epochs)}, got {value!r}")
        given = _epochs_text(self.milestones)
        steps = zip(self.milestones, self.milestones[1:])
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config fields {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def _check_number(name: str, value: Any, kind: type) -> None:
    """``value`` must be a finite number of ``kind`` (an int is a float too; a bool is neither)."""
    allowed = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or not math.isfinite(value):
        raise ValueError(
            f"{name} must be {'an integer' if kind is int else 'a finite number'}, got {value!r}"
        )


def _epochs_text(epochs: tuple[float, ...]) -> str:
    return ",".join(f"{m:g}" for m in epochs) or "none"


# (field, type, lower-bound test, upper-bound test given the config, the valid range in words).
# Fields named in _OPTIONAL may also be None ("from the model" / "from the data" / "as is").
_RANGES: tuple[tuple[str, type, Any, Any, str], ...] = (
    ("epochs", int, lambda v: v >= 1, None, ">= 1"),
    ("batch_size", int, lambda v: v >= 1, None, ">= 1"),
    ("image_size", int, lambda v: v >= 1, None, ">= 1 (or None: the dataset's)"),
    ("eval_crop", int, lambda v: v >= 1, None, ">= 1 (or None: the dataset's)"),
    ("cutout", int, lambda v: v >= 0, None, ">= 0 (0: off)"),
    ("workers", int, lambda v: v >= 0, None, ">= 0"),
    ("lr", float, lambda v: v > 0, None, "> 0"),
    ("lr_reference_batch", int, lambda v: v >= 1, None, ">= 1 (or None: --lr as is)"),
    ("momentum", float, lambda v: v >= 0, lambda c, v: v < 1, "in [0, 1)"),
    ("weight_decay", float, lambda v: v >= 0, None, ">= 0"),
    ("step_epochs", int, lambda v: v >= 1, None, ">= 1"),
    ("gamma", float, lambda v: v > 0, None, "> 0"),
    ("warmup_epochs", float, lambda v: v >= 0, lambda c, v: v <= c.epochs, "in [0, epochs={epochs}]"),
    ("label_smoothing", float, lambda v: v >= 0, lambda c, v: v < 1, "in [0, 1)"),
    ("drop_rate", float, lambda v: v >= 0, lambda c, v: v < 1, "in [0, 1) (or None: the model's)"),
    ("freeze_bn_epochs", int, lambda v: v >= 0, lambda c, v: v <= c.epochs, "in [0, epochs={epochs}]"),
    ("seed", int, lambda v: v >= 0, None, ">= 0"),
    ("log_interval", int, lambda v: v >= 0, None, ">= 0 (0: no progress lines)"),
    ("save_every_steps", int, lambda v: v >= 0, None, ">= 0 (0: at epoch ends only)"),
    ("save_every_minutes", float, lambda v: v >= 0, None, ">= 0 (0: off)"),
    ("keep", int, lambda v: v >= 1, None, ">= 1"),
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
        # Gastaldi 2017 on CIFAR-100 (29 2x4x64d): cosine from 0.025, batch 32, wd 5e-4, 1800 epochs; the paper
        # adds Cutout, 8 px on CIFAR-100 (DeVries & Taylor 2017).
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
        # Gastaldi 2017 on CIFAR-10 (26 2x96d): cosine from 0.2, batch 128, wd 1e-4, 1800 epochs; Cutout 16 px.
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
    import torch

    from senet.models.registry import create_model

    options = dict(config.model_options)
    if config.drop_rate is not None:
        options["drop_rate"] = config.drop_rate  # as the engine's build_model passes it
    try:
        with torch.device("meta"):
            create_model(config.model, **options)
    except (TypeError, ValueError) as error:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ValueError(f"{config.model} cannot be built with {given}: {error}") from None


def parse_model_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["se_reduction=8", "se_stages=(1,2)"]`` -> ``{"se_reduction": 8, "se_stages": (1, 2)}``.

    A value is a Python literal or a bare word (``se_gate=tanh``); anything else (``widths=(4,8``) is refused
    rather than passed on as a string."""
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
    return options


_BARE_WORD = re.compile(r"[A-Za-z_][\w.\-]*")
