"""Options of the padded U-Net and UNet++: anisotropic strides, residual, checkpointing, deep supervision."""

from __future__ import annotations

import pytest
import torch

from volseg.errors import ConfigError, ShapeError
from volseg.nn import ResidualBlock, create_model

ANISOTROPIC = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]


def test_anisotropic_strides_set_the_size_rule_per_axis():
    model = create_model("unet", 3, 1, 2, features=[4, 8, 16], strides=ANISOTROPIC)
    assert model.size_divisor == (2, 4, 4)
    assert model(torch.randn(1, 1, 6, 8, 12)).shape == (1, 2, 6, 8, 12)
    with pytest.raises(ShapeError, match=r"\(4, 8, 12\) or \(6, 8, 12\)"):
        model(torch.randn(1, 1, 5, 8, 12))


def test_deep_supervision_shapes_follow_the_strides():
    model = create_model(
        "unet",
        3,
        1,
        2,
        features=[4, 8, 16, 16],
        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        deep_supervision=True,
    ).train()
    outputs = model(torch.randn(1, 1, 8, 16, 16))
    assert [tuple(o.shape[2:]) for o in outputs] == [(8, 16, 16), (8, 8, 8), (4, 4, 4)]


def test_monai_style_strides_equal_nnunet_style():
    short = create_model("unet", 2, 1, 2, features=[4, 8, 16], strides=[2, [1, 2]])
    full = create_model("unet", 2, 1, 2, features=[4, 8, 16], strides=[1, 2, [1, 2]])
    assert short.strides == full.strides == [(1, 1), (2, 2), (1, 2)]
    with pytest.raises(ConfigError, match="stride must be 1"):
        create_model("unet", 2, 1, 2, features=[4, 8, 16], strides=[2, 2, 2])


@pytest.mark.parametrize(
    "options",
    [
        dict(residual=True),
        dict(downsample="maxpool", upsample="interpolate"),
        dict(downsample="avgpool", norm=("group", {"num_groups": 2}), act="gelu"),
        dict(kernel_sizes=[[1, 3, 3], 3, 3], init="xavier"),
    ],
)
def test_unet_options_build_and_run(options):
    model = create_model("unet", 3, 2, 3, features=[4, 8, 16], **options)
    assert model(torch.randn(2, 2, 4, 8, 8)).shape == (2, 3, 4, 8, 8)
    if options.get("residual"):
        assert any(isinstance(m, ResidualBlock) for m in model.modules())


@pytest.mark.parametrize("name", ["unet", "unet++"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    plain = create_model(name, 3, 1, 2, features=[4, 8, 16], deep_supervision=True)
    checkpointed = create_model(name, 3, 1, 2, features=[4, 8, 16], deep_supervision=True, gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 8, 8, 8)
    for model in (plain, checkpointed):
        sum(o.square().mean() for o in model.train()(x)).backward()
    for (name_a, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name_a


def test_unetpp_deep_supervision_heads_are_all_full_resolution():
    model = create_model("unet++", 2, 1, 2, features=[4, 8, 16, 32], deep_supervision=True).train()
    outputs = model(torch.randn(1, 1, 16, 24))
    assert len(outputs) == 3 and all(o.shape == (1, 2, 16, 24) for o in outputs)


def test_dropout_is_active_only_in_training():
    model = create_model("unet", 2, 1, 2, features=[4, 8], dropout=0.5)
    x = torch.randn(1, 1, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_bad_features_are_config_errors():
    with pytest.raises(ConfigError, match="features"):
        create_model("unet", 3, 1, 2, features=[8])
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("unet", 3, 0, 2)
