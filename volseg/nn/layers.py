"""Per-dimension layer tables and JSON-able layer specs.

Every network in :mod:`volseg.nn` takes ``spatial_dims`` (2 or 3) and picks its
layer classes from the tables here, so one class serves 2D and 3D.

A *layer spec* names a layer and its options in a form that survives JSON (and so
a checkpoint): ``"instance"``, ``("group", {"num_groups": 8})``, ``"relu"``,
``("leakyrelu", {"negative_slope": 0.01})`` or ``None`` for no layer. JSON turns
the tuple into a list; both are accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import nn

from volseg.errors import ConfigError, choice_error

SUPPORTED_SPATIAL_DIMS = (2, 3)

LayerSpec = Union[None, str, Sequence[Any]]

_LAYER_TABLES: dict[str, dict[int, type[nn.Module]]] = {
    "conv": {2: nn.Conv2d, 3: nn.Conv3d},
    "conv_transpose": {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d},
    "max_pool": {2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "avg_pool": {2: nn.AvgPool2d, 3: nn.AvgPool3d},
    "max_unpool": {2: nn.MaxUnpool2d, 3: nn.MaxUnpool3d},
    "batch_norm": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance_norm": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
    "dropout": {2: nn.Dropout2d, 3: nn.Dropout3d},
}

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}

_NORMS = ("batch", "instance", "group")
_NONE_NAMES = ("none", "identity")


def check_spatial_dims(spatial_dims: object) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise a ``ConfigError`` naming both."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SUPPORTED_SPATIAL_DIMS:
        raise ConfigError(
            f"spatial_dims={spatial_dims!r} is not supported; allowed: "
            + " or ".join(str(d) for d in SUPPORTED_SPATIAL_DIMS)
        )
    return int(spatial_dims)  # type: ignore[arg-type]


def layer_class(kind: str, spatial_dims: int) -> type[nn.Module]:
    """The ``nn.Module`` class of ``kind`` (``"conv"``, ``"max_pool"``, ...) for 2D or 3D."""
    if kind not in _LAYER_TABLES:
        raise choice_error("layer kind", kind, _LAYER_TABLES)
    return _LAYER_TABLES[kind][check_spatial_dims(spatial_dims)]


def parse_spec(spec: LayerSpec, what: str) -> tuple[str, dict[str, Any]]:
    """Split a layer spec into ``(lower-case name, options)``; ``None`` becomes ``"none"``."""
    if spec is None:
        return "none", {}
    if isinstance(spec, str):
        return spec.lower(), {}
    if isinstance(spec, Sequence) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return spec[0].lower(), dict(spec[1])
    raise ConfigError(
        f"{what} spec {spec!r} is not valid; use a name such as 'relu' or a pair "
        f"(name, {{options}}) such as ('leakyrelu', {{'negative_slope': 0.01}})"
    )


def _build(cls: type[nn.Module], options: dict[str, Any], what: str, *args: Any) -> nn.Module:
    try:
        return cls(*args, **options)
    except TypeError as error:  # an option the layer does not take
        raise ConfigError(f"bad options {options!r} for {what} {cls.__name__}: {error}") from None


def make_norm(spec: LayerSpec, spatial_dims: int, num_channels: int) -> nn.Module:
    """A normalisation layer over ``num_channels`` channels; ``None`` gives ``nn.Identity``.

    Instance norm is affine by default (learned scale and shift), as nnU-Net uses it.
    Group norm defaults to 8 groups, fewer where ``num_channels`` is not divisible.
    """
    name, options = parse_spec(spec, "norm")
    if name in _NONE_NAMES:
        return nn.Identity()
    if name == "batch":
        return _build(layer_class("batch_norm", spatial_dims), options, "norm", num_channels)
    if name == "instance":
        options.setdefault("affine", True)
        return _build(layer_class("instance_norm", spatial_dims), options, "norm", num_channels)
    if name == "group":
        num_groups = options.pop("num_groups", 8)
        if num_channels % num_groups:
            num_groups = _largest_divisor_at_most(num_channels, num_groups)
        return _build(nn.GroupNorm, options, "norm", num_groups, num_channels)
    raise choice_error("norm", name, _NORMS + _NONE_NAMES)


def make_activation(spec: LayerSpec) -> nn.Module:
    """An activation layer from its spec; ``None`` gives ``nn.Identity``."""
    name, options = parse_spec(spec, "activation")
    if name in _NONE_NAMES:
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise choice_error("activation", name, tuple(_ACTIVATIONS) + _NONE_NAMES)
    return _build(_ACTIVATIONS[name], options, "activation")


def make_dropout(probability: float, spatial_dims: int) -> nn.Module:
    """Channel dropout with ``probability``; 0 gives ``nn.Identity``."""
    if not 0.0 <= float(probability) < 1.0:
        raise ConfigError(f"dropout={probability!r} is not valid; allowed: 0 <= dropout < 1")
    if probability == 0:
        return nn.Identity()
    return layer_class("dropout", spatial_dims)(p=float(probability))


def activation_slope(spec: LayerSpec) -> float:
    """The negative slope of a (leaky) ReLU spec, for He initialisation; 0 otherwise."""
    name, options = parse_spec(spec, "activation")
    if name == "leakyrelu":
        return float(options.get("negative_slope", 0.01))
    return 0.0


def initialize_weights(module: nn.Module, scheme: str = "kaiming", negative_slope: float = 0.0) -> None:
    """Initialise every convolution in ``module``: He (Kaiming) normal or Xavier, zero bias.

    Norm layers keep PyTorch's defaults (weight 1, bias 0).
    """
    schemes = ("kaiming", "xavier")
    if scheme not in schemes:
        raise choice_error("init scheme", scheme, schemes)
    conv_types = tuple(_LAYER_TABLES["conv"].values()) + tuple(_LAYER_TABLES["conv_transpose"].values())
    for layer in module.modules():
        if not isinstance(layer, conv_types):
            continue
        if scheme == "kaiming":
            nn.init.kaiming_normal_(layer.weight, a=negative_slope, nonlinearity="leaky_relu")
        else:
            nn.init.xavier_normal_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def expand_per_stage(
    value: int | Sequence[Any], num_stages: int, spatial_dims: int, name: str
) -> list[tuple[int, ...]]:
    """Expand a kernel size or stride to one per-axis tuple per stage.

    ``3`` -> ``[(3, 3, 3)] * num_stages``; ``[1, 2, 2]`` (one int per stage) ->
    ``[(1, 1, 1), (2, 2, 2), (2, 2, 2)]``; ``[[1, 1, 1], [1, 2, 2], ...]`` is per stage
    and per axis (anisotropic data).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        items: Sequence[Any] = [value] * num_stages
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = value
    else:
        raise ConfigError(f"{name}={value!r} is not valid; use an int or a list with one entry per stage")
    if len(items) != num_stages:
        raise ConfigError(f"{name}={list(value)!r} has {len(items)} entries; this network has {num_stages} stages")
    expanded = []
    for item in items:
        axes = (item,) * spatial_dims if isinstance(item, int) else tuple(item)
        if len(axes) != spatial_dims or not all(isinstance(a, int) and a >= 1 for a in axes):
            raise ConfigError(f"{name} entry {item!r} is not valid; use a positive int or {spatial_dims} positive ints")
        expanded.append(axes)
    return expanded


def same_padding(kernel_size: Sequence[int]) -> tuple[int, ...]:
    """Padding that keeps the size of a stride-1 convolution with odd ``kernel_size``."""
    return tuple(k // 2 for k in kernel_size)


def _largest_divisor_at_most(number: int, limit: int) -> int:
    return max(d for d in range(1, min(number, limit) + 1) if number % d == 0)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def interpolation_mode(spatial_dims: int) -> str:
    """``"bilinear"`` in 2D, ``"trilinear"`` in 3D."""
    return {2: "bilinear", 3: "trilinear"}[check_spatial_dims(spatial_dims)]


def resize_to(tensor: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Linear interpolation of ``tensor`` (N, C, *S) to ``spatial_shape``."""
    if tuple(tensor.shape[2:]) == tuple(spatial_shape):
        return tensor
    mode = interpolation_mode(tensor.ndim - 2)
    return nn.functional.interpolate(tensor, size=tuple(spatial_shape), mode=mode, align_corners=False)
