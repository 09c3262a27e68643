"""Dimension-generic building blocks shared by the networks.

Shapes use N for batch, C for channels and S for the 2 or 3 spatial axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from volseg.errors import ConfigError, ShapeError, choice_error
from volseg.nn.layers import (
    LayerSpec,
    check_spatial_dims,
    interpolation_mode,
    layer_class,
    make_activation,
    make_dropout,
    make_norm,
    parse_spec,
    same_padding,
)

IntOrAxes = int | Sequence[int]

PADDING_MODES = ("same", "valid")


def as_axes(value: IntOrAxes, spatial_dims: int, name: str = "size") -> tuple[int, ...]:
    """``3`` -> ``(3, 3, 3)`` in 3D; a sequence must have one positive int per axis."""
    axes = (value,) * spatial_dims if isinstance(value, int) else tuple(value)
    if len(axes) != spatial_dims or not all(isinstance(a, int) and a >= 1 for a in axes):
        raise ConfigError(f"{name}={value!r} is not valid; use a positive int or {spatial_dims} of them")
    return axes


class ConvNormAct(nn.Sequential):
    """Convolution, optional channel dropout, normalisation and activation.

    (N, in_channels, *S) -> (N, out_channels, *S / stride); with ``padding="valid"``
    each axis also shrinks by ``kernel_size - 1``. The convolution has no bias when a
    norm layer follows (the norm's shift makes it redundant).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: IntOrAxes = 3,
        stride: IntOrAxes = 1,
        padding: str = "same",
        norm: LayerSpec = "instance",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
    ) -> None:
        spatial_dims = check_spatial_dims(spatial_dims)
        kernel = as_axes(kernel_size, spatial_dims, "kernel_size")
        if padding not in PADDING_MODES:
            raise choice_error("padding", padding, PADDING_MODES)
        pad = same_padding(kernel) if padding == "same" else 0
        has_norm = parse_spec(norm, "norm")[0] not in ("none", "identity")
        conv = layer_class("conv", spatial_dims)(
            in_channels,
            out_channels,
            kernel,
            stride=as_axes(stride, spatial_dims, "stride"),
            padding=pad,
            bias=not has_norm,
        )
        super().__init__()
        self.conv = conv
        self.dropout = make_dropout(dropout, spatial_dims)
        self.norm = make_norm(norm, spatial_dims, out_channels)
        self.act = make_activation(act)


class ConvBlock(nn.Sequential):
    """``num_convs`` stacked :class:`ConvNormAct`; only the first has ``stride``.

    (N, in_channels, *S) -> (N, out_channels, *S / stride).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        num_convs: int = 2,
        kernel_size: IntOrAxes = 3,
        stride: IntOrAxes = 1,
        padding: str = "same",
        norm: LayerSpec = "instance",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
        mid_channels: int | None = None,
    ) -> None:
        if num_convs < 1:
            raise ConfigError(f"num_convs={num_convs!r} is not valid; allowed: 1 or more")
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        channels = [in_channels] + [mid] * (num_convs - 1) + [out_channels]
        for index in range(num_convs):
            self.add_module(
                f"conv{index}",
                ConvNormAct(
                    spatial_dims,
                    channels[index],
                    channels[index + 1],
                    kernel_size=kernel_size,
                    stride=stride if index == 0 else 1,
                    padding=padding,
                    norm=norm,
                    act=act,
                    dropout=dropout,
                ),
            )


class ResidualBlock(nn.Module):
    """Stacked convolutions with an identity (or 1x1 projection) shortcut.

    ``act(convs(x) + shortcut(x))``, the last convolution without activation, as in
    He et al. 2016. (N, in_channels, *S) -> (N, out_channels, *S / stride).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        num_convs: int = 2,
        kernel_size: IntOrAxes = 3,
        stride: IntOrAxes = 1,
        norm: LayerSpec = "instance",
        act: LayerSpec = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        stride_axes = as_axes(stride, spatial_dims, "stride")
        self.convs = ConvBlock(
            spatial_dims,
            in_channels,
            out_channels,
            num_convs=num_convs,
            kernel_size=kernel_size,
            stride=stride_axes,
            norm=norm,
            act=act,
            dropout=dropout,
        )
        last = getattr(self.convs, f"conv{num_convs - 1}")
        last.act = nn.Identity()
        if in_channels == out_channels and all(s == 1 for s in stride_axes):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = ConvNormAct(
                spatial_dims, in_channels, out_channels, kernel_size=1, stride=stride_axes, norm=norm, act=None
            )
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.shortcut(x))


