import math

import pytest
import torch

import senet
from senet.train.config import TrainConfig, parse_model_options, resolve_config
from senet.train.engine import _bn_frozen, lr_factor


def _lr_at(config, epoch: float, steps_per_epoch: int = 100) -> float:
    """The learning rate the engine's schedule gives at ``epoch`` (steps_per_epoch sets the resolution)."""
    return config.scaled_lr() * lr_factor(config, steps_per_epoch)(round(epoch * steps_per_epoch))


def test_imagenet_paper_preset_follows_sec_5_1():
    # Sec. 5.1: SGD momentum 0.9, minibatch 1024, lr 0.6 divided by 10 every 30 epochs, 100 epochs.
    config = resolve_config("imagenet-paper", data="/data/imagenet")
    assert (config.model, config.epochs, config.batch_size, config.momentum) == (
        "se_resnet50",
        100,
        1024,
        0.9,
    )
    lrs = [_lr_at(config, e) for e in (0, 29.99, 30, 59.99, 60, 90, 99.99)]
    assert lrs == pytest.approx([0.6, 0.6, 0.06, 0.06, 0.006, 0.0006, 0.0006])
    # Linear scaling (Goyal et al. 2017) to a smaller batch: 0.6 * 256 / 1024.
    smaller = resolve_config("imagenet-paper", data="/data/imagenet", batch_size=256)
    assert _lr_at(smaller, 0) == pytest.approx(0.15) and _lr_at(smaller, 30) == pytest.approx(0.015)


def test_imagenet_paper_for_senet154_adds_the_appendix_regularisation():
    # Appendix (d)-(g): dropout 0.2, label smoothing, BN frozen for the last few epochs, lr 1.0 at batch 2048.
    config = resolve_config("imagenet-paper", model="senet154", data="/d")
    assert (
        config.label_smoothing > 0 and config.batch_size == 2048 and _lr_at(config, 0) == pytest.approx(1.0)
    )
    frozen = [epoch for epoch in range(config.epochs) if _bn_frozen(config, epoch)]
    assert frozen and frozen == list(range(frozen[0], config.epochs)) and len(frozen) < config.epochs // 10
    assert config.drop_rate is None  # the model's own default, which is the appendix's 0.2:
    with torch.device("meta"):
        assert senet.create_model(config.model).dropout.p == 0.2


def test_imagenet_paper_needs_data():
    with pytest.raises(ValueError, match="needs --data"):
        resolve_config("imagenet-paper")


def test_cifar_paper_resnet_follows_he_et_al_iterations():
    # He et al. 2016a: batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, stopped at 64k; at 50k
    # images an epoch is ceil(50000 / 128) = 391 iterations. The schedule must drop within one epoch of them.
    config = resolve_config("cifar-paper", model="resnet110_cifar")
    assert (config.batch_size, config.data, config.weight_decay) == (128, "cifar10", 1e-4)
    per_epoch = math.ceil(50_000 / config.batch_size)
    factor = lr_factor(config, per_epoch)
    for iteration, before, after in [(32_000, 1.0, 0.1), (48_000, 0.1, 0.01)]:
        assert factor(iteration - per_epoch) == pytest.approx(before)
        assert factor(iteration + per_epoch) == pytest.approx(after)
    assert abs(config.epochs * per_epoch - 64_000) <= per_epoch
    assert config.scaled_lr() == 0.1


def test_cifar_paper_wrn_follows_zagoruyko_and_komodakis():
    # WRN Sec. 3: Nesterov momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 times 0.2 at epochs 60, 120,
    # 160, 200 epochs in all.
    config = resolve_config("cifar-paper", model="se_wrn16_8")
    assert (config.nesterov, config.momentum, config.weight_decay, config.batch_size) == (
        True,
        0.9,
        5e-4,
        128,
    )
    lrs = [_lr_at(config, e) for e in (0, 59.99, 60, 120, 160, 199.99)]
    assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.004, 0.0008, 0.0008])
    assert config.epochs == 200


@pytest.mark.parametrize(
    "model, dataset, lr, batch, weight_decay, cutout",
    [
        # Gastaldi 2017: cosine annealing without restarts over 1800 epochs; CIFAR-10 26 2x96d from lr 0.2 at
        # batch 128, CIFAR-100 29 2x4x64d from 0.025 at batch 32, wd 5e-4; Cutout 16 px on CIFAR-10, 8 px on
        # CIFAR-100.
        ("se_shake_shake26_2x96d", "cifar10", 0.2, 128, 1e-4, 16),
        ("shake_even29_2x4x64d", "cifar100", 0.025, 32, 5e-4, 8),
    ],
)
def test_cifar_paper_shake_shake_follows_gastaldi(model, dataset, lr, batch, weight_decay, cutout):
    config = resolve_config("cifar-paper", model=model)
    assert (config.data, config.batch_size, config.cutout) == (dataset, batch, cutout)
    assert config.weight_decay == weight_decay
    assert config.epochs == 1800
    lrs = [_lr_at(config, e) for e in (0, 600, 900, 1800)]  # lr/2 * (1 + cos(pi * t / T))
    assert lrs == pytest.approx([lr, lr * 0.75, lr / 2, 0.0], abs=1e-12)
    assert senet.model_info(model).num_classes == {"cifar10": 10, "cifar100": 100}[dataset]


def test_overrides_beat_the_preset_and_bad_values_are_refused():
    config = resolve_config("demo", lr=0.05, epochs=3, model="resnet20_cifar")
    assert (config.lr, config.epochs, config.model) == (0.05, 3, "resnet20_cifar")
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_config("imagenet")
    with pytest.raises(ValueError, match="unknown config fields colour"):
        TrainConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="unknown schedule"):
        TrainConfig(schedule="linear")


def test_model_options_parse_python_literals_and_bare_words():
    assert parse_model_options(["se_reduction=8", "se_stages=(1,2)", "se_gate=tanh"]) == {
        "se_reduction": 8,
        "se_stages": (1, 2),
        "se_gate": "tanh",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_options(["se_reduction"])
