import json
import os

import pytest
import torch
from torch import nn

from senet.weights import checkpoint as ckpt


def _save(run_dir, model, optimizer, step, keep=2):
    return ckpt.save_checkpoint(
        run_dir,
        model=model,
        optimizer=optimizer,
        keep=keep,
        meta={"step": step, "batches_done": step % 3, "epoch": step // 3, "config": {}},
    )


@pytest.fixture
def trained():
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _complete(meta_path):
    """A checkpoint JSON with every field the schema asks for (as the engine writes them)."""
    meta = json.loads(meta_path.read_text())
    meta.update(
        {
            k: v
            for k, v in {
                "model": "m",
                "num_classes": 3,
                "classes": [],
                "world_size": 1,
                "history": [],
                "best": {},
                "epoch_state": {},
            }.items()
            if k not in meta
        }
    )
    meta_path.write_text(json.dumps(meta))
    return meta_path


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path, trained):
    model, optimizer = trained
    _complete(_save(tmp_path, model, optimizer, 1))
    expected_draw = torch.rand(3)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert all(torch.equal(loaded.model_state()[k], v) for k, v in model.state_dict().items())
    fresh = torch.optim.SGD(nn.Linear(4, 3).parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(loaded.optimizer_state())
    assert torch.equal(
        fresh.state_dict()["state"][0]["momentum_buffer"],
        optimizer.state_dict()["state"][0]["momentum_buffer"],
    )
    loaded.restore_rng(0)
    assert torch.equal(torch.rand(3), expected_draw)
    with pytest.raises(ValueError, match="no RNG state of process 1"):
        loaded.restore_rng(1)


def test_the_newest_k_checkpoints_are_kept(tmp_path, trained):
    model, optimizer = trained
    for step in range(1, 6):
        _complete(_save(tmp_path, model, optimizer, step, keep=2))
    kept = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["checkpoint-e0001-b0000001.json", "checkpoint-e0001-b0000002.json"]
    assert len(list(tmp_path.glob("checkpoint-*.safetensors"))) == 2
    assert ckpt.load_checkpoint(tmp_path).meta["step"] == 5
    with pytest.raises(ValueError, match="keep must be >= 1"):
        _save(tmp_path, model, optimizer, 6, keep=0)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, trained, caplog):
    model, optimizer = trained
    _complete(_save(tmp_path, model, optimizer, 1))
    newest = _complete(_save(tmp_path, model, optimizer, 2))
    tensors = newest.with_suffix(".safetensors")
    tensors.write_bytes(tensors.read_bytes()[:-10])  # truncated after it was written
    assert ckpt.load_checkpoint(tmp_path).meta["step"] == 1
    assert "truncated" in caplog.text
    with pytest.raises(ValueError, match="truncated"):
        ckpt.load_checkpoint(newest)  # asked for by name: no silent fallback


def test_a_crash_while_saving_leaves_the_previous_checkpoint_readable(tmp_path, trained, monkeypatch):
    model, optimizer = trained
    _complete(_save(tmp_path, model, optimizer, 1))
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


def test_stale_files_of_an_interrupted_save_are_removed(tmp_path, trained, monkeypatch):
    model, optimizer = trained
    _complete(_save(tmp_path, model, optimizer, 1))

    def dies_before_the_json():
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "before_commit", dies_before_the_json)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, model, optimizer, 2)
    monkeypatch.undo()
    (tmp_path / ".checkpoint-x.json.abc.tmp").write_bytes(b"half")
    assert ckpt.load_checkpoint(tmp_path).meta["step"] == 1
    removed = sorted(p.name for p in ckpt.remove_stale_files(tmp_path))
    assert removed == [".checkpoint-x.json.abc.tmp", ckpt.checkpoint_name(0, 2) + ".safetensors"]
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "not a senet checkpoint"),
        ('{"format": "senet-checkpoint/2"}', "missing or wrong fields tensors"),
        ("{not json", "not a valid checkpoint file"),
    ],
)
def test_malformed_checkpoint_json_is_one_line(tmp_path, content, message):
    path = tmp_path / (ckpt.checkpoint_name(0, 1) + ".json")
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        ckpt.load_checkpoint(tmp_path)
    assert "\n" not in str(error.value)


def test_a_tensor_file_name_cannot_leave_the_run_directory(tmp_path, trained):
    model, optimizer = trained
    meta_path = _complete(_save(tmp_path, model, optimizer, 1))
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tensors": "../elsewhere.safetensors"}))
    with pytest.raises(ValueError, match="not a plain file name"):
        ckpt.load_checkpoint(tmp_path)


def test_corrupt_weights_files_give_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="is missing"):
        ckpt.load_weights_file(tmp_path / "best.safetensors")
    ckpt.save_weights(tmp_path / "best.safetensors", nn.Linear(4, 3))
    data = (tmp_path / "best.safetensors").read_bytes()
    (tmp_path / "best.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        ckpt.load_weights_file(tmp_path / "best.safetensors")


def test_weights_of_another_model_name_what_differs():
    mismatch = ckpt.describe_mismatch(nn.Linear(4, 3), nn.Linear(4, 5).state_dict())
    assert mismatch == "shape differs: weight (5, 4) vs (3, 4), bias (5,) vs (3,)"
    with pytest.raises(ValueError, match="missing: 0.weight"):
        ckpt.load_weights_into(nn.Sequential(nn.Linear(4, 3)), nn.Linear(4, 3).state_dict(), "x")


def test_a_run_of_the_first_checkpoint_format_is_named_as_such(tmp_path):
    (tmp_path / "checkpoint.json").write_text('{"format": "senet-checkpoint/1"}')
    with pytest.raises(ValueError, match="first format"):
        ckpt.load_checkpoint(tmp_path)


def test_build_options_that_are_not_a_mapping_are_one_line(tmp_path, trained):
    model, optimizer = trained
    meta_path = _complete(_save(tmp_path, model, optimizer, 1))
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "build_options": ["widths", 4]}))
    with pytest.raises(ValueError, match="is damaged: its build_options are not a mapping") as error:
        ckpt.read_checkpoint(meta_path)
    assert "\n" not in str(error.value)


def test_a_run_of_an_earlier_version_is_built_as_its_config_says():
    """Checkpoints without build_options: the config's model_options, its drop_rate where set, the data's
    channels (the checkpoint's in_chans, else the caller's)."""
    config = {"model_options": {"widths": [4, 8, 8]}, "drop_rate": 0.1}
    assert ckpt.run_build_options({"config": config, "in_chans": 1}, 3) == {
        "widths": [4, 8, 8],
        "drop_rate": 0.1,
        "in_chans": 1,
    }
    assert ckpt.run_build_options({"config": {"model_options": {}, "drop_rate": None}}, 3) == {"in_chans": 3}
    recorded = {"build_options": {"in_chans": 2}, "config": config}
    assert ckpt.run_build_options(recorded, 3) == {"in_chans": 2}
