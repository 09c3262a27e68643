"""The modern padded U-Net (nnU-Net style) and its attention-gated variant.

Stage ``i`` of the encoder works at the input resolution divided by the product of
``strides[: i + 1]``; the decoder mirrors the encoder, each step up-sampling,
concatenating the skip (optionally attention-gated, Oktay et al. 2018) and
convolving. Deep-supervision heads on the coarser decoder stages always exist,
so the same weights load with deep supervision on or off; they are only
returned in training mode with ``deep_supervision=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from volseg.errors import ConfigError, choice_error
from volseg.nn.base import SegmentationNetwork
from volseg.nn.blocks import DOWN_MODES, AttentionGate, ConvBlock, DownStep, ResidualBlock, UpStep
from volseg.nn.layers import LayerSpec, activation_slope, expand_per_stage, initialize_weights, layer_class

DEFAULT_ACT: LayerSpec = ("leakyrelu", {"negative_slope": 0.01})


def normalise_strides(
    strides: int | Sequence[Any] | None, num_stages: int, spatial_dims: int
) -> list[tuple[int, ...]]:
    """Per-stage, per-axis strides; stage 0 always has stride 1.

    Accepts one entry per stage (nnU-Net style, the first all ones) or one per
    down-sampling step (MONAI style, ``num_stages - 1`` entries). ``None`` means 2
    everywhere.
    """
    if strides is None:
        strides = [1] + [2] * (num_stages - 1)
    elif isinstance(strides, int) and not isinstance(strides, bool):
        strides = [1] + [strides] * (num_stages - 1)
    elif isinstance(strides, Sequence) and len(strides) == num_stages - 1:
        strides = [1, *strides]
    expanded = expand_per_stage(strides, num_stages, spatial_dims, "strides")
    if any(s != 1 for s in expanded[0]):
        raise ConfigError(
            f"strides[0]={list(expanded[0])} is not valid: the first stage works at full resolution, "
            "so its stride must be 1 (give one stride per down-sampling step, or a first entry of 1)"
        )
    return expanded


def check_features(features: Sequence[int]) -> list[int]:
    """Per-stage channel counts: two or more positive ints."""
    features = list(features)
    if len(features) < 2 or not all(isinstance(f, int) and f >= 1 for f in features):
        raise ConfigError(f"features={features!r} is not valid; give 2 or more positive channel counts")
    return features


def encoder_stage(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    stride: Sequence[int],
    downsample: str,
    block_type: type[nn.Module] = ConvBlock,
    **block_options: Any,
) -> nn.Module:
    """One encoder stage: (N, in_channels, *S) -> (N, out_channels, *S / stride).

    ``downsample="conv"`` strides the block's first convolution (nnU-Net); ``"maxpool"`` or
    ``"avgpool"`` pools first. Stage 0 (stride 1) is the block alone.
    """
    if downsample not in DOWN_MODES:
        raise choice_error("downsample mode", downsample, DOWN_MODES)
    if downsample == "conv" or all(s == 1 for s in stride):
        return block_type(spatial_dims, in_channels, out_channels, stride=stride, **block_options)
    return nn.Sequential(
        DownStep(spatial_dims, in_channels, stride=stride, mode=downsample),
        block_type(spatial_dims, in_channels, out_channels, **block_options),
    )


def total_strides(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Product of per-stage strides along each axis."""
    total = [1] * len(strides[0])
    for stage in strides:
        total = [t * s for t, s in zip(total, stage)]
    return tuple(total)


