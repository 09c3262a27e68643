"""TernausNet (Iglovikov & Shvets 2018): a U-Net whose encoder is VGG11.

The encoder is VGG11's convolutional part (1, 1, 2, 2, 2 convolutions + ReLU per
stage, 64 -> 512 channels, max-pooling after each); each decoder block is a 3x3
convolution + ReLU and a 3x3 stride-2 transposed convolution + ReLU. The paper
starts from ImageNet weights; those cannot be downloaded here, so the network
takes a local VGG11 state-dict file (``encoder_weights``) and is otherwise He-initialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from volseg.errors import CheckpointError, ConfigError, InputFileError
from volseg.nn.base import SegmentationNetwork
from volseg.nn.blocks import ConvBlock, ConvNormAct
from volseg.nn.layers import initialize_weights, layer_class

VGG11_CONVS_PER_STAGE = (1, 1, 2, 2, 2)
VGG11_FEATURES = (64, 128, 256, 512, 512)
# Where the convolutions sit in torchvision's ``vgg11().features`` (ReLU and pooling between).
VGG11_FEATURE_INDICES = (0, 3, 6, 8, 11, 13, 16, 18)


class DecoderBlock(nn.Sequential):
    """3x3 conv + ReLU, then a 3x3 stride-2 transposed conv + ReLU.

    (N, in_channels, *S) -> (N, out_channels, *2S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(spatial_dims, in_channels, mid_channels, norm=None, act="relu")
        self.up = layer_class("conv_transpose", spatial_dims)(
            mid_channels, out_channels, 3, stride=2, padding=1, output_padding=1
        )
        self.act = nn.ReLU()


class TernausNet(SegmentationNetwork):
    """TernausNet: (N, in_channels, *S) -> (N, num_classes, *S); each axis a multiple of 32.

    Args:
        features: encoder widths, VGG11's ``(64, 128, 256, 512, 512)`` by default; narrower
            widths make a lighter network (without pretrained weights).
        encoder_weights: path to a 2D VGG11 state dict (torchvision's ``vgg11`` keys
            ``features.N.weight``) to start the encoder from. With ``in_channels`` other
            than 3 the first filter is averaged over RGB and repeated.
        init: ``"kaiming"`` or ``"xavier"`` for everything not loaded.
    """

    #: Arguments not stored in the model config: a checkpoint holds the weights themselves.
    config_excludes = ("encoder_weights",)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        *,
        features: Sequence[int] = VGG11_FEATURES,
        encoder_weights: str | Path | None = None,
        init: str = "kaiming",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        features = list(features)
        if len(features) != 5 or not all(isinstance(f, int) and f >= 2 for f in features):
            raise ConfigError(f"features={features!r} is not valid; give 5 channel counts >= 2 (VGG11 has 5 stages)")
        self.size_divisor = (32,) * self.spatial_dims
        self.pool = layer_class("max_pool", spatial_dims)(2, stride=2)
        self.encoder = nn.ModuleList()
        previous = in_channels
        for channels, count in zip(features, VGG11_CONVS_PER_STAGE):
            self.encoder.append(ConvBlock(spatial_dims, previous, channels, num_convs=count, norm=None, act="relu"))
            previous = channels
        self.center = DecoderBlock(spatial_dims, features[4], features[4], features[4] // 2)
        # decoder[s] consumes encoder stage s's skip and produces the resolution of stage s - 1.
        self.decoder = nn.ModuleList()
        incoming = features[4] // 2
        for stage in range(4, 0, -1):
            out = features[stage - 1] // 2
            self.decoder.insert(0, DecoderBlock(spatial_dims, features[stage] + incoming, features[stage], out))
            incoming = out
        self.final_conv = ConvNormAct(spatial_dims, features[0] + incoming, features[0] // 2, norm=None, act="relu")
        self.head = layer_class("conv", spatial_dims)(features[0] // 2, num_classes, 1)
        initialize_weights(self, init)
        if encoder_weights is not None:
            self.load_vgg11(encoder_weights)

    def encoder_convs(self) -> list[nn.Module]:
        """The encoder's convolutions in VGG11 order."""
        return [layer.conv for block in self.encoder for layer in block]

    def load_vgg11(self, path: str | Path) -> None:
        """Load a 2D VGG11 state dict (torchvision layout) into the encoder."""
        path = Path(path)
        if self.spatial_dims != 2:
            raise ConfigError("encoder_weights are 2D VGG11 weights; they need spatial_dims=2")
        if not path.is_file():
            raise InputFileError(f"{path}: no such VGG11 weights file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a bad file
            raise CheckpointError(f"{path}: cannot read VGG11 weights ({type(error).__name__}: {error})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        for conv, index in zip(self.encoder_convs(), VGG11_FEATURE_INDICES):
            weight, bias = state.get(f"features.{index}.weight"), state.get(f"features.{index}.bias")
            if weight is None or bias is None:
                raise CheckpointError(f"{path}: no 'features.{index}.weight/bias'; is it a VGG11 state dict?")
            if index == 0 and weight.shape[1] != self.in_channels:
                weight = weight.mean(dim=1, keepdim=True).repeat(1, self.in_channels, 1, 1)
            if weight.shape != conv.weight.shape:
                raise CheckpointError(
                    f"{path}: features.{index}.weight has shape {tuple(weight.shape)}; "
                    f"this encoder needs {tuple(conv.weight.shape)}"
                )
            with torch.no_grad():
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, *S) -> (N, num_classes, *S)."""
        self.check_input(x)
        skips = []
        for stage, block in enumerate(self.encoder):
            x = block(self.pool(x) if stage else x)
            skips.append(x)
        x = self.center(self.pool(x))
        for stage in range(4, 0, -1):
            x = self.decoder[stage - 1](torch.cat([x, skips[stage]], dim=1))
        x = self.final_conv(torch.cat([x, skips[0]], dim=1))
        return self.head(x)
