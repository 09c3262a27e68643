"""Faster CPU stand-ins for layers PyTorch runs slowly, used by the sliding window.

Two layers of common segmentation networks cost far more on the CPU than their arithmetic
(docs/performance.md, measured on a 2-core AVX-512 machine):

- **Transposed convolutions with few output channels.** oneDNN takes about as long to produce
  1 output channel as 8 (a 32 -> 3 stride-2 layer at 96^3 output was 20 % of MONAI's UNet).
  :class:`SubpixelConvTranspose` computes the same result as an ordinary convolution of the
  input into ``out_channels x prod(stride)`` channels followed by a depth-to-space shuffle
  ("sub-pixel convolution"): 1.2-2.6x faster for 1-4 output channels, even at 8, slower beyond.
- **Instance norm** without running statistics: PyTorch runs it through its batch-norm kernel.
  :class:`TwoPassInstanceNorm` takes the mean, then the norm of the centred values, with
  PyTorch's reductions: 1.4-2.5x faster, the same result to float32 rounding.

:func:`with_fast_layers` gives a network these stand-ins without touching it: a copy of its
module tree that shares its parameters and buffers (so weights updated by training are seen),
cached per network while its module tree stays the same. The stand-ins are for inference:
they fall back to the original layer for half precision, unusual options and autograd.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

#: Transposed convolutions with at most this many output channels run as sub-pixel convolutions
#: (1.2-2.6x faster at 1-4 channels, 0.7-1.1x at 8, 0.55-0.9x at 16-32; scripts/bench_layers.py).
SUBPIXEL_MAX_OUT_CHANNELS = 4
TRANSPOSED = (nn.ConvTranspose2d, nn.ConvTranspose3d)
INSTANCE_NORMS = (nn.InstanceNorm2d, nn.InstanceNorm3d)


def _is_fast_path(x: torch.Tensor, spatial_dims: int) -> bool:
    """Whether ``x`` suits a stand-in: a batched float32 CPU tensor, no gradients being recorded."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == spatial_dims + 2
        and not torch.is_grad_enabled()
    )


