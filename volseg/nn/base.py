"""The contract every volseg network keeps.

A network maps (N, in_channels, *S) to (N, num_classes, *S_out) logits. Padded
networks keep S (each axis must be a multiple of the network's total stride);
the paper's valid-convolution U-Net returns a smaller S_out. Both answer
:meth:`SegmentationNetwork.output_shape`, so inference and training can tile
without knowing which kind they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from volseg.errors import ConfigError, ShapeError
from volseg.nn.layers import check_spatial_dims

# How far nearest_valid_shape looks for a size that fits, per axis.
_SEARCH_LIMIT = 4096


class SegmentationNetwork(nn.Module):
    """Base class: input checks, output sizes, deep supervision and checkpointing.

    Subclasses implement :meth:`axis_output_size` (or set ``size_divisor``) and
    ``forward``; they call :meth:`check_input` first thing in ``forward``.
    """

    #: Set by :func:`volseg.nn.create_model`: the JSON-able arguments that rebuild this network.
    config: dict[str, Any]

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} is not valid; allowed: a positive int")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.size_divisor: tuple[int, ...] = (1,) * self.spatial_dims
        self.deep_supervision = False
        self.gradient_checkpointing = False
        self.config = {}
        #: Arguments whose defaults depend on others, as this network resolved them; the
        #: registry records these in ``config`` in place of the defaults given.
        self.resolved_arguments: dict[str, Any] = {}

    # ----------------------------------------------------------------- sizes
    def axis_output_size(self, size: int, axis: int) -> int | None:
        """Output length of one spatial axis for input length ``size``; None if it cannot pass."""
        return size if size >= 1 and size % self.size_divisor[axis] == 0 else None

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for spatial ``input_shape``; raises ``ShapeError`` if it cannot pass."""
        self._check_rank(input_shape)
        sizes = [self.axis_output_size(int(s), axis) for axis, s in enumerate(input_shape)]
        if any(s is None for s in sizes):
            raise ShapeError(self._size_message(input_shape))
        return tuple(int(s) for s in sizes)  # type: ignore[arg-type]

    def is_valid_input_shape(self, input_shape: Sequence[int]) -> bool:
        """Whether spatial ``input_shape`` can pass through the network."""
        return len(input_shape) == self.spatial_dims and all(
            self.axis_output_size(int(s), axis) is not None for axis, s in enumerate(input_shape)
        )

    def nearest_valid_shape(self, input_shape: Sequence[int], direction: str = "up") -> tuple[int, ...] | None:
        """The closest spatial shape that passes, searching ``"up"`` or ``"down"`` per axis.

        Returns None when no size fits downwards (the input is already too small).
        """
        self._check_rank(input_shape)
        step = 1 if direction == "up" else -1
        shape = []
        for axis, size in enumerate(input_shape):
            candidate = int(size)
            while self.axis_output_size(candidate, axis) is None:
                candidate += step
                if candidate < 1 or abs(candidate - size) > _SEARCH_LIMIT:
                    return None
            shape.append(candidate)
        return tuple(shape)

    def size_rule(self) -> str:
        """A sentence saying which input sizes pass (used in error messages)."""
        return f"each spatial axis must be a multiple of {self.size_divisor}"

    def _size_message(self, input_shape: Sequence[int]) -> str:
        below = self.nearest_valid_shape(input_shape, "down")
        above = self.nearest_valid_shape(input_shape, "up")
        options = [str(s) for s in (below, above) if s is not None]
        return (
            f"input spatial shape {tuple(int(s) for s in input_shape)} cannot pass through "
            f"{type(self).__name__}: {self.size_rule()}; nearest sizes that work: {' or '.join(options)}"
        )

    def _check_rank(self, input_shape: Sequence[int]) -> None:
        if len(input_shape) != self.spatial_dims:
            raise ShapeError(
                f"spatial shape {tuple(input_shape)} has {len(input_shape)} axes; this network is {self.spatial_dims}D"
            )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ShapeError`` unless ``x`` is (N, in_channels, *S) with S that passes."""
        if x.ndim != self.spatial_dims + 2:
            raise ShapeError(
                f"input of shape {tuple(x.shape)} has {x.ndim} dimensions; a {self.spatial_dims}D network "
                f"takes (N, C, {', '.join('XYZ'[: self.spatial_dims])}) with {self.spatial_dims + 2}"
            )
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"input has {x.shape[1]} channels; this network takes {self.in_channels} (shape {tuple(x.shape)})"
            )
        self.output_shape(tuple(x.shape[2:]))

    # ------------------------------------------------------------ helpers
    def run_block(self, block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        """Call ``block``, recomputing its activations in backward when gradient checkpointing is on."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *inputs, use_reentrant=False)
        return block(*inputs)

    def select_outputs(self, outputs: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """The main output, or all outputs (main first) in training with deep supervision."""
        if self.training and self.deep_supervision:
            return outputs
        return outputs[0]
