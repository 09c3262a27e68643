"""SegNet (Badrinarayanan et al. 2017): the decoder up-samples with the encoder's pooling indices.

Each encoder stage convolves then max-pools, remembering where each maximum came
from; the mirrored decoder stage puts values back at those positions (max-unpooling,
no learned up-sampling) and convolves. No skip features are concatenated, only the
indices travel, which keeps the decoder light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from volseg.errors import ConfigError
from volseg.nn.base import SegmentationNetwork
from volseg.nn.blocks import ConvBlock
from volseg.nn.layers import LayerSpec, activation_slope, expand_per_stage, initialize_weights, layer_class
from volseg.nn.unet import total_strides


class SegNet(SegmentationNetwork):
    """SegNet: (N, in_channels, *S) -> (N, num_classes, *S) logits.

    Args:
        features: channels of each encoder stage; default the VGG16 layout
            ``(64, 128, 256, 512, 512)``.
        num_convs: convolutions per stage, an int or one per stage; default ``(2, 2, 3, 3, 3)``.
        pool_sizes: pooling window (= stride) per stage, an int or per stage and axis.
        norm, act, dropout, init: as :class:`volseg.nn.unet.UNet`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        *,
        features: Sequence[int] = (64, 128, 256, 512, 512),
        num_convs: int | Sequence[int] = (2, 2, 3, 3, 3),
        pool_sizes: int | Sequence[Any] = 2,
        norm: LayerSpec = "batch",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        init: str = "kaiming",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        features = list(features)
        if not features or not all(isinstance(f, int) and f >= 1 for f in features):
            raise ConfigError(f"features={features!r} is not valid; give 1 or more positive channel counts")
        num_stages = len(features)
        convs = [num_convs] * num_stages if isinstance(num_convs, int) else list(num_convs)
        if len(convs) != num_stages or not all(isinstance(n, int) and n >= 1 for n in convs):
            raise ConfigError(
                f"num_convs={num_convs!r} is not valid; give a positive int or one per stage ({num_stages})"
            )
        self.pool_sizes = expand_per_stage(pool_sizes, num_stages, self.spatial_dims, "pool_sizes")
        self.size_divisor = total_strides(self.pool_sizes)
        options = dict(norm=norm, act=act, dropout=dropout)

        pool, unpool = layer_class("max_pool", spatial_dims), layer_class("max_unpool", spatial_dims)
        self.encoder = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.unpools = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for stage, (channels, count, size) in enumerate(zip(features, convs, self.pool_sizes)):
            previous = in_channels if stage == 0 else features[stage - 1]
            self.encoder.append(ConvBlock(spatial_dims, previous, channels, num_convs=count, **options))
            self.pools.append(pool(size, stride=size, return_indices=True))
            self.unpools.append(unpool(size, stride=size))
            # The decoder mirrors the stage: its last convolution maps back to the previous width.
            target = features[max(stage - 1, 0)]
            self.decoder.append(
                ConvBlock(spatial_dims, channels, target, num_convs=count, mid_channels=channels, **options)
            )
        self.head = layer_class("conv", spatial_dims)(features[0], num_classes, 1)
        initialize_weights(self, init, activation_slope(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, *S) -> (N, num_classes, *S)."""
        self.check_input(x)
        trail = []
        for block, pool in zip(self.encoder, self.pools):
            x = block(x)
            size = [int(s) for s in x.shape[2:]]  # plain ints: tracing (ONNX export) fails on tensor sizes
            x, indices = pool(x)
            trail.append((indices, size))
        for stage in reversed(range(len(self.encoder))):
            indices, size = trail[stage]
            x = self.unpools[stage](x, indices, output_size=size)
            x = self.decoder[stage](x)
        return self.head(x)
