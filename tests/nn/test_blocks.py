"""Building blocks: shapes, hand-checked values and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from volseg.errors import ConfigError, ShapeError
from volseg.nn.blocks import AttentionGate, ConvBlock, ConvNormAct, DownStep, ResidualBlock, UpStep, center_crop


def test_conv_norm_act_padding_stride_and_bias():
    x = torch.randn(2, 3, 9, 10, 11)
    assert ConvNormAct(3, 3, 5)(x).shape == (2, 5, 9, 10, 11)
    assert ConvNormAct(3, 3, 5, padding="valid")(x).shape == (2, 5, 7, 8, 9)
    assert ConvNormAct(3, 3, 5, stride=(1, 2, 2))(x).shape == (2, 5, 9, 5, 6)
    assert ConvNormAct(3, 3, 5, norm="instance").conv.bias is None  # the norm's shift replaces it
    assert ConvNormAct(3, 3, 5, norm=None).conv.bias is not None
    with pytest.raises(ConfigError, match="did you mean 'same'"):
        ConvNormAct(3, 3, 5, padding="sam")


def test_conv_block_strides_only_its_first_convolution():
    block = ConvBlock(2, 1, 4, num_convs=3, stride=2)
    assert [layer.conv.stride for layer in block] == [(2, 2), (1, 1), (1, 1)]
    assert block(torch.randn(1, 1, 8, 6)).shape == (1, 4, 4, 3)
    with pytest.raises(ConfigError, match="num_convs"):
        ConvBlock(2, 1, 4, num_convs=0)


def test_residual_block_is_relu_of_input_when_its_convolutions_are_zero():
    block = ResidualBlock(2, 4, 4, norm=None, act="relu")
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
    x = torch.randn(2, 4, 6, 6)
    assert isinstance(block.shortcut, nn.Identity)
    assert torch.equal(block(x), torch.relu(x))


def test_residual_block_projects_when_shape_changes():
    block = ResidualBlock(3, 2, 6, stride=(1, 2, 2))
    assert isinstance(block.shortcut, ConvNormAct)
    assert block(torch.randn(1, 2, 4, 8, 8)).shape == (1, 6, 4, 4, 4)


def test_down_step_max_pool_by_hand_and_strided_conv():
    x = torch.tensor([[[[1.0, 2.0, 5.0, 0.0], [3.0, 4.0, 1.0, 7.0]]]])  # (1, 1, 2, 4)
    assert DownStep(2, 1, stride=2)(x).flatten().tolist() == [4.0, 7.0]
    assert DownStep(2, 1, stride=2, mode="avgpool")(x).flatten().tolist() == [2.5, 3.25]
    conv = DownStep(3, 2, stride=(1, 2, 2), mode="conv", out_channels=8)
    assert conv.out_channels == 8
    assert conv(torch.randn(1, 2, 3, 8, 8)).shape == (1, 8, 3, 4, 4)
    with pytest.raises(ConfigError, match="maxpool"):
        DownStep(2, 1, mode="maxpol")


@pytest.mark.parametrize("mode", ["transpose", "interpolate"])
def test_up_step_scales_each_axis(mode):
    up = UpStep(3, 8, 4, scale=(1, 2, 2), mode=mode)
    assert up(torch.randn(1, 8, 3, 4, 5)).shape == (1, 4, 3, 8, 10)


def test_attention_gate_shape_range_and_neutral_value():
    gate = AttentionGate(3, skip_channels=4, gate_channels=8, stride=2)
    skip, coarse = torch.randn(2, 4, 8, 8, 8), torch.randn(2, 8, 4, 4, 4)
    alpha = gate.attention(skip, coarse)
    assert alpha.shape == (2, 1, 8, 8, 8) and alpha.min() >= 0 and alpha.max() <= 1
    nn.init.zeros_(gate.psi.weight)
    nn.init.zeros_(gate.psi.bias)
    assert torch.allclose(gate(skip, coarse), 0.5 * skip)  # sigmoid(0) = 1/2 everywhere


def test_center_crop_by_hand():
    x = torch.arange(5 * 6).reshape(1, 1, 5, 6)
    cropped = center_crop(x, (3, 3))
    assert cropped[0, 0].tolist() == [[7, 8, 9], [13, 14, 15], [19, 20, 21]]
    with pytest.raises(ShapeError, match="cannot centre-crop"):
        center_crop(x, (6, 6))
