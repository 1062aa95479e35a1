import pytest

from senet.train.config import TrainConfig, parse_model_options, resolve_config


def test_imagenet_paper_preset_is_the_papers_recipe_scaled_to_the_batch():
    config = resolve_config("imagenet-paper", data="/data/imagenet")
    assert (config.model, config.epochs, config.batch_size, config.momentum) == ("se_resnet50", 100, 1024, 0.9)
    assert (config.schedule, config.step_epochs, config.gamma, config.scaled_lr()) == ("step", 30, 0.1, 0.6)
    smaller = resolve_config("imagenet-paper", data="/data/imagenet", batch_size=256)
    assert smaller.scaled_lr() == pytest.approx(0.15)


def test_imagenet_paper_for_senet154_adds_the_appendix_regularisation():
    config = resolve_config("imagenet-paper", model="senet154", data="/d")
    assert config.label_smoothing == 0.1 and config.freeze_bn_epochs > 0 and config.scaled_lr() == 1.0


def test_imagenet_paper_needs_data():
    with pytest.raises(ValueError, match="needs --data"):
        resolve_config("imagenet-paper")


@pytest.mark.parametrize("model, expected", [
    ("resnet110_cifar", dict(epochs=164, milestones=(82.0, 123.0), lr=0.1, weight_decay=1e-4, nesterov=False)),
    ("se_wrn16_8", dict(epochs=200, milestones=(60.0, 120.0, 160.0), gamma=0.2, weight_decay=5e-4, nesterov=True)),
    ("shake_shake26_2x96d", dict(epochs=1800, lr=0.2, schedule="cosine", cutout=16, batch_size=128, data="cifar10")),
    ("shake_even29_2x4x64d", dict(lr=0.025, batch_size=32, weight_decay=5e-4, cutout=8, data="cifar100")),
])
def test_cifar_paper_follows_each_original_paper(model, expected):
    config = resolve_config("cifar-paper", model=model)
    assert {k: getattr(config, k) for k in expected} == expected


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
        "se_reduction": 8, "se_stages": (1, 2), "se_gate": "tanh"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_options(["se_reduction"])
