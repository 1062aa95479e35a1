"""senet.train.feed: the deferred finite check of losses and weights and the device feeder (their CPU
behaviour, and the CUDA scheduling logic run on CPU with a check every few steps)."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from senet.data import pack_folder
from senet.data.device_pipeline import ConvertOnDevice, DeviceBatchPipeline, DeviceLoader, Uint8Batch
from senet.data.loaders import _ShardSampler
from senet.runtime import Dist
from senet.train import TrainingDiverged, feed, train
from senet.train.control import FAULT_ENV
from senet.train.engine import build_loaders, build_run_data
from senet.weights.checkpoint import list_checkpoints, load_checkpoint
from tests.train.test_engine import tiny_config


def _agree(value: int) -> int:  # a single process: the minimum over one rank
    return value


def test_the_first_non_finite_step_is_named_exactly_however_late_it_is_read():
    check = feed.FiniteCheck(torch.device("cpu"), _agree, every=4)
    losses = [1.0, 2.0, float("nan"), float("inf")]
    for step, value in enumerate(losses, 1):
        check.observe(step, torch.tensor(value), ("epoch 1", step))
        assert check.due() == (step == 4)
    step, value, where = check.first_bad()
    assert step == 3 and value != value and where == ("epoch 1", 3)  # the NaN, not the later inf


def test_finite_losses_pass_and_another_ranks_divergence_stops_this_one_too():
    check = feed.FiniteCheck(torch.device("cpu"), _agree, every=2)
    for step in (1, 2):
        check.observe(step, torch.tensor(0.5), (1, step))
    assert check.first_bad() is None and not check.due()
    other_rank_bad = feed.FiniteCheck(torch.device("cpu"), lambda value: 0, every=1)
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
    original = feed.FiniteCheck.__init__
    monkeypatch.setattr(
        feed.FiniteCheck, "__init__", lambda self, device, agree: original(self, device, agree, every=5)
    )
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch 2, batch 2 \(step 24\)"):
        train(tiny_config(tmp_path, epochs=2, gamma=1e30, save_every_steps=2))
    after = load_checkpoint(tmp_path / "run")
    assert after.meta["step"] == 22
    assert all(torch.isfinite(v).all() for v in after.model_state().values())


def _nan_gradient_at(monkeypatch, step):
    """The run's network gets a gradient hook that returns NaN on the ``step``-th backward pass only: the loss
    of that step is finite, its update is not."""
    from senet.train import engine

    build = engine.build_model

    def hooked(*args, **kwargs):
        net = build(*args, **kwargs)
        calls = [0]

        def poison(grad):
            calls[0] += 1
            return torch.full_like(grad, float("nan")) if calls[0] == step else grad

        next(net.parameters()).register_hook(poison)
        return net

    monkeypatch.setattr(engine, "build_model", hooked)


def _assert_nothing_diverged_was_saved(run):
    for path in sorted(run.glob("*.safetensors")):  # every checkpoint and best.safetensors
        state = load_file(path)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path.name


@pytest.mark.parametrize(
    "save, every",
    [("periodic", 1), ("periodic", 50), ("signal", 50), ("epoch end", 50)],
)
def test_a_nan_gradient_with_a_finite_loss_is_never_saved(tmp_path, monkeypatch, save, every):
    # The case: a NaN gradient at step 5 with a finite loss, --save-every-steps 5. ``every``: the
    # finite flag is read every step (CPU) or, as on CUDA, every 50 steps, i.e. only when something is saved.
    # Epoch 1 is 22 steps of 64 digits: "epoch end" poisons its last step, before best.safetensors and the
    # epoch's checkpoint; "signal" sends SIGTERM after step 5, whose handler saves at that step.
    original = feed.FiniteCheck.__init__
    monkeypatch.setattr(
        feed.FiniteCheck, "__init__", lambda self, device, agree: original(self, device, agree, every=every)
    )
    step = 22 if save == "epoch end" else 5
    _nan_gradient_at(monkeypatch, step)
    if save == "signal":
        monkeypatch.setenv(FAULT_ENV, "SIGTERM@step=5")
    config = tiny_config(tmp_path, epochs=2, save_every_steps=5 if save == "periodic" else 0)
    with pytest.raises(
        TrainingDiverged, match=rf"weights became NaN .* \(step {step}\); .*last good"
    ) as error:
        train(config)
    run = tmp_path / "run"
    assert [load_checkpoint(p).meta["step"] for p in list_checkpoints(run)] == []
    assert "none yet" in str(error.value) and not (run / "best.safetensors").exists()
    _assert_nothing_diverged_was_saved(run)


def test_a_diverged_step_after_good_checkpoints_names_the_last_good_one(tmp_path, monkeypatch):
    _nan_gradient_at(monkeypatch, 12)
    with pytest.raises(TrainingDiverged, match=r"\(step 12\); .*last good checkpoint: .*b0000010\.json"):
        train(tiny_config(tmp_path, epochs=1, save_every_steps=5))
    assert [load_checkpoint(p).meta["step"] for p in list_checkpoints(tmp_path / "run")] == [5, 10]
    _assert_nothing_diverged_was_saved(tmp_path / "run")


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


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "shards"])
def test_the_gpu_loader_trains_exactly_as_the_cpu_loader_where_both_decode_alike(
    tmp_path, make_folder, packed
):
    # On CPU the "gpu" loader decodes with torchvision (libjpeg, as PIL) in the training process: the same
    # crops, flips and Cutout squares, the same pixels, hence bit-for-bit the same run; from shards too.
    root = make_folder(classes=("cat", "dog"), per_class=6)
    if packed:
        root = pack_folder(root, tmp_path / "shards", images_per_shard=5)
    cpu = train(_folder_config(tmp_path, root, "cpu", loader="cpu"))
    gpu = train(_folder_config(tmp_path, root, "gpu", loader="gpu"))
    assert [r["train_loss"] for r in cpu.history] == [r["train_loss"] for r in gpu.history]
    assert [r["val_top1_err"] for r in cpu.history] == [r["val_top1_err"] for r in gpu.history]
    assert all(
        torch.equal(a, b)
        for a, b in zip(cpu.model.state_dict().values(), gpu.model.state_dict().values(), strict=True)
    )


def test_the_gpu_loader_refuses_data_it_cannot_decode_on_the_device(tmp_path):
    with pytest.raises(ValueError, match="the GPU loader reads the image files of an image folder or of its"):
        train(tiny_config(tmp_path, loader="gpu"))
    with pytest.raises(ValueError, match="unknown loader 'dali'; choose auto"):
        tiny_config(tmp_path, loader="dali")


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "shards"])
def test_on_cuda_the_cpu_loader_sends_uint8_and_auto_decodes_shards_on_the_device(
    tmp_path, make_folder, packed
):
    """The loaders the engine builds for a CUDA device (built here, and their workers' side run, on CPU):
    --loader cpu sends uint8 batches that the device converts; auto decodes folders and shards there. On a
    CPU device the CPU loader still sends float32 batches (bit-identical runs: the tests above)."""
    root = make_folder(classes=("cat", "dog"), per_class=4)
    if packed:
        root = pack_folder(root, tmp_path / "shards", images_per_shard=3)
    config = _folder_config(tmp_path, root, "run", loader="cpu")
    spec = build_run_data(config)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for loader in build_loaders(config, Dist(), cuda, spec, 4):
        assert isinstance(loader, DeviceLoader) and isinstance(loader.pipeline, ConvertOnDevice)
        assert isinstance(loader.sampler, _ShardSampler) == packed
        loader.loader.pin_memory = False  # no GPU here to pin for
        batch = next(iter(loader.loader))
        assert isinstance(batch, Uint8Batch) and batch.images.dtype == torch.uint8
    for loader in build_loaders(config, Dist(), cpu, spec, 4):
        images, _, _ = next(iter(loader))
        assert images.dtype == torch.float32
    auto = build_loaders(dataclasses.replace(config, loader="auto"), Dist(), cuda, spec, 4)
    assert all(isinstance(loader.pipeline, DeviceBatchPipeline) for loader in auto)
    assert all(isinstance(loader.sampler, _ShardSampler) == packed for loader in auto)
