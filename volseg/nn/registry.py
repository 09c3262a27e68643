"""Networks by name: ``create_model("unet", 3, 1, 3, features=[16, 32, 64])``.

Every network built here carries ``model.config``: its name and every constructor
argument, defaults included, as JSON-able values, so ``create_model(**model.config)``
rebuilds it (this is what a checkpoint stores).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from volseg.errors import ConfigError, choice_error, closest_hint
from volseg.nn.base import SegmentationNetwork
from volseg.nn.segnet import SegNet
from volseg.nn.ternausnet import TernausNet
from volseg.nn.unet import UNet
from volseg.nn.unet_paper import PaperUNet
from volseg.nn.unetpp import UNetPlusPlus

_POSITIONAL = ("spatial_dims", "in_channels", "num_classes")


@dataclass(frozen=True)
class ModelEntry:
    """A registered network: its constructor, defaults that differ from it, and a one-line summary."""

    name: str
    builder: Callable[..., SegmentationNetwork]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def parameter_names(self) -> list[str]:
        return [p for p in inspect.signature(self.builder).parameters if p not in _POSITIONAL]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, builder: Callable[..., SegmentationNetwork], summary: str, defaults: Mapping[str, Any] | None = None
) -> None:
    """Make ``builder`` available to :func:`create_model` as ``name``."""
    if name in _REGISTRY:
        raise ConfigError(f"a network named {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, builder, summary, dict(defaults or {}))


def list_models() -> list[str]:
    """Names of every registered network, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise ``ConfigError`` with a suggestion."""
    if name not in _REGISTRY:
        raise choice_error("network", name, _REGISTRY)
    return _REGISTRY[name]


def create_model(
    name: str, spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any
) -> SegmentationNetwork:
    """Build network ``name`` for ``spatial_dims`` (2 or 3) mapping ``in_channels`` to ``num_classes``.

    Keyword arguments go to the network's constructor; unknown ones raise ``ConfigError``
    naming the closest valid argument.
    """
    entry = model_entry(name)
    allowed = entry.parameter_names()
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"{name} has no argument {key!r}{closest_hint(key, allowed)}; allowed: {', '.join(allowed)}"
            )
    arguments = {**entry.defaults, **kwargs}
    model = entry.builder(spatial_dims, in_channels, num_classes, **arguments)
    bound = inspect.signature(entry.builder).bind(spatial_dims, in_channels, num_classes, **arguments)
    bound.apply_defaults()
    bound.arguments.update(model.resolved_arguments)
    excluded = set(getattr(model, "config_excludes", ()))
    model.config = {"name": name}
    model.config.update({k: to_json(v) for k, v in bound.arguments.items() if k not in excluded})
    return model


def describe_model(name: str, spatial_dims: int, in_channels: int, num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """The summary, resolved config and parameter count of a network, built without allocating weights."""
    with torch.device("meta"):
        model = create_model(name, spatial_dims, in_channels, num_classes, **kwargs)
    parameters = sum(p.numel() for p in model.parameters())
    return {"summary": model_entry(name).summary, "config": model.config, "parameters": parameters}


def to_json(value: Any) -> Any:
    """Tuples to lists and paths to strings, recursively, so that ``json.dumps`` takes it."""
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


register_model(
    "unet",
    UNet,
    "padded U-Net (nnU-Net style): per-stage/axis strides, deep supervision, residual blocks "
    "(residual: true, or 'encoder' with encoder_blocks per stage and decoder_convs for nnU-Net's ResEnc)",
)
register_model(
    "attention-unet",
    UNet,
    "U-Net with additive attention gates on the skips (Oktay et al. 2018)",
    defaults={"attention_gates": True, "downsample": "maxpool", "norm": "batch", "act": "relu"},
)
register_model("unet-paper", PaperUNet, "original valid-convolution U-Net (Ronneberger 2015 in 2D, Cicek 2016 in 3D)")
register_model("unet++", UNetPlusPlus, "UNet++ with nested dense skips (Zhou et al. 2018)")
register_model("segnet", SegNet, "SegNet: decoder unpools with the encoder's max-pooling indices (Badrinarayanan 2017)")
register_model("ternausnet", TernausNet, "U-Net with a VGG11 encoder (Iglovikov & Shvets 2018)")
