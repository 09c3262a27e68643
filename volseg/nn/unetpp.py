"""UNet++ (Zhou et al. 2018): a U-Net whose skips are nested, densely connected decoders.

Node ``X[i][j]`` (level ``i``, column ``j``) convolves the concatenation of every
earlier node on its level, ``X[i][0..j-1]``, with the up-sampled ``X[i+1][j-1]``.
Column 0 is the encoder. Every ``X[0][j]`` (j >= 1) has a full-resolution head;
the deepest, ``X[0][L]``, is the main output, and with deep supervision all heads
are returned in training mode (main first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from volseg.nn.base import SegmentationNetwork
from volseg.nn.blocks import ConvBlock, UpStep
from volseg.nn.layers import LayerSpec, activation_slope, initialize_weights, layer_class
from volseg.nn.unet import DEFAULT_ACT, check_features, encoder_stage, normalise_strides, total_strides


class UNetPlusPlus(SegmentationNetwork):
    """UNet++: (N, in_channels, *S) -> (N, num_classes, *S) logits.

    Arguments as :class:`volseg.nn.unet.UNet` (``features``, ``strides`` per stage and
    axis, ``num_convs``, ``norm``, ``act``, ``dropout``, ``downsample``, ``upsample``,
    ``deep_supervision``, ``gradient_checkpointing``, ``init``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        *,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        strides: int | Sequence[Any] | None = None,
        num_convs: int = 2,
        norm: LayerSpec = "instance",
        act: LayerSpec = DEFAULT_ACT,
        dropout: float = 0.0,
        downsample: str = "conv",
        upsample: str = "transpose",
        deep_supervision: bool = False,
        gradient_checkpointing: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        features = check_features(features)
        self.depth = len(features) - 1
        self.strides = normalise_strides(strides, len(features), self.spatial_dims)
        self.size_divisor = total_strides(self.strides)
        self.deep_supervision = deep_supervision
        self.gradient_checkpointing = gradient_checkpointing
        block_options = dict(num_convs=num_convs, norm=norm, act=act, dropout=dropout)

        # nodes[i][j] is X[i][j]; ups[i][j] up-samples X[i+1][j] to level i.
        self.nodes = nn.ModuleList()
        self.ups = nn.ModuleList()
        for level, channels in enumerate(features):
            previous = in_channels if level == 0 else features[level - 1]
            row = nn.ModuleList(
                [
                    encoder_stage(
                        spatial_dims,
                        previous,
                        channels,
                        stride=self.strides[level],
                        downsample=downsample,
                        **block_options,
                    )
                ]
            )
            for column in range(1, self.depth - level + 1):
                row.append(ConvBlock(spatial_dims, (column + 1) * channels, channels, **block_options))
            self.nodes.append(row)
            if level < self.depth:
                self.ups.append(
                    nn.ModuleList(
                        UpStep(
                            spatial_dims, features[level + 1], channels, scale=self.strides[level + 1], mode=upsample
                        )
                        for _ in range(self.depth - level)
                    )
                )
        conv = layer_class("conv", spatial_dims)
        # heads[j - 1] reads X[0][j].
        self.heads = nn.ModuleList(conv(features[0], num_classes, 1) for _ in range(self.depth))
        initialize_weights(self, init, activation_slope(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(N, in_channels, *S) -> (N, num_classes, *S); a list of ``depth`` such tensors
        (deepest column first) in training with deep supervision."""
        self.check_input(x)
        grid: list[list[torch.Tensor]] = []
        for level in range(self.depth + 1):
            x = self.run_block(self.nodes[level][0], x)
            grid.append([x])
        # Fill the nodes anti-diagonal by anti-diagonal: X[i][j] needs X[i+1][j-1].
        for column in range(1, self.depth + 1):
            for level in range(self.depth - column + 1):
                upsampled = self.ups[level][column - 1](grid[level + 1][column - 1])
                node = self.nodes[level][column]
                grid[level].append(self.run_block(node, torch.cat([*grid[level], upsampled], dim=1)))
        if self.training and self.deep_supervision:
            columns = range(self.depth, 0, -1)
        else:
            columns = range(self.depth, self.depth - 1, -1)
        return self.select_outputs([self.heads[j - 1](grid[0][j]) for j in columns])
