"""Training classifiers: ``train(config)``, the classification task of the training lifecycle.

``train(config)`` builds data, model, optimizer and schedule from a :class:`TrainConfig` and runs them through
:func:`senet.train.lifecycle.fit`, which trains, evaluates after every epoch, writes one JSON line per epoch
and a checkpoint per epoch (and, if asked, every N steps or minutes) into the run directory, and resumes
exactly from any checkpoint. SIGINT, SIGTERM and SIGUSR1 stop it at a step boundary after a checkpoint (see
``control.py``). Under ``torchrun`` each process trains on its shard of the data, DDP averages the gradients,
metrics are summed over all processes, and only rank 0 writes.

What is classification's own lives here (:class:`ClassificationTask`): the data and its loaders (the CPU
loader, or the GPU pipeline), the network (``--pretrained`` weights and their build options), SGD with the
BatchNorm parameters in their own group, the paper's schedules, the cross-entropy step, top-1/top-5 meters,
validation (:func:`senet.train.evaluation.evaluate`) and the best top-1 error.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from senet.data import DataSpec, build_data, build_loader
from senet.data.device_pipeline import (
    DeviceLoader,
    convert_on_device,
    decodes_on_device,
    device_pipeline_datasets,
)
from senet.models.registry import create_model
from senet.runtime import Dist, autocast
from senet.train.config import TrainConfig
from senet.train.control import RunControl
from senet.train.evaluation import evaluate
from senet.train.feed import DeviceFeeder
from senet.train.lifecycle import (
    RunResult,
    Task,
    TrainingDiverged,
    fit,
    val_shard,
)
from senet.train.meters import TopkMeter
from senet.train.rundir import CLASSIFICATION
from senet.weights.checkpoint import Checkpoint, config_build_options, load_weights_into
from senet.weights.pretrained import load_pretrained, pretrained_build_options

__all__ = [
    "ClassificationTask",
    "RunResult",
    "TrainingDiverged",  # raised by train(); defined with the lifecycle that raises it
    "build_loaders",
    "build_model",
    "build_run_data",
    "lr_factor",
    "model_build_options",
    "train",
    "with_pretrained_options",
]


def train(
    config: TrainConfig,
    resume: str | Path | Checkpoint | None = None,
    *,
    overwrite: bool = False,
    extend_schedule: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Train ``config.model`` on ``config.data``; ``resume`` continues a run exactly where it stopped.

    ``resume`` (a run directory, a loaded checkpoint, or ``"auto"``: the run in ``config.output`` if it has a
    checkpoint, else a new run there), ``overwrite``, ``extend_schedule`` and ``on_step(epoch, batch)`` as in
    :func:`senet.train.lifecycle.fit`, which also says what is refused before anything is written. Raises
    :class:`TrainingDiverged` on a NaN/inf loss or weights, and ``TrainingInterrupted`` when SIGINT, SIGTERM
    or SIGUSR1 stopped training at a step boundary (after saving a checkpoint there).
    """
    return fit(
        ClassificationTask(config),
        resume,
        overwrite=overwrite,
        extend_schedule=extend_schedule,
        on_step=on_step,
    )