class SubpixelConvTranspose(nn.Module):
    """A transposed convolution (groups 1, dilation 1, zero padding) computed as a convolution
    into ``C_out x prod(stride)`` channels and a depth-to-space shuffle.

    Along one axis with stride s, kernel k, padding p: output index ``o = s*i + a`` (phase
    ``a < s``) takes input ``i + d`` through kernel tap ``a + p - s*d``, so every phase is an
    ordinary convolution of the input over the offsets ``d`` whose tap exists; the phases are
    stacked as output channels of one convolution. (B, C_in, *S) -> (B, C_out, *S_out).
    """

    wraps_layer = True  # a layer in its own right for ActivationMeter, though ``source`` is its child

    def __init__(self, source: nn.ConvTranspose2d | nn.ConvTranspose3d) -> None:
        super().__init__()
        self.source = source  # shares its parameters; also runs the calls the stand-in does not take
        self.spatial_dims = len(source.kernel_size)
        #: per axis: (lowest input offset d, number of offsets)
        self.offsets = [self._offsets(s, k, p) for s, k, p in zip(source.stride, source.kernel_size, source.padding)]
        self._cache: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    @staticmethod
    def _offsets(stride: int, kernel: int, padding: int) -> tuple[int, int]:
        lowest = -((kernel - 1 - padding) // stride)  # ceil((padding - kernel + 1) / stride)
        highest = (stride - 1 + padding) // stride
        return lowest, highest - lowest + 1

    @staticmethod
    def supports(module: nn.Module) -> bool:
        """Whether ``module`` is a transposed convolution this class computes faster."""
        return (
            isinstance(module, TRANSPOSED)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and all(d == 1 for d in module.dilation)
            and module.out_channels <= SUBPIXEL_MAX_OUT_CHANNELS
        )

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The phase-stacked convolution weight (C_out * prod(stride), C_in, *offsets) and bias."""
        weight, bias = self.source.weight, self.source.bias
        key = (
            weight._version,
            weight.data_ptr(),
            weight.device,
            weight.dtype,
            None if bias is None else (bias._version, bias.data_ptr()),
        )
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (
                    key,
                    self._phase_weight(weight.detach()),
                    None if bias is None else bias.detach().repeat_interleave(math.prod(self.source.stride)),
                )
        return self._cache[1], self._cache[2]

    def _phase_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """(C_in, C_out, *kernel) -> (C_out * prod(stride), C_in, *offsets); phases vary
        fastest within each output channel, in row-major order over the axes."""
        source = self.source
        in_channels, out_channels = weight.shape[:2]
        sizes = [count for _, count in self.offsets]
        phased = weight.new_zeros((out_channels, *source.stride, in_channels, *sizes))
        for phase in itertools.product(*(range(s) for s in source.stride)):
            for index in itertools.product(*(range(n) for n in sizes)):
                taps = [
                    a + p - s * (low + i)
                    for a, p, s, (low, _), i in zip(phase, source.padding, source.stride, self.offsets, index)
                ]
                if all(0 <= t < k for t, k in zip(taps, source.kernel_size)):
                    phased[(slice(None), *phase, slice(None), *index)] = weight[(slice(None), slice(None), *taps)].t()
        return phased.reshape(out_channels * math.prod(source.stride), in_channels, *sizes)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        source = self.source
        if output_size is not None or not _is_fast_path(x, self.spatial_dims) or source.weight.dtype != x.dtype:
            return source(x, output_size)
        spatial = x.shape[2:]
        out_sizes = [
            (n - 1) * s - 2 * p + k + op
            for n, s, p, k, op in zip(spatial, source.stride, source.padding, source.kernel_size, source.output_padding)
        ]
        coarse = [-(-size // s) for size, s in zip(out_sizes, source.stride)]  # phase groups per axis
        pads = []  # F.pad order: last axis first; negative values crop
        for n, m, (low, count) in reversed(list(zip(spatial, coarse, self.offsets))):
            pads += [-low, (m - 1 + low + count - 1) - (n - 1)]
        weight, bias = self._weights()
        convolution = F.conv3d if self.spatial_dims == 3 else F.conv2d
        phases = convolution(F.pad(x, pads), weight, bias)  # (B, C_out * prod(stride), *coarse)
        return _depth_to_space(phases, source.out_channels, source.stride, out_sizes)


def _depth_to_space(phases: torch.Tensor, channels: int, stride: tuple[int, ...], sizes: list[int]) -> torch.Tensor:
    """(B, C * prod(stride), *coarse) -> (B, C, *sizes): each coarse voxel's phases laid out
    as a stride-sized block, cropped to ``sizes``."""
    batch, coarse, dims = phases.shape[0], phases.shape[2:], len(stride)
    blocks = phases.view(batch, channels, *stride, *coarse)
    # (B, C, s0, s1, .., m0, m1, ..) -> (B, C, m0, s0, m1, s1, ..)
    order = [0, 1] + [axis for i in range(dims) for axis in (2 + dims + i, 2 + i)]
    full = blocks.permute(order).reshape(batch, channels, *(m * s for m, s in zip(coarse, stride)))
    if list(full.shape[2:]) != list(sizes):
        full = full[(slice(None), slice(None), *(slice(0, size) for size in sizes))]
    return full


class TwoPassInstanceNorm(nn.Module):
    """Instance norm over the spatial axes, (B, C, *S) -> (B, C, *S): the mean, then the
    norm of the centred values (the biased variance, as ``nn.InstanceNorm``), then scale and
    shift in place."""

    wraps_layer = True

    def __init__(self, source: nn.InstanceNorm2d | nn.InstanceNorm3d) -> None:
        super().__init__()
        self.source = source
        self.spatial_dims = 3 if isinstance(source, nn.InstanceNorm3d) else 2

    @staticmethod
    def supports(module: nn.Module) -> bool:
        """Whether ``module`` normalises with each input's own statistics (no running ones)."""
        return isinstance(module, INSTANCE_NORMS) and not module.track_running_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = self.source
        if not _is_fast_path(x, self.spatial_dims) or x.shape[2:].numel() < 2:
            return source(x)
        flat = x.reshape(*x.shape[:2], -1)
        centred = flat - flat.mean(2, keepdim=True)
        variance = torch.linalg.vector_norm(centred, dim=2, keepdim=True).square_().div_(flat.shape[2])
        scale = torch.rsqrt(variance.add_(source.eps))
        if source.affine:
            scale = scale * source.weight.detach().view(1, -1, 1)
            centred.mul_(scale).add_(source.bias.detach().view(1, -1, 1))
        else:
            centred.mul_(scale)
        return centred.view(x.shape)


STAND_INS = (SubpixelConvTranspose, TwoPassInstanceNorm)
CALL_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
#: network -> (its module tree's signature, its copy with stand-ins)
_copies: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def _stand_in_kind(module: nn.Module) -> type[nn.Module] | None:
    """The stand-in class for ``module``, if any; a layer with call hooks of its own stays as it is."""
    if _is_observed(module):
        return None
    return next((kind for kind in STAND_INS if kind.supports(module)), None)


def _is_observed(module: nn.Module) -> bool:
    """Whether ``module`` has forward or backward hooks (a stand-in would not call them)."""
    return any(getattr(module, name, None) for name in CALL_HOOKS)


def _hook_tables(module: nn.Module) -> list[dict]:
    """The module's hook registries (forward, backward, state dict, ...)."""
    return [value for name, value in vars(module).items() if "hooks" in name and isinstance(value, dict)]


def with_fast_layers(network: nn.Module) -> nn.Module:
    """``network``, or a copy of its module tree with the layers of :data:`STAND_INS` replaced.

    The copy shares every parameter, buffer and hook registry with ``network`` (a hook
    registered on either is seen by both); layers with hooks of their own are not replaced.
    It is cached until a module, parameter or buffer of ``network`` is added, removed or
    replaced, a module changes between training and eval mode, or gains or loses call hooks;
    ``network`` itself is never modified.
    """
    modules = list(network.named_modules())
    signature = tuple(
        (
            name,
            id(module),
            module.training,
            _is_observed(module),
            tuple(map(id, module._parameters.values())),
            tuple(map(id, module._buffers.values())),
        )
        for name, module in modules
    )
    cached = _copies.get(network)
    if cached is not None and cached[0] == signature:
        return cached[1]
    if not any(_stand_in_kind(module) for _, module in modules[1:]):
        return network
    shared = {id(tensor): tensor for tensor in itertools.chain(network.parameters(), network.buffers())}
    shared.update({id(table): table for _, module in modules for table in _hook_tables(module)})
    try:
        fast = copy.deepcopy(network, shared)
    except Exception as error:  # a module that cannot be copied keeps the original layers
        logger.debug("fast layers not used: %s cannot be copied (%s)", type(network).__name__, error)
        return network
    for parent in list(fast.modules()):
        for name, child in list(parent.named_children()):
            kind = _stand_in_kind(child)
            if kind is not None:
                setattr(parent, name, kind(child))
    _copies[network] = (signature, fast)
    return fast
