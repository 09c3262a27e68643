"""How many sliding windows to put through the network at once, sized to the memory there is.

Batching windows pays on both devices (fewer, larger convolutions: on this project's 2-core
CPU benchmark MONAI's own sliding window runs 1.5x faster with 2 windows per call than with 1). The limit is
memory: the activations of a batch must fit beside everything else. The sliding window runs
its first window alone under an :class:`ActivationMeter`, which measures what one window
costs (the CUDA allocator's peak, or on the CPU the sum of every layer's output, an upper
bound since inference frees most of them as it goes), and sizes the remaining batches with
:func:`window_batch_size`. Nothing is computed twice.
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


class ActivationMeter:
    """Context manager measuring the activation memory of the network calls made inside it.

    ``per_call`` is the bytes one call of ``network`` needed: on CUDA the allocator's peak
    above what was allocated on entry, elsewhere the summed size of every leaf module's output
    (a module with ``wraps_layer`` set, such as a :mod:`volseg.fast_layers` stand-in, counts as one).
    """

    def __init__(self, network: nn.Module, device: torch.device) -> None:
        self.network, self.device = network, device
        self.total, self.calls, self._hooks = 0, 0, []

    def __enter__(self) -> ActivationMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            leaves = [m for m in self.network.modules()
                      if next(m.children(), None) is None or getattr(m, "wraps_layer", False)]
            self._hooks = [m.register_forward_hook(self._add_output) for m in leaves]
        self._hooks.append(self.network.register_forward_hook(self._count_call))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for hook in self._hooks:
            hook.remove()
        if self.device.type == "cuda":
            self.total = torch.cuda.max_memory_allocated(self.device) - self._baseline
            self.calls = 1  # the peak is that of the largest call, not a sum

    @property
    def per_call(self) -> int:
        return max(self.total // max(self.calls, 1), 1)

    def _add_output(self, _module: nn.Module, _inputs: object, output: object) -> None:
        for tensor in output if isinstance(output, (list, tuple)) else (output,):
            if isinstance(tensor, torch.Tensor):
                self.total += tensor.numel() * tensor.element_size()

    def _count_call(self, *_args: object) -> None:
        self.calls += 1


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the CUDA driver's figure, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def window_batch_size(bytes_per_window: int, device: torch.device, *, windows: int) -> int:
    """Windows per network call: as many as fit in :data:`MEMORY_FRACTION` of the free memory,
    at least 1 and at most ``windows`` and the device's :data:`LARGEST_BATCH`."""
    fitting = int(free_memory(device) * MEMORY_FRACTION // max(bytes_per_window, 1))
    batch = max(1, min(fitting, windows, LARGEST_BATCH.get(device.type, LARGEST_BATCH["cuda"])))
    logger.debug("window batch %d: %.0f MiB per window, %d windows left", batch, bytes_per_window / 2**20, windows)
    return batch