class ClassificationTask(Task):
    """A classifier on one data set (:class:`TrainConfig`), as :func:`senet.train.lifecycle.fit` runs it."""

    command = "senet train"
    resume_rules = CLASSIFICATION
    best_keys = ("val_top1_err", "val_top5_err")
    higher_is_better = False
    epoch_line = (
        "loss {train_loss:.4f}  train top-1 err {train_top1_err:.2f}%  val top-1 err {val_top1_err:.2f}%  "
        "top-5 err {val_top5_err:.2f}%  {lr_text}  {images_per_s:.0f} img/s"
    )
    spec: DataSpec

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def adopt(self, checkpoint: Checkpoint | None) -> None:
        self.config = with_pretrained_options(self.config, checkpoint)

    def build_data(self) -> int:
        self.spec = build_run_data(self.config)
        return len(self.spec.train)

    @property
    def data_name(self) -> str:
        return f"data of {self.spec.name}"

    def build_model(self, checkpoint: Checkpoint | None) -> nn.Module:
        spec = self.spec
        net = build_model(self.config, spec, pretrained=checkpoint is None).to(self.device)
        if checkpoint is not None:
            if checkpoint.meta["num_classes"] != spec.num_classes:
                raise ValueError(
                    f"checkpoint has {checkpoint.meta['num_classes']} classes, the data {spec.num_classes}"
                )
            load_weights_into(net, checkpoint.model_state(), str(checkpoint.path))
        return net

    def prepare_model(self, net: nn.Module) -> tuple[nn.Module, nn.Module]:
        if self.config.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net, torch.compile(net) if self.config.compile else net

    def loaders(self, batch: int) -> tuple[Any, Any]:
        return build_loaders(self.config, self.ctx, self.device, self.spec, batch)

    def optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        config = self.config
        other, bn = _split_bn_params(net)
        return torch.optim.SGD(
            [{"params": other}, {"params": bn}],
            lr=config.scaled_lr(),
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            # One kernel per step, and GradScaler passes it the scale and the inf flag on the device instead
            # of reading the flag on the host (a sync per step). CPU keeps the default implementation.
            fused=True if self.device.type == "cuda" else None,
        )

    def lr_factors(self, steps_per_epoch: int) -> list[Callable[[int], float]]:
        return [lr_factor(self.config, steps_per_epoch), _bn_lr_factor(self.config, steps_per_epoch)]

    def describe(self, run_dir: Path, steps_per_epoch: int) -> str:
        config, spec = self.config, self.spec
        return (
            f"run {run_dir}: {config.model}"
            f"{f' from {config.pretrained}' if config.pretrained else ''} on {spec.name} "
            f"({len(spec.train)} train / {len(spec.val)} "
            f"val images, {spec.num_classes} classes), {self.ctx.world_size} process(es) on {self.device}, "
            f"lr {config.scaled_lr():g}, batch {config.batch_size}, {config.epochs} epochs"
        )

    def train_mode(self, net: nn.Module, epoch: int) -> None:
        if _bn_frozen(self.config, epoch):
            for module in net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def meter(self, state: dict[str, Any] | None) -> TopkMeter:
        return TopkMeter(self.device, state)

    def feeder(self, batches: Iterator[Any]) -> DeviceFeeder:
        return DeviceFeeder(batches, self.device, self.config.channels_last)

    def is_empty(self, images: torch.Tensor, targets: torch.Tensor) -> bool:
        return targets.numel() == 0

    def step(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, tuple]:
        with autocast(self.device, self.config.amp):
            logits = model(images)
            loss = self.criterion(logits.float(), targets)
        return loss, (loss, logits.float(), targets)

    def evaluate(self, model: nn.Module, loader: Any, control: RunControl) -> dict[str, Any]:
        # In float32 under --amp too: what `senet eval` scores.
        return evaluate(
            model, loader, self.device, channels_last=self.config.channels_last, ctx=self.ctx, control=control
        )

    def checkpoint_meta(self, net: nn.Module) -> dict[str, Any]:
        spec = self.spec
        return {
            "config": self.config.to_dict(),
            "model": self.config.model,
            "num_classes": spec.num_classes,
            "classes": spec.classes,
            "in_chans": spec.in_chans,
            "build_options": {**model_build_options(self.config), "in_chans": spec.in_chans},
            "preprocessing": spec.preprocessing.as_dict(),
        }


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule as a function of the optimizer step (per-iteration, so milestones may fall mid-epoch)."""

    def factor(step: int) -> float:
        epoch = step / steps_per_epoch
        if epoch < config.warmup_epochs:  # the last warm-up step may end mid-way: never above the base rate
            return min((step + 1) / (config.warmup_epochs * steps_per_epoch), 1.0)
        if config.schedule == "step":
            return config.gamma ** math.floor(epoch / config.step_epochs)
        if config.schedule == "multistep":
            return config.gamma ** sum(epoch >= m for m in config.milestones)
        return 0.5 * (1 + math.cos(math.pi * min(epoch / config.epochs, 1.0)))

    return factor


def _bn_lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """BatchNorm parameters follow the schedule, then stop for the last ``freeze_bn_epochs`` (SENet-154,
    appendix f)."""
    base = lr_factor(config, steps_per_epoch)
    return lambda step: 0.0 if _bn_frozen(config, step // steps_per_epoch) else base(step)


def _bn_frozen(config: TrainConfig, epoch: int) -> bool:
    return config.freeze_bn_epochs > 0 and epoch >= config.epochs - config.freeze_bn_epochs


def _split_bn_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    bn_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    params = list(model.parameters())
    return [p for p in params if id(p) not in bn_ids], [p for p in params if id(p) in bn_ids]


def model_build_options(config: TrainConfig) -> dict[str, Any]:
    """The build options of a run's model, besides what its data sets (classes, input channels)."""
    return config_build_options(config.model_options, config.drop_rate)


