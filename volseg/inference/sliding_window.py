"""Sliding-window inference: segment a volume larger than the network's window.

Windows are spread evenly over the (padded) volume, batched, run under
``torch.inference_mode`` (optionally autocast), weighted by a Gaussian importance map
computed once, and accumulated on ``output_device``: the GPU itself when the stitched logits are
small beside its memory (``"auto"``), else host memory, where each batch's copy is queued without
waiting and added while the GPU runs the next batch. It changes no process-wide setting; the CLI's
glibc malloc tuning (:func:`volseg.runtime.apply`) is what makes repeated windows fast on a CPU.
Networks whose output is smaller than their input (the paper's valid-convolution U-Net) are
tiled by output: each window carries its context, mirrored at the volume's border (the U-Net
paper's overlap-tile strategy).
2D networks segment volumes slice by slice. On the CPU, layers PyTorch runs slowly are swapped
for faster equivalents on a weight-sharing copy of the network (see :mod:`volseg.inference.fast_layers`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from volseg.errors import ConfigError, ShapeError, choice_error
from volseg.inference.backends import resolve_backend, runner_for
from volseg.inference.fast_layers import with_fast_layers
from volseg.inference.window_batch import (
    ActivationMeter,
    accumulation_device,
    free_memory,
    total_memory,
    window_batch_size,
    window_bytes,
)

BLEND_MODES = ("gaussian", "constant")
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: Gaussian sigma as a fraction of the window size (nnU-Net uses 1/8 too).
SIGMA_SCALE = 0.125


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start positions of windows of ``window`` voxels covering ``size`` voxels (``size >= window``),
    neighbours sharing at least ``overlap`` of a window, spread evenly from 0 to ``size - window``."""
    if size <= window:
        return [0]
    step = window * (1.0 - overlap)
    count = math.ceil((size - window) / step) + 1
    spacing = (size - window) / (count - 1)
    return [int(round(i * spacing)) for i in range(count)]


