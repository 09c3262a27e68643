"""The original U-Net with valid (unpadded) convolutions.

Two published variants:

* ``"ronneberger"`` (Ronneberger et al. 2015, the 2D default): two unpadded 3x3
  convolutions + ReLU per level, 2x2 max-pooling, 2x2 up-convolution halving the
  channels, crop-and-concatenate skips, 1x1 head, features 64 -> 1024. With one
  input channel and two classes it has 31,030,658 parameters and maps 572x572 to
  388x388.
* ``"cicek"`` (the 3D U-Net of Cicek et al. 2016, the 3D default): batch norm
  before each ReLU, channels doubled before each pooling (32, 64 | 64, 128 | ...
  up to 512), up-convolutions that keep their channels. 132x132x116 -> 44x44x28.

The output is smaller than the input: :meth:`PaperUNet.output_shape` says by how
much, and :attr:`PaperUNet.context` is the border lost on each side, which the
overlap-tile strategy supplies by mirroring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from volseg.errors import ConfigError, choice_error
from volseg.nn.base import SegmentationNetwork
from volseg.nn.blocks import ConvBlock, DownStep, UpStep, center_crop
from volseg.nn.layers import LayerSpec, activation_slope, initialize_weights, layer_class

VARIANTS = ("ronneberger", "cicek")
_DEFAULT_FEATURES = {"ronneberger": (64, 128, 256, 512, 1024), "cicek": (64, 128, 256, 512)}
_DEFAULT_NORM: dict[str, LayerSpec] = {"ronneberger": None, "cicek": "batch"}
_LOSS_PER_LEVEL = 4  # two unpadded 3x3 convolutions each take 2 voxels off an axis


class PaperUNet(SegmentationNetwork):
    """Valid-convolution U-Net: (N, in_channels, *S) -> (N, num_classes, *S_out), S_out < S.

    Args:
        variant: ``"ronneberger"`` or ``"cicek"``; default by ``spatial_dims`` (2D / 3D).
        features: output channels of each level's convolutions, shallow to deep; the
            number of levels is ``len(features)`` (``len - 1`` poolings).
        norm: layer spec before each activation; default none (2015) or batch (2016).
        act: activation spec.
        init: ``"kaiming"`` or ``"xavier"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        *,
        variant: str | None = None,
        features: Sequence[int] | None = None,
        norm: LayerSpec | str = "default",
        act: LayerSpec = "relu",
        init: str = "kaiming",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        variant = variant or ("ronneberger" if self.spatial_dims == 2 else "cicek")
        if variant not in VARIANTS:
            raise choice_error("unet-paper variant", variant, VARIANTS)
        features = list(features or _DEFAULT_FEATURES[variant])
        if len(features) < 2 or not all(isinstance(f, int) and f >= 2 for f in features):
            raise ConfigError(f"features={features!r} is not valid; give 2 or more channel counts >= 2")
        if norm == "default":
            norm = _DEFAULT_NORM[variant]
        self.variant = variant
        self.resolved_arguments = {"variant": variant, "features": features, "norm": norm}
        self.num_pools = len(features) - 1
        doubles_before_pool = variant == "cicek"
        block_options = dict(num_convs=2, padding="valid", norm=norm, act=act)

        self.encoder = nn.ModuleList()
        self.pool = DownStep(spatial_dims, 1, stride=2, mode="maxpool")
        previous = in_channels
        for channels in features:
            mid = channels // 2 if doubles_before_pool else channels
            self.encoder.append(ConvBlock(spatial_dims, previous, channels, mid_channels=mid, **block_options))
            previous = channels

        self.up_steps = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(self.num_pools):
            coarse, fine = features[level + 1], features[level]
            up_channels = coarse if doubles_before_pool else fine
            self.up_steps.append(UpStep(spatial_dims, coarse, up_channels, scale=2, mode="transpose"))
            self.decoder.append(ConvBlock(spatial_dims, fine + up_channels, fine, **block_options))
        self.head = layer_class("conv", spatial_dims)(features[0], num_classes, 1)
        initialize_weights(self, init, activation_slope(act))

    def axis_output_size(self, size: int, axis: int) -> int | None:
        """Follow one axis through the valid convolutions; None if a pooling meets an odd size."""
        for _ in range(self.num_pools):
            size -= _LOSS_PER_LEVEL
            if size < 2 or size % 2:
                return None
            size //= 2
        size -= _LOSS_PER_LEVEL
        if size < 1:
            return None
        for _ in range(self.num_pools):
            size = 2 * size - _LOSS_PER_LEVEL
        return size if size >= 1 else None

    def size_rule(self) -> str:
        return (
            f"with valid convolutions and {self.num_pools} poolings every pooling must meet an even size "
            f"of at least 2 and the bottleneck more than {_LOSS_PER_LEVEL} voxels"
        )

    @property
    def context(self) -> int:
        """Voxels lost on each side of every axis (92 for the 2015 network)."""
        size = self.nearest_valid_shape((1,) * self.spatial_dims, "up")
        assert size is not None
        return (size[0] - self.axis_output_size(size[0], 0)) // 2  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, *S) -> (N, num_classes, *output_shape(S))."""
        self.check_input(x)
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for level in reversed(range(self.num_pools)):
            x = self.up_steps[level](x)
            skip = center_crop(skips[level], x.shape[2:])
            x = self.decoder[level](torch.cat([skip, x], dim=1))
        return self.head(x)
