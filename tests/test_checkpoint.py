"""The self-describing checkpoint: round trips, weights_only loading, atomic writes, bad files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from volseg.checkpoint import (
    FORMAT_VERSION,
    build_checkpoint,
    capture_rng_state,
    checkpoint_config,
    inference_only,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from volseg.config import config_from_dict
from volseg.errors import CheckpointError, InputFileError, OutputError
from volseg.nn import create_model


@pytest.fixture
def model():
    return create_model("unet", 3, 2, 3, features=[4, 8], norm="batch")


@pytest.fixture
def config():
    return config_from_dict(
        {"data": {"labels": {0: "background", 1: "a", 2: "b"}}, "sampling": {"patch_size": [8, 8, 8]}}
    )


def test_round_trip_rebuilds_the_same_network(tmp_path, model, config):
    x = torch.randn(1, 2, 8, 8, 8)
    model.eval()
    path = save_checkpoint(build_checkpoint(model, config, metrics={"dice": 0.5}), tmp_path / "model.pt")
    checkpoint = load_checkpoint(path)
    assert checkpoint["format_version"] == FORMAT_VERSION and checkpoint["metrics"] == {"dice": 0.5}
    assert checkpoint_config(checkpoint) == config
    rebuilt = model_from_checkpoint(checkpoint)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert not rebuilt.training


def test_training_state_loads_with_weights_only(tmp_path, model, config):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(2, 2, 8, 8, 8)).square().mean().backward()
    optimizer.step()
    training = {"epoch": 3, "optimizer": optimizer.state_dict(), "rng": capture_rng_state(), "history": [{"loss": 1.0}]}
    path = save_checkpoint(build_checkpoint(model, config, training=training), tmp_path / "last.pt")
    loaded = load_checkpoint(path)  # weights_only=True inside
    restored = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    restored.load_state_dict(loaded["training"]["optimizer"])
    first = next(iter(optimizer.state.values()))["momentum_buffer"]
    assert torch.equal(next(iter(restored.state.values()))["momentum_buffer"], first)
    assert loaded["training"]["epoch"] == 3


def test_wrapped_models_are_unwrapped(model, config):
    wrapped = torch.nn.DataParallel(model)
    checkpoint = build_checkpoint(wrapped, config)
    assert not any(key.startswith("module.") for key in checkpoint["state_dict"])


def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(1).item()) == first


def test_rng_state_restores_only_the_gpus_this_machine_has(monkeypatch):
    state = capture_rng_state()
    # saved on 2 GPUs
    state["cuda"] = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # resumed on a machine with one
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new, device: restored.append((new[0].item(), device)))
    restore_rng_state(state)
    assert restored == [(1, 0)]


def test_half_precision_inference_copy(tmp_path, model, config):
    model.eval()
    slim = inference_only(build_checkpoint(model, config, training={"epoch": 1}), half=True)
    assert "training" not in slim
    assert all(v.dtype == torch.float16 for v in slim["state_dict"].values() if v.is_floating_point())
    rebuilt = model_from_checkpoint(load_checkpoint(save_checkpoint(slim, tmp_path / "half.pt")))
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-2)


def test_bad_checkpoint_files_are_clear_errors(tmp_path, model, config):
    with pytest.raises(InputFileError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    good = save_checkpoint(build_checkpoint(model, config), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save(model.state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a volseg checkpoint"):
        load_checkpoint(foreign)
    future = build_checkpoint(model, config)
    future["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CheckpointError, match="upgrade volseg"):
        load_checkpoint(save_checkpoint(future, tmp_path / "future.pt"))
    mismatched = build_checkpoint(model, config)
    mismatched["network"]["features"] = [4, 16]
    with pytest.raises(CheckpointError, match="do not fit its network"):
        model_from_checkpoint(load_checkpoint(save_checkpoint(mismatched, tmp_path / "mismatch.pt")))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, model, config, monkeypatch):
    path = save_checkpoint(build_checkpoint(model, config, metrics={"epoch": 1}), tmp_path / "last.pt")

    def full_disk(obj, target):
        open(target, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputError, match="No space left"):
        save_checkpoint(build_checkpoint(model, config, metrics={"epoch": 2}), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["metrics"] == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
