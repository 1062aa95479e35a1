import os

import pytest
import torch
from torch import nn

from senet.train import checkpoint as ckpt


def _save(run_dir, model, optimizer, step):
    return ckpt.save_checkpoint(run_dir, model=model, optimizer=optimizer,
                                meta={"step": step, "batches_done": 0, "epoch": step, "config": {}})


@pytest.fixture
def trained():
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path, trained):
    model, optimizer = trained
    _save(tmp_path, model, optimizer, 1)
    expected_draw = torch.rand(3)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert all(torch.equal(loaded.model_state()[k], v) for k, v in model.state_dict().items())
    fresh = torch.optim.SGD(nn.Linear(4, 3).parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(loaded.optimizer_state())
    assert torch.equal(fresh.state_dict()["state"][0]["momentum_buffer"], optimizer.state_dict()["state"][0]["momentum_buffer"])
    ckpt.set_rng_state(loaded.tensors, loaded.meta["rng"])
    assert torch.equal(torch.rand(3), expected_draw)


def test_only_the_latest_tensor_file_is_kept(tmp_path, trained):
    model, optimizer = trained
    _save(tmp_path, model, optimizer, 1)
    _save(tmp_path, model, optimizer, 2)
    assert len(list(tmp_path.glob("checkpoint-*.safetensors"))) == 1
    assert ckpt.load_checkpoint(tmp_path).meta["step"] == 2


def test_a_crash_while_saving_leaves_the_previous_checkpoint_readable(tmp_path, trained, monkeypatch):
    model, optimizer = trained
    _save(tmp_path, model, optimizer, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    def killed(*args):  # the process dies just before a file would be renamed into place
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, model, optimizer, 2)
    monkeypatch.undo()
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.meta["step"] == 1
    assert all(torch.equal(loaded.model_state()[k], v) for k, v in before.items())
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_a_crash_between_tensors_and_json_keeps_the_old_pair(tmp_path, trained, monkeypatch):
    model, optimizer = trained
    _save(tmp_path, model, optimizer, 1)
    real_write = ckpt.atomic_write

    def dies_on_json(path, data):
        if path.suffix == ".json":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(ckpt, "atomic_write", dies_on_json)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, model, optimizer, 2)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path).meta["step"] == 1


def test_missing_and_corrupt_files_give_one_clear_line(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt.load_checkpoint(tmp_path)
    model, optimizer = trained
    _save(tmp_path, model, optimizer, 1)
    tensors = next(tmp_path.glob("checkpoint-*.safetensors"))
    tensors.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        ckpt.load_checkpoint(tmp_path)


def test_weights_of_another_model_name_what_differs():
    mismatch = ckpt.describe_mismatch(nn.Linear(4, 3), nn.Linear(4, 5).state_dict())
    assert mismatch == "shape differs: weight (5, 4) vs (3, 4), bias (5,) vs (3,)"
    with pytest.raises(ValueError, match="missing: 0.weight"):
        ckpt.load_weights_into(nn.Sequential(nn.Linear(4, 3)), nn.Linear(4, 3).state_dict(), "x")
