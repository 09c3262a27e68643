"""Every registered network, in 2D and 3D, on small odd-sized inputs."""

from __future__ import annotations

import json

import pytest
import torch

from volseg.errors import ShapeError
from volseg.nn import create_model, list_models

# Tiny settings per network; a newly registered network must add its own here.
TINY = {
    "unet": dict(features=[4, 8, 16], deep_supervision=True, dropout=0.1),
    "attention-unet": dict(features=[4, 8, 16], deep_supervision=True),
    "unet++": dict(features=[4, 8, 16], deep_supervision=True),
    "unet-paper": dict(features=[4, 8, 8]),
    "segnet": dict(features=[4, 8, 8], num_convs=[1, 2, 2]),
    "ternausnet": dict(features=[2, 4, 4, 8, 8]),
}
# Odd, unequal sizes; each network gets the nearest shape it accepts, upwards.
ODD_SHAPES = {2: (37, 21), 3: (19, 13, 23)}
DEEP_SUPERVISION = {"unet", "attention-unet", "unet++"}
IN_CHANNELS, NUM_CLASSES, BATCH = 2, 3, 2

CASES = [(name, dims) for name in list_models() for dims in (2, 3)]


def tiny(name: str, dims: int):
    assert name in TINY, f"add tiny test settings for the new network {name!r}"
    return create_model(name, dims, IN_CHANNELS, NUM_CLASSES, **TINY[name])


def tiny_input(model) -> torch.Tensor:
    shape = model.nearest_valid_shape(ODD_SHAPES[model.spatial_dims], "up")
    return torch.randn(BATCH, IN_CHANNELS, *shape)


def as_list(output) -> list[torch.Tensor]:
    return output if isinstance(output, list) else [output]


@pytest.mark.parametrize("name,dims", CASES)
def test_output_shape_matches_output_shape_method(name, dims):
    model = tiny(name, dims).eval()
    x = tiny_input(model)
    with torch.no_grad():
        y = model(x)
    expected = model.output_shape(x.shape[2:])
    assert y.shape == (BATCH, NUM_CLASSES, *expected)
    if name != "unet-paper":  # padded networks keep the input grid
        assert expected == tuple(x.shape[2:])
    else:
        assert all(o < i for o, i in zip(expected, x.shape[2:]))


@pytest.mark.parametrize("name,dims", CASES)
def test_gradients_reach_every_parameter(name, dims):
    model = tiny(name, dims).train()
    outputs = as_list(model(tiny_input(model)))
    # Random weights: a plain sum would give the last norm layer a zero gradient.
    loss = sum((out * torch.randn_like(out)).sum() for out in outputs)
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


@pytest.mark.parametrize("name,dims", CASES)
def test_eval_is_deterministic(name, dims):
    model = tiny(name, dims).eval()
    x = tiny_input(model)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name,dims", CASES)
def test_deep_supervision_outputs_only_in_training(name, dims):
    model = tiny(name, dims)
    x = tiny_input(model)
    with torch.no_grad():
        trained = model.train()(x)
        evaluated = model.eval()(x)
    assert isinstance(evaluated, torch.Tensor)
    if name in DEEP_SUPERVISION:
        assert isinstance(trained, list) and len(trained) == 2  # three stages: main + one extra head
        assert trained[0].shape == evaluated.shape
    else:
        assert isinstance(trained, torch.Tensor)


@pytest.mark.parametrize("name,dims", CASES)
def test_state_dict_round_trip_through_config(name, dims):
    model = tiny(name, dims).eval()
    config = json.loads(json.dumps(model.config))  # what a checkpoint stores
    torch.manual_seed(123)
    rebuilt = create_model(**config).eval()
    x = tiny_input(model)
    with torch.no_grad():
        assert not torch.equal(model(x), rebuilt(x))  # different random weights
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        assert torch.equal(model(x), rebuilt(x))
    assert rebuilt.config == config


@pytest.mark.parametrize("name,dims", CASES)
def test_wrong_rank_and_channels_are_clear_errors(name, dims):
    model = tiny(name, dims)
    x = tiny_input(model)
    with pytest.raises(ShapeError, match="dimensions"):
        model(x[0])
    with pytest.raises(ShapeError, match=f"takes {IN_CHANNELS}"):
        model(torch.cat([x, x], dim=1))


@pytest.mark.parametrize("name,dims", CASES)
def test_size_that_cannot_pass_names_sizes_that_work(name, dims):
    model = tiny(name, dims)
    good = model.nearest_valid_shape(ODD_SHAPES[dims], "up")
    bad = (good[0] + 1, *good[1:])
    with pytest.raises(ShapeError, match="nearest sizes that work") as error:
        model(torch.randn(1, IN_CHANNELS, *bad))
    assert str(good) in str(error.value)
    assert not model.is_valid_input_shape(bad)
    assert model.is_valid_input_shape(good)
