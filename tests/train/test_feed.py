"""senet.train.feed: the deferred finite-loss check and the device feeder (their CPU behaviour, and the CUDA
scheduling logic run on CPU with a check every few steps)."""

import pytest
import torch

from senet.train import TrainingDiverged, train
from senet.train import feed
from senet.train.checkpoint import load_checkpoint
from tests.train.test_engine import tiny_config


def _agree(value: int) -> int:  # a single process: the minimum over one rank
    return value


def test_the_first_non_finite_step_is_named_exactly_however_late_it_is_read():
    check = feed.FiniteLossCheck(torch.device("cpu"), _agree, every=4)
    losses = [1.0, 2.0, float("nan"), float("inf")]
    for step, value in enumerate(losses, 1):
        check.observe(step, torch.tensor(value), ("epoch 1", step))
        assert check.due() == (step == 4)
    step, value, where = check.first_bad()
    assert step == 3 and value != value and where == ("epoch 1", 3)  # the NaN, not the later inf


def test_finite_losses_pass_and_another_ranks_divergence_stops_this_one_too():
    check = feed.FiniteLossCheck(torch.device("cpu"), _agree, every=2)
    for step in (1, 2):
        check.observe(step, torch.tensor(0.5), (1, step))
    assert check.first_bad() is None and not check.due()
    other_rank_bad = feed.FiniteLossCheck(torch.device("cpu"), lambda value: 0, every=1)
    other_rank_bad.observe(7, torch.tensor(0.5), (2, 3))
    assert other_rank_bad.first_bad()[0] == 7


def test_the_cpu_feeder_yields_each_batch_with_the_rng_state_drawn_before_it():
    def batches():
        for _ in range(3):
            yield torch.rand(2, 3), torch.tensor([0, 1]), 0

    feeder = feed.DeviceFeeder(batches(), torch.device("cpu"), channels_last=False)
    seen = []
    while (batch := feeder.fetch()) is not None:
        (state, _), images, _, _ = batch
        torch.set_rng_state(state["torch"])
        assert torch.equal(torch.rand(2, 3), images)  # replaying the saved state draws this very batch
        seen.append(images)
    assert len(seen) == 3


def test_a_deferred_check_stops_at_the_exact_step_and_never_saves_a_diverged_state(tmp_path, monkeypatch):
    # CUDA's schedule (a host read every 5 steps) on CPU: the divergence is named at the step the every-step
    # check names (epoch 1 is 22 steps; the lr jumps to 1e29 for step 23, whose update makes step 24's loss
    # NaN), and the save due at step 24, between the divergence and the next read, is refused, not written.
    original = feed.FiniteLossCheck.__init__
    monkeypatch.setattr(
        feed.FiniteLossCheck, "__init__", lambda self, device, agree: original(self, device, agree, every=5)
    )
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch 2, batch 2 \(step 24\)"):
        train(tiny_config(tmp_path, epochs=2, gamma=1e30, save_every_steps=2))
    after = load_checkpoint(tmp_path / "run")
    assert after.meta["step"] == 22
    assert all(torch.isfinite(v).all() for v in after.model_state().values())


def _folder_config(tmp_path, root, name, **overrides):
    values = dict(
        model="se_resnet18",
        model_options={"widths": (4, 8, 8, 8)},
        data=str(root),
        image_size=32,
        batch_size=4,
        epochs=1,
        cutout=8,
        workers=0,
    )
    return tiny_config(tmp_path, name, **{**values, **overrides})


def test_the_gpu_loader_trains_exactly_as_the_cpu_loader_where_both_decode_alike(tmp_path, make_folder):
    # On CPU the "gpu" loader decodes with torchvision (libjpeg, as PIL) in the training process: the same
    # crops, flips and Cutout squares, the same pixels, hence bit-for-bit the same run.
    root = make_folder(classes=("cat", "dog"), per_class=6)
    cpu = train(_folder_config(tmp_path, root, "cpu", loader="cpu"))
    gpu = train(_folder_config(tmp_path, root, "gpu", loader="gpu"))
    assert [r["train_loss"] for r in cpu.history] == [r["train_loss"] for r in gpu.history]
    assert [r["val_top1_err"] for r in cpu.history] == [r["val_top1_err"] for r in gpu.history]
    assert all(
        torch.equal(a, b) for a, b in zip(cpu.model.state_dict().values(), gpu.model.state_dict().values())
    )


def test_the_gpu_loader_refuses_data_it_cannot_decode_on_the_device(tmp_path):
    with pytest.raises(ValueError, match="the GPU loader reads the image files of an image folder"):
        train(tiny_config(tmp_path, loader="gpu"))
    with pytest.raises(ValueError, match="unknown loader 'dali'; choose auto"):
        tiny_config(tmp_path, loader="dali")
