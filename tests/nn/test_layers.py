"""Layer tables, layer specs, per-stage expansion and weight initialisation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from volseg.errors import ConfigError, VolsegError
from volseg.nn.layers import (
    check_spatial_dims,
    expand_per_stage,
    initialize_weights,
    layer_class,
    make_activation,
    make_dropout,
    make_norm,
)


@pytest.mark.parametrize("bad", [1, 4, 0, True, "3", None])
def test_unsupported_spatial_dims_name_the_allowed_ones(bad):
    with pytest.raises(ConfigError, match="allowed: 2 or 3") as error:
        check_spatial_dims(bad)
    assert isinstance(error.value, ValueError) and isinstance(error.value, VolsegError)


@pytest.mark.parametrize(
    "kind,two,three",
    [
        ("conv", nn.Conv2d, nn.Conv3d),
        ("conv_transpose", nn.ConvTranspose2d, nn.ConvTranspose3d),
        ("max_pool", nn.MaxPool2d, nn.MaxPool3d),
        ("avg_pool", nn.AvgPool2d, nn.AvgPool3d),
        ("max_unpool", nn.MaxUnpool2d, nn.MaxUnpool3d),
        ("batch_norm", nn.BatchNorm2d, nn.BatchNorm3d),
        ("instance_norm", nn.InstanceNorm2d, nn.InstanceNorm3d),
        ("dropout", nn.Dropout2d, nn.Dropout3d),
    ],
)
def test_layer_tables_pick_the_class_for_each_dimension(kind, two, three):
    assert layer_class(kind, 2) is two
    assert layer_class(kind, 3) is three


def test_norm_specs_build_the_named_layers():
    instance = make_norm("instance", 3, 16)
    assert isinstance(instance, nn.InstanceNorm3d) and instance.affine
    assert isinstance(make_norm("batch", 2, 16), nn.BatchNorm2d)
    group = make_norm(("group", {"num_groups": 8}), 3, 16)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 8
    assert make_norm(("group", {"num_groups": 8}), 3, 12).num_groups == 6  # largest divisor of 12 <= 8
    assert isinstance(make_norm(None, 3, 4), nn.Identity)


def test_specs_survive_json():
    spec = ("leakyrelu", {"negative_slope": 0.2})
    act = make_activation(json.loads(json.dumps(spec)))  # the tuple comes back as a list
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.2


def test_unknown_or_malformed_specs_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'instance'"):
        make_norm("instanse", 3, 8)
    with pytest.raises(ConfigError, match="did you mean 'leakyrelu'"):
        make_activation("leakyrelu2")
    with pytest.raises(ConfigError, match="bad options"):
        make_activation(("relu", {"slope": 1}))
    with pytest.raises(ConfigError, match="not valid"):
        make_norm(("group", 8), 3, 8)
    with pytest.raises(ConfigError, match="dropout"):
        make_dropout(1.5, 3)


def test_expand_per_stage_scalar_flat_and_per_axis():
    assert expand_per_stage(3, 2, 3, "k") == [(3, 3, 3), (3, 3, 3)]
    assert expand_per_stage([1, 2], 2, 2, "s") == [(1, 1), (2, 2)]
    assert expand_per_stage([[1, 1, 1], [1, 2, 2]], 2, 3, "s") == [(1, 1, 1), (1, 2, 2)]
    with pytest.raises(ConfigError, match="3 stages"):
        expand_per_stage([1, 2], 3, 3, "strides")
    with pytest.raises(ConfigError, match="3 positive ints"):
        expand_per_stage([[1, 2]], 1, 3, "strides")


def test_kaiming_and_xavier_give_the_textbook_spread():
    conv = nn.Conv3d(64, 64, 3)
    initialize_weights(conv, "kaiming", negative_slope=0.01)
    fan_in = 64 * 27
    expected = math.sqrt(2.0 / (1 + 0.01**2) / fan_in)
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0
    initialize_weights(conv, "xavier")
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (2 * fan_in)), rel=0.05)
    with pytest.raises(ConfigError, match="kaiming"):
        initialize_weights(conv, "he")