DOWN_MODES = ("maxpool", "avgpool", "conv")


class DownStep(nn.Module):
    """Down-sampling by ``stride`` per axis: max or average pooling, or a strided 3x3 conv.

    (N, C, *S) -> (N, C', *S / stride), where C' = C for pooling and ``out_channels``
    (default C) for the strided convolution.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        stride: IntOrAxes = 2,
        mode: str = "maxpool",
        out_channels: int | None = None,
        norm: LayerSpec = "instance",
        act: LayerSpec = "relu",
    ) -> None:
        super().__init__()
        stride_axes = as_axes(stride, spatial_dims, "stride")
        if mode not in DOWN_MODES:
            raise choice_error("down-sampling mode", mode, DOWN_MODES)
        self.out_channels = in_channels if out_channels is None or mode != "conv" else out_channels
        if mode == "conv":
            self.down: nn.Module = ConvNormAct(
                spatial_dims, in_channels, self.out_channels, stride=stride_axes, norm=norm, act=act
            )
        else:
            pool = layer_class("max_pool" if mode == "maxpool" else "avg_pool", spatial_dims)
            self.down = pool(kernel_size=stride_axes, stride=stride_axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


UP_MODES = ("transpose", "interpolate")


class UpStep(nn.Module):
    """Up-sampling by ``scale`` per axis: transposed convolution (kernel = stride = scale),
    or linear interpolation followed by a ``kernel_size`` convolution.

    (N, in_channels, *S) -> (N, out_channels, *S * scale).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        scale: IntOrAxes = 2,
        mode: str = "transpose",
        kernel_size: IntOrAxes = 1,
    ) -> None:
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        scale_axes = as_axes(scale, spatial_dims, "scale")
        if mode not in UP_MODES:
            raise choice_error("up-sampling mode", mode, UP_MODES)
        if mode == "transpose":
            self.up: nn.Module = layer_class("conv_transpose", spatial_dims)(
                in_channels, out_channels, scale_axes, stride=scale_axes
            )
        else:
            kernel = as_axes(kernel_size, spatial_dims, "kernel_size")
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=tuple(float(s) for s in scale_axes), mode=interpolation_mode(spatial_dims)),
                layer_class("conv", spatial_dims)(in_channels, out_channels, kernel, padding=same_padding(kernel)),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018).

    ``skip`` (N, C_skip, *S) is weighted voxel-wise by
    ``alpha = sigmoid(psi(relu(W_x skip + W_g gate)))``, computed on the grid of
    ``gate`` (N, C_gate, *S / stride) and resized back to S. Returns the gated skip,
    same shape as ``skip``.
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        gate_channels: int,
        *,
        stride: IntOrAxes = 2,
        inter_channels: int | None = None,
    ) -> None:
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        stride_axes = as_axes(stride, spatial_dims, "stride")
        inter = inter_channels or max(skip_channels // 2, 1)
        conv = layer_class("conv", spatial_dims)
        self.theta_skip = conv(skip_channels, inter, stride_axes, stride=stride_axes, bias=False)
        self.phi_gate = conv(gate_channels, inter, 1)
        self.psi = conv(inter, 1, 1)

    def attention(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The attention coefficients (N, 1, *S) in [0, 1]."""
        theta = self.theta_skip(skip)
        phi = nn.functional.interpolate(
            self.phi_gate(gate), size=theta.shape[2:], mode=interpolation_mode(skip.ndim - 2), align_corners=False
        )
        coarse = torch.sigmoid(self.psi(torch.relu(theta + phi)))
        return nn.functional.interpolate(
            coarse, size=skip.shape[2:], mode=interpolation_mode(skip.ndim - 2), align_corners=False
        )

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.attention(skip, gate)


def center_crop(tensor: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Crop (N, C, *S) to (N, C, *spatial_shape) around the centre.

    When S - spatial_shape is odd on an axis, the extra voxel comes off the end.
    """
    current = tensor.shape[2:]
    if len(spatial_shape) != len(current) or any(t > c for t, c in zip(spatial_shape, current)):
        raise ShapeError(f"cannot centre-crop spatial shape {tuple(current)} to {tuple(spatial_shape)}")
    slices = [slice(None), slice(None)]
    for size, target in zip(current, spatial_shape):
        start = (size - target) // 2
        slices.append(slice(start, start + target))
    return tensor[tuple(slices)]