@functools.lru_cache(maxsize=8)
def _importance_map(shape: tuple[int, ...], mode: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if mode == "constant":
        return torch.ones(shape, device=device, dtype=dtype)
    axes = []
    for size in shape:
        centre, sigma = (size - 1) / 2.0, max(size * SIGMA_SCALE, 1e-3)
        coordinates = torch.arange(size, dtype=torch.float64)
        axes.append(torch.exp(-((coordinates - centre) ** 2) / (2 * sigma**2)))
    weights = functools.reduce(lambda a, b: a[..., None] * b, axes)
    weights = (weights / weights.max()).to(dtype)
    # The corners of a 3D window weigh exp(-24) of the centre (sigma = window / 8); a zero
    # weight there (a 2D-only window of extreme size, or a low-precision dtype) would leave
    # the voxels covered only by corners undefined.
    return weights.clamp_min(torch.finfo(dtype).tiny).to(device=device)


def importance_map(shape: Sequence[int], mode: str = "gaussian", device: str | torch.device = "cpu") -> torch.Tensor:
    """Blending weights (*shape) in (0, 1]: a Gaussian peaking at the window centre, or ones.

    Computed once per shape, mode and device (cached).
    """
    if mode not in BLEND_MODES:
        raise choice_error("blend mode", mode, BLEND_MODES)
    return _importance_map(tuple(int(s) for s in shape), mode, torch.device(device), torch.float32)


def flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (the identity first): nnU-Net-style test-time mirroring."""
    axes = sorted(set(int(a) for a in axes))
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def _output_size(network: nn.Module, roi: tuple[int, ...]) -> tuple[int, ...]:
    output_shape = getattr(network, "output_shape", None)
    return tuple(output_shape(roi)) if callable(output_shape) else roi


def sliding_window_inference(
    network: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    *,
    overlap: float = 0.5,
    blend: str = "gaussian",
    sw_batch_size: int | str = "auto",
    tta_flips: Sequence[int] = (),
    device: str | torch.device | None = None,
    output_device: str | torch.device | None = None,
    autocast: str | None = None,
    fast_layers: bool = True,
    progress: Callable[[int, int], None] | None = None,
    backend: str = "torch",
) -> torch.Tensor:
    """Logits of ``network`` over the whole of ``image``.

    Args:
        network: maps (B, C, *roi) to (B, K, *out); ``out`` may be smaller than ``roi``
            (valid convolutions) when the network has ``output_shape``. A 2D network on a
            3D ``image`` runs slice by slice along the last axis.
        image: (N, C, *S). Axes smaller than the window are padded (zeros) and cropped back.
        roi_size: the window, one size per spatial axis of the network.
        overlap: fraction of a window shared with its neighbour, 0 <= overlap < 1.
        blend: ``"gaussian"`` (weights fall off from the window centre) or ``"constant"``.
        sw_batch_size: windows per network call, or ``"auto"``: single windows first (on CUDA
            a warm-up, then one measured with the accumulation buffer in place), the rest in
            batches sized to the free memory (see :mod:`volseg.inference.window_batch`).
        tta_flips: spatial axes (0-based) mirrored for test-time augmentation; every
            combination is run and the logits averaged.
        device: where the network runs (default: the network's parameters' device).
        output_device: where the stitched logits are accumulated (default: ``image``'s
            device); ``"cpu"`` keeps a large multi-class result off the GPU; ``"auto"``: on
            ``device`` when they take at most 1/8 of its memory and half of what is free, else
            the host (:func:`volseg.inference.window_batch.accumulation_device`).
        autocast: ``None``, ``"fp16"`` or ``"bf16"`` mixed precision for the network.
        fast_layers: on the CPU in float32, run the network's slow layers (transposed
            convolutions with few outputs, instance norm) as faster equivalents, on a copy
            that shares its weights (see :mod:`volseg.inference.fast_layers`).
        progress: called as ``progress(done_windows, total_windows)``.
        backend: what runs the network (:mod:`volseg.inference.backends`): ``"torch"``,
            ``"openvino"`` (float32 on the CPU; converted once per window shape and cached) or
            ``"auto"``. A network already wrapped for a backend (``backends.runner_for``) runs as it is.

    Returns:
        (N, K, *S) float32 logits averaged over windows (and flips), on ``output_device``.
    """
    spatial_dims = getattr(network, "spatial_dims", image.ndim - 2)
    if image.ndim == 5 and spatial_dims == 2:
        return _slice_by_slice(
            network,
            image,
            roi_size,
            overlap=overlap,
            blend=blend,
            sw_batch_size=sw_batch_size,
            tta_flips=tta_flips,
            device=device,
            output_device=output_device,
            autocast=autocast,
            fast_layers=fast_layers,
            progress=progress,
            backend=backend,
        )
    _check_arguments(image, roi_size, overlap, sw_batch_size, autocast, tta_flips)
    roi = tuple(int(r) for r in roi_size)
    if device is None:
        device = next(network.parameters()).device if isinstance(network, nn.Module) else network.device
    device = torch.device(device)
    if isinstance(network, nn.Module):
        network = runner_for(network, resolve_backend(backend, device, network))
    if not isinstance(network, nn.Module) and autocast is not None:
        raise ConfigError(f"autocast={autocast!r} is for the torch backend; {network!r} runs float32")
    if fast_layers and device.type == "cpu" and autocast is None and isinstance(network, nn.Module):
        network = with_fast_layers(network)
    if output_device is None:
        output_device = image.device
    output_device = None if output_device == "auto" else torch.device(output_device)  # None: decided below
    tile = _output_size(network, roi)
    context_low = tuple((r - t) // 2 for r, t in zip(roi, tile))
    context_high = tuple(r - t - c for r, t, c in zip(roi, tile, context_low))

    # Pad the image so that the output grid holds at least one tile, then add the context.
    shape = tuple(image.shape[2:])
    grid = tuple(max(s, t) for s, t in zip(shape, tile))
    extra_low = tuple((g - s) // 2 for g, s in zip(grid, shape))
    padded = _pad(image, extra_low, tuple(g - s - e for g, s, e in zip(grid, shape, extra_low)), "constant")
    if any(context_low) or any(context_high):
        padded = _pad(padded, context_low, context_high, "reflect")

    starts = [window_starts(g, t, overlap) for g, t in zip(grid, tile)]
    positions = list(itertools.product(*starts))
    num_cases, flips = image.shape[0], flip_combinations(tta_flips)
    logits = coverage = weights = None
    jobs = [(case, position) for case in range(num_cases) for position in positions]
    total, done = len(jobs), 0
    auto = sw_batch_size == "auto" and total > 1
    size = 1 if sw_batch_size == "auto" else sw_batch_size
    # auto: a warm-up call on CUDA (cuDNN autotuning, first allocations), then one measured call
    stage = ("warm-up" if device.type == "cuda" and total > 2 else "measure") if auto else "sized"
    pending: list[tuple[torch.Tensor, list, torch.cuda.Event]] = []  # a batch's copy on its way to the host

    def add(prediction: torch.Tensor, batch: list, copied: torch.cuda.Event | None = None) -> None:
        """Weight the batch's logits (B, K, *tile) and add them to ``logits``, once they have arrived."""
        if copied is not None:
            copied.synchronize()
        for index, (case, position) in enumerate(batch):
            region = _window(position, tile)
            logits[(case, slice(None), *region)].addcmul_(prediction[index], weights)
            if case == 0:
                coverage[(0, 0, *region)].add_(weights)

    with torch.inference_mode(), _autocast_context(device, autocast):
        while done < total:
            batch = jobs[done : done + size]
            windows = torch.cat(
                [padded[(slice(case, case + 1), slice(None), *_window(position, roi))] for case, position in batch]
            ).to(device, non_blocking=True)
            meter = _meter(network, device) if stage == "measure" else None
            with meter or contextlib.nullcontext():
                prediction = _predict_with_flips(network, windows, flips)
            if logits is None:  # allocated before the batch is sized, so the free memory counts it
                needed = 4 * (num_cases * prediction.shape[1] + 1) * math.prod(grid)  # logits and coverage
                if output_device is None:
                    output_device = accumulation_device(
                        needed, device, free_bytes=free_memory(device), total_bytes=total_memory(device)
                    )
                weights = importance_map(tile, blend, output_device)
                with torch.inference_mode(False):  # a normal tensor: callers may modify the result in place
                    buffer = dict(device=output_device, dtype=torch.float32)
                    logits = torch.zeros((num_cases, prediction.shape[1], *grid), **buffer)
                    coverage = torch.zeros((1, 1, *grid), **buffer)
            for waiting in pending:  # the previous batch's copy: added while the GPU runs this one
                add(*waiting)
            pending = []
            if prediction.device.type == "cuda" and logits.device.type == "cpu":  # added after the next batch is queued
                pending = [(prediction.to(logits.device, non_blocking=True), batch, torch.cuda.Event())]
                pending[0][2].record()
            else:
                add(prediction.to(logits.device), batch)
            done += len(batch)
            if stage == "measure":  # one window, alone, measured what a window costs: size the rest
                cost = window_bytes(
                    meter.per_call,
                    input_elements=windows[0].numel(),
                    output_elements=prediction[0].numel(),
                    flips=len(flips),
                )
                to_host = prediction[0].numel() if logits.device != prediction.device else 0
                size = window_batch_size(
                    cost,
                    device,
                    windows=total - done,
                    largest_elements=meter.largest_per_window,
                    copied_elements=to_host,
                )
            stage = "measure" if stage == "warm-up" else "sized"
            if progress is not None:
                progress(done, total)
        for waiting in pending:
            add(*waiting)
    assert logits is not None
    logits /= coverage
    crop = tuple(slice(e, e + s) for e, s in zip(extra_low, shape))
    return logits[(slice(None), slice(None), *crop)]


