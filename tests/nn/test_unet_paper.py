"""The valid-convolution U-Net against the numbers published with it."""

from __future__ import annotations

import pytest
import torch

from volseg.errors import ConfigError, ShapeError
from volseg.nn import create_model
from volseg.nn.layers import count_parameters


def meta_model(*args, **kwargs):
    """Build on the meta device: shapes and parameter counts without allocating weights."""
    with torch.device("meta"):
        return create_model("unet-paper", *args, **kwargs)


def test_ronneberger_2015_parameter_count_and_tile_sizes():
    model = meta_model(2, 1, 2)
    assert count_parameters(model) == 31_030_658
    assert model.output_shape((572, 572)) == (388, 388)
    assert model.context == 92
    out = model(torch.empty(1, 1, 572, 572, device="meta"))
    assert out.shape == (1, 2, 388, 388)
    assert model.config["variant"] == "ronneberger" and model.config["norm"] is None


def test_cicek_2016_3d_tile_sizes():
    model = meta_model(3, 1, 3)
    assert model.output_shape((132, 132, 116)) == (44, 44, 28)
    out = model(torch.empty(1, 1, 132, 132, 116, device="meta"))
    assert out.shape == (1, 3, 44, 44, 28)
    # Channels double before pooling: 32 then 64 at the first level, 256 then 512 at the bottom.
    first, bottom = model.encoder[0], model.encoder[-1]
    assert (first.conv0.conv.out_channels, first.conv1.conv.out_channels) == (32, 64)
    assert (bottom.conv0.conv.out_channels, bottom.conv1.conv.out_channels) == (256, 512)
    assert isinstance(first.conv0.norm, torch.nn.BatchNorm3d)


def test_output_size_follows_the_hand_calculation():
    # 2 poolings: s -> (s-4)/2 -> ((s-4)/2-4)/2 -> -4 -> *2-4 -> *2-4
    model = create_model("unet-paper", 2, 1, 2, features=[4, 8, 16])
    for size in (44, 60, 92):
        bottom = ((size - 4) // 2 - 4) // 2 - 4
        assert model.axis_output_size(size, 0) == (bottom * 2 - 4) * 2 - 4
    assert model.axis_output_size(45, 0) is None  # 41 is odd at the first pooling


def test_sizes_that_do_not_pool_evenly_name_the_neighbours():
    model = meta_model(2, 1, 2)
    with pytest.raises(ShapeError) as error:
        model.output_shape((573, 572))
    assert "(572, 572)" in str(error.value) and "(588, 572)" in str(error.value)


def test_input_too_small_names_the_smallest_that_works():
    model = meta_model(2, 1, 2)
    with pytest.raises(ShapeError) as error:
        model.output_shape((100, 100))
    assert model.nearest_valid_shape((100, 100), "down") is None
    assert "(188, 188)" in str(error.value)  # the smallest tile: 188 -> 4


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'cicek'"):
        create_model("unet-paper", 3, 1, 2, variant="cicec")
