"""`senet train` trains every family of the paper (a smoke test: full-size networks, tiny images, 2 steps)."""

import math

import pytest

from senet.train import TrainConfig, train

ONE_PER_FAMILY = [  # (model, smallest convenient input)
    ("se_bn_inception", 64),
    ("se_inception_resnet_v2", 75),
    ("se_vgg16_bn", 32),
    ("se_mobilenet", 32),
    ("se_shufflenet", 32),
    ("se_wrn16_8", 32),
    ("se_shake_shake26_2x96d", 32),
    ("se_shake_even29_2x4x64d", 32),
]


@pytest.mark.parametrize("model, size", ONE_PER_FAMILY)
def test_each_family_trains_with_the_engine(tmp_path, make_folder, model, size):
    root = make_folder(classes=("cat", "dog"), per_class=4)
    config = TrainConfig(model=model, data=str(root), image_size=size, epochs=1, batch_size=4, lr=0.01,
                         device="cpu", log_interval=0, output=str(tmp_path / model))
    result = train(config)
    record = result.history[0]
    assert math.isfinite(record["train_loss"]) and record["train_images"] == 8 and record["val_images"] == 8
    assert result.model.num_classes == 2
