"""`senet train` trains every family of the paper (a smoke test: tiny widths, tiny images, 2 steps each)."""

import math

import pytest

from senet.train import TrainConfig, train

ONE_PER_FAMILY = [  # (model, options that keep it small, smallest convenient input)
    ("se_resnet50", {"widths": (8, 8, 8, 8)}, 32),
    ("se_bn_inception", {}, 64),  # no width options: the real 11.9M-parameter network
    ("se_inception_resnet_v2", {"depths": (1, 1, 1)}, 75),
    ("se_vgg16_bn", {"widths": (8, 8, 16, 16, 16), "mlp_width": 32}, 32),
    ("se_mobilenet", {"units": ((16, 1), (32, 2), (32, 1))}, 32),
    ("se_shufflenet", {"widths": (48, 96, 192)}, 32),
    ("se_wrn16_8", {"widths": (8, 16, 32)}, 32),
    ("se_shake_shake26_2x96d", {"base_width": 8}, 32),
    ("se_shake_even29_2x4x64d", {"base_width": 4}, 32),
]


@pytest.mark.parametrize("model, options, size", ONE_PER_FAMILY)
def test_each_family_trains_with_the_engine(tmp_path, make_folder, model, options, size):
    root = make_folder(classes=("cat", "dog"), per_class=4)
    config = TrainConfig(
        model=model,
        model_options=options,
        data=str(root),
        image_size=size,
        epochs=1,
        batch_size=4,
        lr=0.01,
        device="cpu",
        log_interval=0,
        output=str(tmp_path / model),
    )
    result = train(config)
    record = result.history[0]
    assert math.isfinite(record["train_loss"]) and record["train_images"] == 8 and record["val_images"] == 8
    assert result.model.num_classes == 2