def build_model(config: TrainConfig, spec: DataSpec, pretrained: bool = False) -> nn.Module:
    """The run's network; with ``pretrained``, initialised from ``config.pretrained`` (a new classifier where
    the data has another class count)."""
    options = model_build_options(config)
    if pretrained and config.pretrained:
        return load_pretrained(
            config.pretrained,
            model=config.model,
            num_classes=spec.num_classes,
            in_chans=spec.in_chans,
            **options,
        )
    return create_model(config.model, num_classes=spec.num_classes, in_chans=spec.in_chans, **options)


def with_pretrained_options(config: TrainConfig, checkpoint: Checkpoint | None = None) -> TrainConfig:
    """``config`` with the build options that ``config.pretrained``'s weights need (e.g. torchvision's layout)
    written into its ``model_options``: saved with every checkpoint, they make resume, evaluation, prediction
    and export rebuild the network the weights belong to. Contradicting options are refused.

    A run resumed from ``checkpoint`` that started from the same weights takes them from its saved config (the
    weights file may be gone by now); options given now that contradict them fail the resume's identity check.
    """
    if not config.pretrained:
        return config
    saved = checkpoint.meta["config"] if checkpoint is not None else {}
    if saved.get("pretrained") == config.pretrained:
        options = {**saved["model_options"], **config.model_options}
    else:
        options = pretrained_build_options(config.pretrained, config.model, config.model_options)
    data_set = ("in_chans", "num_classes")  # set by the data (and checked against the weights when loading)
    return dataclasses.replace(config, model_options={k: v for k, v in options.items() if k not in data_set})


def build_run_data(config: TrainConfig) -> DataSpec:
    """The data of a run of ``config`` (train and val splits, classes, preprocessing)."""
    return build_data(
        config.data,
        root=config.data_root,
        image_size=config.image_size,
        eval_crop=config.eval_crop,
        strict_data=config.strict_data,
        download=config.download,
        cutout=config.cutout,
    )


def build_loaders(config: TrainConfig, ctx: Dist, device: torch.device, spec: DataSpec, batch: int) -> tuple:
    """The train and val loaders: images decoded and augmented in the workers (``loader="cpu"``; on CUDA they
    send uint8 batches, converted and normalised on the device), or only read there and finished on the
    device (``"gpu"``; ``"auto"``: on CUDA, for image folders and their shards)."""
    cuda = device.type == "cuda"
    gpu = config.loader == "gpu" or (config.loader == "auto" and cuda and decodes_on_device(spec))
    if gpu:
        train, val, pipeline = device_pipeline_datasets(spec)
        parts = [(train, pipeline), (val, pipeline)]
    elif cuda:  # a quarter of float32's bytes to pin and copy
        parts = [convert_on_device(split) or (split, None) for split in (spec.train, spec.val)]
    else:
        parts = [(spec.train, None), (spec.val, None)]
    (train, train_finish), (val, val_finish) = parts
    common = dict(batch_size=batch, workers=config.workers, pin_memory=cuda)
    loaders = (
        build_loader(
            train,
            train=True,
            seed=config.seed,
            distributed=ctx.world_size > 1,
            balanced_targets=spec.train_targets if config.balanced_sampling else None,
            collate_fn=train_finish.collate if train_finish else None,
            **common,
        ),
        build_loader(
            val_shard(val, ctx), train=False, collate_fn=val_finish.collate if val_finish else None, **common
        ),
    )
    return tuple(
        loader if finish is None else DeviceLoader(loader, finish, device, config.channels_last)
        for loader, finish in zip(loaders, (train_finish, val_finish), strict=True)
    )
