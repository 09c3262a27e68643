"""Process-wide settings, in one place and only when asked.

volseg's library calls (the sliding window, the Predictor, the Trainer) change nothing that
outlives them in the process. What does, and what speeds volseg up, is applied here explicitly:
by the CLI for every command that computes, by scripts, or by a user who calls :func:`apply`.

* the glibc allocator tuning of :mod:`volseg.allocator` (freed blocks stay in the process: no
  page faults per window; measured 47 s -> 31 s per 1 mm BraTS case on one thread);
* the number of torch intra-op threads;
* :func:`training_flags`: determinism and cuDNN flags for the length of a training run, put back
  afterwards.

:func:`describe` reads what is in effect; ``volseg train`` records it in the run folder
(``runtime.json``). matplotlib's global backend is never chosen by volseg: plots are drawn on
private Agg canvases. :func:`resolve_device` turns a device preference (``auto``, ``cuda``,
``cpu``) into the device that training and prediction both use.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from volseg import allocator

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What :func:`apply` sets: ``malloc_tuning`` (glibc; ``VOLSEG_MALLOC_TUNING=0`` still
    vetoes it) and ``threads`` (torch intra-op threads; None leaves torch's choice)."""

    malloc_tuning: bool = True
    threads: int | None = None


def apply(runtime: Runtime = Runtime(), *, record: bool = True) -> dict[str, Any]:
    """Apply ``runtime`` to this process; returns :func:`describe`'s record of the result
    (``record=False``: an empty dict, and torch is not imported for it)."""
    if runtime.malloc_tuning:
        allocator.keep_freed_memory()
    if runtime.threads is not None:
        if runtime.threads < 1:
            from volseg.errors import ConfigError

            raise ConfigError(f"threads={runtime.threads} is not valid; allowed: 1 or more")
        import torch

        torch.set_num_threads(runtime.threads)
    return describe() if record else {}


def describe() -> dict[str, Any]:
    """The process-wide settings in effect now (JSON-able)."""
    import torch

    return {
        "malloc_tuning": bool(allocator.tuning_applied()),
        "VOLSEG_MALLOC_TUNING": os.environ.get("VOLSEG_MALLOC_TUNING"),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def training_flags(deterministic: bool) -> Iterator[None]:
    """Within: with ``deterministic``, deterministic algorithms (warning where an op has none)
    and cudnn.deterministic; else cudnn.benchmark. The process's previous flags come back on
    exit, so a later prediction or run in the same process is not slowed or changed by them."""
    import torch

    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = not deterministic
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU falls back to CPU with a warning.

    GPU ``local_rank % device_count``: a node may run more processes than it has GPUs.
    """
    import torch

    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference == "cuda":
        logger.warning("training.device is cuda but no CUDA device is available; using the CPU")
    return torch.device("cpu")


def torchrun_rank() -> tuple[int, int, int] | None:
    """``(rank, world size, local world size)`` when started by torchrun with several ranks, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_WORLD_SIZE", world))


def torchrun_store(namespace: str, rank: int, world_size: int, timeout: datetime.timedelta):
    """A client of the torchrun job's key-value store (its server on rank 0 where torchrun's agent
    does not host one), its keys under ``namespace`` and this attempt (``--max-restarts``): torch
    2.13 keeps a failed attempt's keys, which the restarted workers would otherwise read."""
    import torch.distributed as dist

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=not agent_store and rank == 0,
        timeout=timeout,
        wait_for_workers=False,
    )
    return dist.PrefixStore(f"volseg/{namespace}/attempt_{attempt}", store)
