"""Mixed precision and memory formats on CPU; the CUDA path where a GPU exists (skipped cleanly elsewhere)."""

import math

import pytest
import torch

from senet.train import TrainConfig, train
from senet.train.evaluation import evaluate_runs

TINY = dict(
    model="se_resnet20_cifar",
    model_options={"widths": (4, 8, 8)},
    data="digits",
    epochs=1,
    batch_size=64,
    log_interval=0,
)


def test_bf16_autocast_and_channels_last_train_on_cpu(tmp_path):
    result = train(
        TrainConfig(**TINY, device="cpu", amp=True, channels_last=True, output=str(tmp_path / "run"))
    )
    assert math.isfinite(result.history[0]["train_loss"]) and result.history[0]["val_images"] == 360
    assert next(result.model.parameters()).dtype == torch.float32  # autocast leaves the weights in fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_amp_on_cuda_trains_and_its_checkpoint_evaluates_on_cpu(tmp_path):
    run = tmp_path / "cuda"
    result = train(TrainConfig(**TINY, device="cuda", amp=True, channels_last=True, output=str(run)))
    assert next(result.model.parameters()).is_cuda
    cpu = evaluate_runs([run], device="cpu")
    assert cpu.top1_err == pytest.approx(result.history[0]["val_top1_err"], abs=1.0)  # fp16 vs fp32 logits