def _meter(network: nn.Module, device: torch.device) -> ActivationMeter:
    """What measures a window's memory: the network's own meter (a backend's), else an :class:`ActivationMeter`."""
    return network.meter() if not isinstance(network, nn.Module) else ActivationMeter(network, device)


def _window(start: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(p, p + s) for p, s in zip(start, size))


def _predict_with_flips(network: nn.Module, windows: torch.Tensor, flips: list[tuple[int, ...]]) -> torch.Tensor:
    """Mean logits over the mirrored copies of ``windows`` (B, C, *roi)."""
    total = None
    for flip in flips:
        dims = [axis + 2 for axis in flip]
        output = network(windows.flip(dims) if dims else windows)
        output = output[0] if isinstance(output, (list, tuple)) else output
        output = output.float()
        output = output.flip(dims) if dims else output
        total = output if total is None else total.add_(output)
    assert total is not None
    return total / len(flips) if len(flips) > 1 else total


def _slice_by_slice(network: nn.Module, image: torch.Tensor, roi_size: Sequence[int], **options) -> torch.Tensor:
    """A 2D network over (N, C, H, W, D): every slice along D is a case."""
    if len(roi_size) == 3:
        roi_size = roi_size[:2]
    num_cases, depth = image.shape[0], image.shape[-1]
    slices = image.permute(0, 4, 1, 2, 3).reshape(num_cases * depth, *image.shape[1:4])
    tta = [a for a in options.pop("tta_flips") if a < 2]
    logits = sliding_window_inference(network, slices, roi_size, tta_flips=tta, **options)
    return logits.reshape(num_cases, depth, *logits.shape[1:]).permute(0, 2, 3, 4, 1)


def check_sw_batch_size(value: object) -> None:
    """Raise ConfigError unless ``value`` is ``"auto"`` or an integer >= 1."""
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ConfigError(f"sw_batch_size={value!r} is not valid; allowed: 'auto' or an integer, 1 or more")


def _check_arguments(image, roi_size, overlap, sw_batch_size, autocast, tta_flips) -> None:
    spatial = image.ndim - 2
    if image.ndim not in (4, 5):
        raise ShapeError(
            f"image of shape {tuple(image.shape)} is not valid; expected (N, C, *S) with 2 or 3 spatial axes"
        )
    if len(roi_size) != spatial or any(int(r) < 1 for r in roi_size):
        raise ConfigError(f"roi_size={list(roi_size)} is not valid; give {spatial} positive sizes")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap={overlap} is not valid; allowed: 0 <= overlap < 1")
    check_sw_batch_size(sw_batch_size)
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise choice_error("autocast", autocast, AUTOCAST_DTYPES)
    if any(not 0 <= a < spatial for a in tta_flips):
        raise ConfigError(f"tta_flips={list(tta_flips)} is not valid; spatial axes are 0 .. {spatial - 1}")


def _pad(image: torch.Tensor, low: tuple[int, ...], high: tuple[int, ...], mode: str) -> torch.Tensor:
    if not any(low) and not any(high):
        return image
    pads = [p for pair in zip(reversed(low), reversed(high)) for p in pair]
    if mode == "reflect" and any(p >= s for p, s in zip(pads, [s for s in reversed(image.shape[2:]) for _ in (0, 1)])):
        mode = "replicate"  # the volume is thinner than the context: mirroring is impossible
    return F.pad(image, pads, mode=mode)


def _autocast_context(device: torch.device, autocast: str | None):
    if autocast is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[autocast])
