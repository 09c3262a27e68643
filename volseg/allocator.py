"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks larger than its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and ``munmap``s them when freed, so every
window of a sliding-window pass maps its activations anew and the kernel zeroes every page
on first touch: hundreds of thousands of page faults per volume. Turning the mmap path off
and the heap trimming down makes freed blocks reusable by the next window. The cost is that
the process keeps its peak memory until it exits, which suits a prediction or training run.

Nothing in volseg calls this on its own: :func:`volseg.runtime.apply` does, for the CLI.
Set ``VOLSEG_MALLOC_TUNING=0`` to leave the allocator as it is even then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_NEVER = -1  # as a trim threshold: glibc reads it as the largest size_t, so it never trims
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc once per process; True when the tuning is in effect.

    Does nothing (False) on other C libraries, or when ``VOLSEG_MALLOC_TUNING=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("VOLSEG_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success. No mmap for large blocks: they come from the heap and are
    # reused; and never trim the heap's top, so the memory stays mapped between windows (a
    # threshold of 2 GiB, mallopt's largest positive int, is not enough: a BraTS volume's
    # activations free more than that at once, and every case then faulted them in again).
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
    logger.debug("glibc malloc tuning %s", "applied" if _applied else "refused")
    return _applied


def tuning_applied() -> bool | None:
    """Whether :func:`keep_freed_memory` tuned the allocator (None: it was never called)."""
    return _applied
