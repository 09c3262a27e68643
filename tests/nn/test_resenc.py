"""The residual-encoder U-Net (nnU-Net ResEnc): residual, encoder_blocks and decoder_convs of ``unet``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from volseg.errors import ConfigError
from volseg.nn import ConvBlock, ResidualBlock, create_model

RESENC = dict(features=[4, 8, 8], residual="encoder", encoder_blocks=[1, 2, 3], decoder_convs=1)

# UNet's module tree before these options existed: checkpoints depend on these names.
DEFAULT_KEYS = [
    "encoder.0.conv0.conv.weight", "encoder.0.conv0.norm.weight", "encoder.0.conv0.norm.bias",
    "encoder.0.conv1.conv.weight", "encoder.0.conv1.norm.weight", "encoder.0.conv1.norm.bias",
    "encoder.1.conv0.conv.weight", "encoder.1.conv0.norm.weight", "encoder.1.conv0.norm.bias",
    "encoder.1.conv1.conv.weight", "encoder.1.conv1.norm.weight", "encoder.1.conv1.norm.bias",
    "up_steps.0.up.weight", "up_steps.0.up.bias",
    "decoder.0.conv0.conv.weight", "decoder.0.conv0.norm.weight", "decoder.0.conv0.norm.bias",
    "decoder.0.conv1.conv.weight", "decoder.0.conv1.norm.weight", "decoder.0.conv1.norm.bias",
    "heads.0.weight", "heads.0.bias",
]  # fmt: skip


def convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]


@pytest.mark.parametrize("spatial_dims, size", [(2, (8, 12)), (3, (4, 8, 8))])
def test_resenc_deep_supervision_shapes(spatial_dims, size):
    model = create_model("unet", spatial_dims, 2, 3, deep_supervision=True, **RESENC).train()
    outputs = model(torch.randn(2, 2, *size))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *size), (2, 3, *(s // 2 for s in size))]
    assert model.eval()(torch.randn(1, 2, *size)).shape == (1, 3, *size)


def test_encoder_stacks_residual_blocks_and_only_the_first_strides():
    model = create_model("unet", 3, 1, 2, **RESENC)
    for stage, count in zip(model.encoder, [1, 2, 3]):
        blocks = [m for m in stage.modules() if isinstance(m, ResidualBlock)]
        assert len(blocks) == count
        strides = [tuple(c.stride) for block in blocks for c in convs(block.convs)]
        assert all(s == (1, 1, 1) for s in strides[1:])
    assert tuple(convs(model.encoder[2])[0].stride) == (2, 2, 2)


def test_decoder_is_plain_with_decoder_convs_convolutions():
    model = create_model("unet", 3, 1, 2, **RESENC)
    assert not any(isinstance(m, ResidualBlock) for m in model.decoder.modules())
    assert all(isinstance(block, ConvBlock) and len(convs(block)) == 1 for block in model.decoder)
    everywhere = create_model("unet", 3, 1, 2, features=[4, 8], residual=True, decoder_convs=3)
    assert isinstance(everywhere.decoder[0], ResidualBlock) and len(convs(everywhere.decoder[0].convs)) == 3


def test_pooling_encoder_pools_once_before_its_blocks():
    model = create_model("unet", 2, 1, 2, features=[4, 8], downsample="maxpool", residual="encoder", encoder_blocks=2)
    stage = model.encoder[1]
    assert isinstance(stage[0].down, nn.MaxPool2d) and [type(m) for m in stage[1:]] == [ResidualBlock] * 2
    assert all(tuple(c.stride) == (1, 1) for c in convs(stage))


def test_defaults_build_the_module_tree_checkpoints_were_saved_with():
    default = create_model("unet", 2, 1, 2, features=[4, 8])
    explicit = create_model("unet", 2, 1, 2, features=[4, 8], residual=False, encoder_blocks=[1, 1], decoder_convs=2)
    assert list(default.state_dict()) == list(explicit.state_dict()) == DEFAULT_KEYS
    assert default.config["decoder_convs"] == default.config["num_convs"] == 2


def test_config_rebuilds_the_same_resenc():
    model = create_model("unet", 3, 1, 2, **RESENC)
    config = dict(model.config)
    rebuilt = create_model(**config)
    assert list(rebuilt.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(residual="enc"), r"residual='enc' is not valid; allowed: false .* or 'encoder'"),
        (dict(residual=1), r"residual=1 is not valid"),
        (dict(encoder_blocks=[1, 2]), r"encoder_blocks=\[1, 2\] has 2 entries; this network has 3 stages"),
        (dict(encoder_blocks=0), r"encoder_blocks=0 is not valid; allowed: an int >= 1 or a list of 3 ints >= 1"),
        (dict(encoder_blocks=[1, 0, 2]), r"encoder_blocks=\[1, 0, 2\] is not valid"),
        (dict(encoder_blocks="3"), r"encoder_blocks='3' is not valid"),
        (dict(decoder_convs=0), r"decoder_convs=0 is not valid; allowed: an int >= 1"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as error:
        create_model("unet", 3, 1, 2, features=[4, 8, 8], **options)
    assert "\n" not in str(error.value)


def test_one_training_step_reaches_and_updates_every_parameter():
    torch.manual_seed(0)
    model = create_model("unet", 3, 1, 2, deep_supervision=True, **RESENC).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sum(o.square().mean() for o in model(torch.randn(2, 1, 4, 8, 8))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    optimizer.step()
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())