class UNet(SegmentationNetwork):
    """Padded U-Net: (N, in_channels, *S) -> (N, num_classes, *S) logits.

    Each spatial axis of S must be a multiple of the product of ``strides`` along it.

    Args:
        features: channels of each stage, e.g. ``(32, 64, 128, 256, 320)``; its length
            sets the number of stages.
        kernel_sizes: an int, one per stage, or per stage and axis.
        strides: down-sampling per stage (see :func:`normalise_strides`), per axis for
            anisotropic data: ``[[1, 1, 1], [1, 2, 2], [2, 2, 2], ...]``.
        num_convs: convolutions per stage.
        norm, act: layer specs (see :mod:`volseg.nn.layers`).
        dropout: channel-dropout probability after each convolution.
        residual: residual blocks instead of plain stacked convolutions.
        downsample: ``"conv"`` (strided first convolution), ``"maxpool"`` or ``"avgpool"``.
        upsample: ``"transpose"`` or ``"interpolate"``.
        attention_gates: gate each skip with the coarser decoder features (Oktay et al.).
        deep_supervision: return ``[full, 1/2, 1/4, ...]`` resolution logits in training.
        gradient_checkpointing: recompute block activations in backward to save memory.
        init: ``"kaiming"`` (He normal) or ``"xavier"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        *,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        kernel_sizes: int | Sequence[Any] = 3,
        strides: int | Sequence[Any] | None = None,
        num_convs: int = 2,
        norm: LayerSpec = "instance",
        act: LayerSpec = DEFAULT_ACT,
        dropout: float = 0.0,
        residual: bool = False,
        downsample: str = "conv",
        upsample: str = "transpose",
        attention_gates: bool = False,
        deep_supervision: bool = False,
        gradient_checkpointing: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        features = check_features(features)
        num_stages = len(features)
        kernels = expand_per_stage(kernel_sizes, num_stages, self.spatial_dims, "kernel_sizes")
        self.strides = normalise_strides(strides, num_stages, self.spatial_dims)
        self.size_divisor = total_strides(self.strides)
        self.deep_supervision = deep_supervision
        self.gradient_checkpointing = gradient_checkpointing
        block_options = dict(num_convs=num_convs, norm=norm, act=act, dropout=dropout)
        block_type = ResidualBlock if residual else ConvBlock

        self.encoder = nn.ModuleList(
            encoder_stage(spatial_dims, in_channels if stage == 0 else features[stage - 1], channels, stride=stride,
                          downsample=downsample, block_type=block_type, kernel_size=kernel, **block_options)
            for stage, (channels, kernel, stride) in enumerate(zip(features, kernels, self.strides))
        )

        # Decoder modules are indexed by the level they produce: level 0 is full resolution.
        self.up_steps = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(num_stages - 1):
            coarse, fine, scale = features[level + 1], features[level], self.strides[level + 1]
            self.up_steps.append(UpStep(spatial_dims, coarse, fine, scale=scale, mode=upsample))
            self.gates.append(AttentionGate(spatial_dims, fine, coarse, stride=scale) if attention_gates else nn.Identity())
            self.decoder.append(block_type(spatial_dims, 2 * fine, fine, kernel_size=kernels[level], **block_options))
        conv = layer_class("conv", spatial_dims)
        # heads[0] is the main head; heads[k] reads decoder level k (deep supervision).
        self.heads = nn.ModuleList(conv(features[level], num_classes, 1) for level in range(num_stages - 1))
        self.attention_gates = attention_gates
        initialize_weights(self, init, activation_slope(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(N, in_channels, *S) -> (N, num_classes, *S); in training with deep supervision
        a list ``[(N, K, *S), (N, K, *S / strides[1]), ...]``, coarsest last."""
        self.check_input(x)
        skips = []
        for block in self.encoder:
            x = self.run_block(block, x)
            skips.append(x)
        outputs: list[torch.Tensor] = []
        for level in reversed(range(len(self.decoder))):
            skip = skips[level]
            if self.attention_gates:
                skip = self.gates[level](skip, x)
            x = self.up_steps[level](x)
            x = self.run_block(self.decoder[level], torch.cat([skip, x], dim=1))
            if level == 0 or (self.training and self.deep_supervision):
                outputs.append(self.heads[level](x))
        return self.select_outputs(outputs[::-1])

