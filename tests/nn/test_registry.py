"""The network registry, model configs and TernausNet's VGG11 weights."""

from __future__ import annotations

import json

import pytest
import torch

from volseg.errors import CheckpointError, ConfigError, InputFileError
from volseg.nn import TernausNet, create_model, list_models, register_model
from volseg.nn.layers import count_parameters
from volseg.nn.registry import describe_model
from volseg.nn.ternausnet import VGG11_FEATURE_INDICES


def test_the_six_networks_are_registered():
    assert set(list_models()) >= {"unet", "attention-unet", "unet-paper", "unet++", "segnet", "ternausnet"}


def test_unknown_names_and_arguments_suggest_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'segnet'"):
        create_model("segnett", 2, 1, 2)
    with pytest.raises(ConfigError, match="did you mean 'features'"):
        create_model("unet", 2, 1, 2, featres=[4, 8])


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ConfigError, match="already registered"):
        register_model("unet", TernausNet, "duplicate")


def test_config_holds_every_resolved_argument_as_json():
    model = create_model("attention-unet", 3, 4, 3, features=(4, 8))
    config = json.loads(json.dumps(model.config))
    assert config["name"] == "attention-unet" and config["attention_gates"] is True
    assert config["features"] == [4, 8] and config["norm"] == "batch"
    assert config["spatial_dims"] == 3 and config["in_channels"] == 4 and config["num_classes"] == 3


def test_describe_model_counts_without_allocating():
    real = create_model("segnet", 2, 1, 2, features=[4, 8], num_convs=1)
    described = describe_model("segnet", 2, 1, 2, features=[4, 8], num_convs=1)
    assert described["parameters"] == count_parameters(real)
    assert described["config"] == real.config


def fake_vgg11_state(features=(4, 4, 8, 8, 8)) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's vgg11 keys, for narrow widths."""
    shapes, previous = [], 3
    for channels, count in zip(features, (1, 1, 2, 2, 2)):
        for _ in range(count):
            shapes.append((channels, previous))
            previous = channels
    state = {}
    for index, (out, inp) in zip(VGG11_FEATURE_INDICES, shapes):
        state[f"features.{index}.weight"] = torch.randn(out, inp, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(out)
    state["classifier.0.weight"] = torch.randn(2, 2)  # ignored
    return state


def test_ternausnet_loads_vgg11_weights(tmp_path):
    state = fake_vgg11_state()
    path = tmp_path / "vgg11.pth"
    torch.save(state, path)
    model = create_model("ternausnet", 2, 3, 2, features=[4, 4, 8, 8, 8], encoder_weights=path)
    for conv, index in zip(model.encoder_convs(), VGG11_FEATURE_INDICES):
        assert torch.equal(conv.weight, state[f"features.{index}.weight"])
    assert "encoder_weights" not in model.config  # a checkpoint carries the weights themselves
    grey = create_model("ternausnet", 2, 1, 2, features=[4, 4, 8, 8, 8], encoder_weights=path)
    assert torch.allclose(grey.encoder_convs()[0].weight, state["features.0.weight"].mean(1, keepdim=True))


def test_ternausnet_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(InputFileError, match="no such"):
        create_model("ternausnet", 2, 3, 2, encoder_weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        create_model("ternausnet", 2, 3, 2, features=[4, 4, 8, 8, 8], encoder_weights=junk)
    wrong = tmp_path / "wrong.pth"
    torch.save(fake_vgg11_state(features=(4, 4, 8, 8, 16)), wrong)
    with pytest.raises(CheckpointError, match="has shape"):
        create_model("ternausnet", 2, 3, 2, features=[4, 4, 8, 8, 8], encoder_weights=wrong)
    torch.save(fake_vgg11_state(), wrong)
    with pytest.raises(ConfigError, match="spatial_dims=2"):
        create_model("ternausnet", 3, 3, 2, features=[4, 4, 8, 8, 8], encoder_weights=wrong)
