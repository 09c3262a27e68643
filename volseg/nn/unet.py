"""The modern padded U-Net (nnU-Net style) and its attention-gated variant.

Stage ``i`` of the encoder works at the input resolution divided by the product of
``strides[: i + 1]``; the decoder mirrors the encoder, each step up-sampling,
concatenating the skip (optionally attention-gated, Oktay et al. 2018) and
convolving. With ``residual="encoder"`` and several ``encoder_blocks`` per stage it
is nnU-Net's residual-encoder U-Net (ResEnc): stacks of residual blocks down, one
plain convolution block per stage up. Deep-supervision heads on the coarser decoder
stages always exist, so the same weights load with deep supervision on or off; they
are only returned in training mode with ``deep_supervision=True``.
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


def normalise_strides(strides: int | Sequence[Any] | None, num_stages: int, spatial_dims: int) -> list[tuple[int, ...]]:
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


def check_residual(residual: bool | str) -> bool | str:
    """``residual`` if it is False, True or ``"encoder"``, else a ``ConfigError``."""
    if isinstance(residual, bool) or residual == "encoder":
        return residual
    raise ConfigError(
        f"residual={residual!r} is not valid; allowed: false (plain), true (residual blocks everywhere) "
        "or 'encoder' (residual encoder, plain decoder)"
    )


def blocks_per_stage(encoder_blocks: int | Sequence[int], num_stages: int) -> list[int]:
    """One block count per encoder stage, from an int or a list of ``num_stages`` ints >= 1."""
    if isinstance(encoder_blocks, int) and not isinstance(encoder_blocks, bool):
        counts = [encoder_blocks] * num_stages
    elif isinstance(encoder_blocks, Sequence) and not isinstance(encoder_blocks, str):
        counts = list(encoder_blocks)
    else:
        counts = [0]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts):
        raise ConfigError(
            f"encoder_blocks={encoder_blocks!r} is not valid; allowed: an int >= 1 or a list of "
            f"{num_stages} ints >= 1, one per stage"
        )
    if len(counts) != num_stages:
        raise ConfigError(
            f"encoder_blocks={encoder_blocks!r} has {len(counts)} entries; this network has {num_stages} "
            "stages (one per entry of features)"
        )
    return counts


def encoder_stage(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    stride: Sequence[int],
    downsample: str,
    block_type: type[nn.Module] = ConvBlock,
    num_blocks: int = 1,
    **block_options: Any,
) -> nn.Module:
    """One encoder stage: (N, in_channels, *S) -> (N, out_channels, *S / stride).

    ``num_blocks`` blocks in a row; only the first changes size and channels.
    ``downsample="conv"`` strides the first block's first convolution (nnU-Net); ``"maxpool"``
    or ``"avgpool"`` pools first. One block without pooling is the block alone.
    """
    if downsample not in DOWN_MODES:
        raise choice_error("downsample mode", downsample, DOWN_MODES)
    pooled = downsample != "conv" and any(s != 1 for s in stride)
    layers: list[nn.Module] = [DownStep(spatial_dims, in_channels, stride=stride, mode=downsample)] if pooled else []
    layers.append(block_type(spatial_dims, in_channels, out_channels, stride=1 if pooled else stride, **block_options))
    layers += [block_type(spatial_dims, out_channels, out_channels, **block_options) for _ in range(num_blocks - 1)]
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


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
        num_convs: convolutions per encoder block (and per decoder block unless
            ``decoder_convs`` is given).
        norm, act: layer specs (see :mod:`volseg.nn.layers`).
        dropout: channel-dropout probability after each convolution.
        residual: ``False`` plain convolution blocks; ``True`` residual blocks in encoder
            and decoder; ``"encoder"`` residual encoder, plain decoder (nnU-Net ResEnc).
        encoder_blocks: blocks stacked in each encoder stage, an int or one per stage
            (ResEnc M/L: ``[1, 3, 4, 6, 6, 6, ...]``); only the first block strides.
        decoder_convs: convolutions per decoder block (ResEnc: 1); default ``num_convs``.
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
        residual: bool | str = False,
        encoder_blocks: int | Sequence[int] = 1,
        decoder_convs: int | None = None,
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
        residual = check_residual(residual)
        stage_blocks = blocks_per_stage(encoder_blocks, num_stages)
        if decoder_convs is None:
            decoder_convs = self.resolved_arguments["decoder_convs"] = num_convs
        elif isinstance(decoder_convs, bool) or not isinstance(decoder_convs, int) or decoder_convs < 1:
            raise ConfigError(f"decoder_convs={decoder_convs!r} is not valid; allowed: an int >= 1 (null: num_convs)")
        options = dict(norm=norm, act=act, dropout=dropout)
        encoder_type = ResidualBlock if residual else ConvBlock
        decoder_type = ResidualBlock if residual is True else ConvBlock

        stages = zip(features, kernels, self.strides, stage_blocks)
        self.encoder = nn.ModuleList(
            encoder_stage(
                spatial_dims,
                in_channels if stage == 0 else features[stage - 1],
                channels,
                stride=stride,
                downsample=downsample,
                block_type=encoder_type,
                num_blocks=blocks,
                kernel_size=kernel,
                num_convs=num_convs,
                **options,
            )
            for stage, (channels, kernel, stride, blocks) in enumerate(stages)
        )

        # Decoder modules are indexed by the level they produce: level 0 is full resolution.
        self.up_steps = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(num_stages - 1):
            coarse, fine, scale = features[level + 1], features[level], self.strides[level + 1]
            self.up_steps.append(UpStep(spatial_dims, coarse, fine, scale=scale, mode=upsample))
            self.gates.append(
                AttentionGate(spatial_dims, fine, coarse, stride=scale) if attention_gates else nn.Identity()
            )
            self.decoder.append(
                decoder_type(
                    spatial_dims, 2 * fine, fine, kernel_size=kernels[level], num_convs=decoder_convs, **options
                )
            )
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
