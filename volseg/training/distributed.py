"""Data-parallel training across processes: ``torchrun --nproc_per_node N -m volseg train CONFIG``.

torchrun describes the job in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
without it the job is a single process. NCCL joins GPUs, gloo joins CPU processes. A process
stays in the group it joined until it exits (cross-validation trains every fold in it), and
leaves it then.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from volseg.runtime import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job and which device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_preference: str = "auto") -> DistributedContext:
    """Join the torchrun job if there is one (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    context = DistributedContext(rank, world_size, local_rank, device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        atexit.register(shutdown, context)  # at the end of the last run in this process
        logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, device)
    return context


def ranks_on_node(context: DistributedContext) -> int:
    """The training processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; else all of them)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size))


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes (a no-op in a single process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (a no-op when it has been left already)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
