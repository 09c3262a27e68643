"""How many sliding windows to put through the network at once, and where to stitch them, sized to memory.

Batching windows pays on both devices (fewer, larger convolutions: on this project's 2-core
CPU benchmark MONAI's own sliding window runs 1.5x faster with 2 windows per call than with 1). The limit is
memory: the activations of a batch must fit beside everything else. With ``sw_batch_size: auto``
the sliding window runs single windows first: on CUDA one warm-up call (cuDNN autotuning, the
allocator's first blocks), after which the accumulation buffer is allocated; then one window under an
:class:`ActivationMeter`, which measures what a window costs; :func:`window_bytes` adds the copies
made outside the network and :func:`window_batch_size` sizes the remaining batches. Nothing is
computed twice. A batch is also capped so that no activation holds more than ``2**31 - 1``
elements (:func:`index_safe_batch`): kernels index such tensors with 32-bit integers.

:func:`accumulation_device` decides where the stitched logits accumulate: on the GPU when they are
small beside its memory, else in host memory (a 100-class 512 x 512 x 300 output is 31 GB of float32).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: Share of the free memory the activations of one batch may take.
MEMORY_FRACTION = 0.5
#: Largest batch per device type. On the CPU, 8 windows were no faster than 4 for a small
#: network and 20-30 % slower for a BraTS-sized one, whose extra activations cost more in
#: first-touch page faults than batching saves (docs/performance.md); GPU kernels are
#: saturated well before 32.
LARGEST_BATCH = {"cpu": 4, "cuda": 32}
#: Most elements one tensor may hold: cuDNN and many PyTorch kernels index with 32-bit integers.
INDEX_LIMIT = 2**31 - 1
#: Float32 copies of a window's logits made outside the network per call (the autocast output cast
#: to float32, its mirrored copy, the running sum over mirrorings, the weighted copy).
OUTPUT_COPIES = 4
#: Most bytes of float32 logits one batch copies to host memory (pinned staging memory; once the
#: copy is the bottleneck, larger batches gain nothing).
HOST_COPY_BYTES = 2**31
#: Largest share of a GPU's total memory the stitched logits may take there (and at most half of
#: what is free); larger outputs accumulate in host memory.
ACCUMULATION_SHARE = 1 / 8


class ActivationMeter:
    """Context manager measuring the activation memory of the network calls made inside it.

    ``per_call`` is the bytes one call of ``network`` needed: on CUDA the allocator's allocated
    bytes above their level on entry, sampled after every leaf module's forward and kept at their
    largest (a local measurement: ``torch.cuda.max_memory_allocated`` and its peak are left alone,
    and the scratch space inside a layer, cuDNN's autotuning workspace included, is not counted);
    elsewhere the summed size of every leaf module's output (a module with ``wraps_layer`` set, such
    as a :mod:`volseg.inference.fast_layers` stand-in, counts as one). ``largest_per_window`` is the element
    count of the largest tensor a leaf module took or gave, divided by the call's batch size.
    """

    def __init__(self, network: nn.Module, device: torch.device) -> None:
        self.network, self.device = network, device
        self.total, self.calls, self.largest_per_window, self._hooks = 0, 0, 0, []
        self._batch = 1

    def __enter__(self) -> ActivationMeter:
        if self.device.type == "cuda":
            self._baseline = self._peak = torch.cuda.memory_allocated(self.device)
        leaves = [
            m for m in self.network.modules() if next(m.children(), None) is None or getattr(m, "wraps_layer", False)
        ]
        self._hooks = [m.register_forward_hook(self._add_output) for m in leaves]
        self._hooks.append(self.network.register_forward_pre_hook(self._count_call))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for hook in self._hooks:
            hook.remove()
        if self.device.type == "cuda":
            self.total = self._peak - self._baseline
            self.calls = 1  # the peak is that of the largest call, not a sum

    @property
    def per_call(self) -> int:
        return max(self.total // max(self.calls, 1), 1)

    def _add_output(self, _module: nn.Module, inputs: tuple, output: object) -> None:
        outputs = output if isinstance(output, (list, tuple)) else (output,)
        for tensor in (*inputs, *outputs):
            if isinstance(tensor, torch.Tensor):
                self.largest_per_window = max(self.largest_per_window, -(-tensor.numel() // self._batch))
        if self.device.type == "cuda":
            self._peak = max(self._peak, torch.cuda.memory_allocated(self.device))
            return
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor):
                self.total += tensor.numel() * tensor.element_size()

    def _count_call(self, _module: nn.Module, inputs: tuple) -> None:
        self.calls += 1
        first = inputs[0] if inputs else None
        self._batch = max(int(first.shape[0]), 1) if isinstance(first, torch.Tensor) and first.ndim else 1


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: on CUDA the driver's figure plus the blocks PyTorch's allocator holds
    unused (they serve new tensors first), elsewhere the host's MemAvailable."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + int(cached)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def total_memory(device: torch.device) -> int:
    """Bytes ``device`` has in all: the GPU's memory, or the host's."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def index_safe_batch(elements_per_window: int) -> int:
    """Most windows per call keeping the largest activation, ``elements_per_window`` per window,
    within :data:`INDEX_LIMIT` elements (at least 1; no cap when the size is unknown, 0)."""
    if elements_per_window <= 0:
        return INDEX_LIMIT
    return max(1, INDEX_LIMIT // elements_per_window)


def window_bytes(activation_bytes: int, *, input_elements: int, output_elements: int, flips: int) -> int:
    """Bytes one window costs in a batch: its activations (measured) plus its float32 input
    (``input_elements``, C x roi; twice with mirroring) and :data:`OUTPUT_COPIES` float32 copies of
    its logits (``output_elements``, K x tile) made outside the network."""
    inputs = input_elements * 4 * (2 if flips > 1 else 1)
    return activation_bytes + inputs + OUTPUT_COPIES * output_elements * 4


def batch_that_fits(
    free_bytes: int,
    bytes_per_window: int,
    *,
    windows: int,
    largest_batch: int,
    largest_elements: int = 0,
    copied_elements: int = 0,
) -> int:
    """Windows per call: as many as fit in :data:`MEMORY_FRACTION` of ``free_bytes``, at least 1 and
    at most ``windows``, ``largest_batch``, :func:`index_safe_batch` of ``largest_elements`` and, when
    each window's ``copied_elements`` float32 logits go to host memory, :data:`HOST_COPY_BYTES` of them."""
    fitting = int(free_bytes * MEMORY_FRACTION // max(bytes_per_window, 1))
    copies = HOST_COPY_BYTES // (4 * copied_elements) if copied_elements else largest_batch
    return max(1, min(fitting, windows, largest_batch, index_safe_batch(largest_elements), copies))


def window_batch_size(
    bytes_per_window: int, device: torch.device, *, windows: int, largest_elements: int = 0, copied_elements: int = 0
) -> int:
    """:func:`batch_that_fits` the free memory of ``device`` within its :data:`LARGEST_BATCH`."""
    largest = LARGEST_BATCH.get(device.type, LARGEST_BATCH["cuda"])
    batch = batch_that_fits(
        free_memory(device),
        bytes_per_window,
        windows=windows,
        largest_batch=largest,
        largest_elements=largest_elements,
        copied_elements=copied_elements,
    )
    logger.debug(
        "window batch %d: %.0f MiB per window, largest activation %d elements per window, %d windows left",
        batch,
        bytes_per_window / 2**20,
        largest_elements,
        windows,
    )
    return batch


def accumulation_device(buffer_bytes: int, device: torch.device, *, free_bytes: int, total_bytes: int) -> torch.device:
    """Where a ``buffer_bytes`` accumulation buffer goes when the network runs on ``device``: there
    if it is the CPU, or if the buffer takes at most :data:`ACCUMULATION_SHARE` of ``total_bytes``
    and half of ``free_bytes``; otherwise host memory."""
    if device.type == "cpu" or buffer_bytes <= min(total_bytes * ACCUMULATION_SHARE, free_bytes * 0.5):
        return device
    return torch.device("cpu")
