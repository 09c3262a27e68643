"""Data-parallel training across processes and machines, started by torchrun.

One machine: ``torchrun --nproc_per_node N -m volseg train CONFIG``. Several: the same command
on every node with ``--nnodes M --rdzv-backend c10d --rdzv-endpoint HOST0:PORT --rdzv-id JOB``.
torchrun describes the job in the environment: ``RANK`` (global: rank 0 alone writes the run
folder), ``LOCAL_RANK`` (which GPU of this node), ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` (the
processes sharing this node's cores), ``MASTER_ADDR``/``MASTER_PORT`` (read by
``init_process_group``) and ``TORCHELASTIC_RESTART_COUNT`` (``--max-restarts``); without it the
job is a single process. NCCL joins GPUs, gloo joins CPU processes. A process stays in the group
it joined until it exits (cross-validation trains every fold in it), and leaves it then.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from volseg.config import Config, load_config
from volseg.errors import TrainingError
from volseg.io.atomic import write_text
from volseg.runtime import resolve_device, torchrun_store

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
        """Only the main process (global rank 0) writes files and shows progress."""
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
        timeout = datetime.timedelta(minutes=30)
        dist.init_process_group(backend=backend, timeout=timeout, **_restart_store(rank, world_size, timeout))
        atexit.register(shutdown, context)  # at the end of the last run in this process
        logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, device)
    return context


def _restart_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dict:
    """After torchrun restarted the workers (``--max-restarts``): the process group's store under a
    prefix of this attempt. torch 2.13 reuses the store of the failed attempt without one, and the
    new workers then read the old workers' addresses and fail to connect ("Connection refused")."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return {}
    store = torchrun_store("process-group", rank, world_size, timeout)
    return {"store": store, "rank": rank, "world_size": world_size}


def ranks_on_node(context: DistributedContext) -> int:
    """The training processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``; else all of them)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size))


#: In a run folder: the torchrun job (``TORCHELASTIC_RUN_ID``) whose first attempt started or
#: restarted the run there; only workers that torchrun restarts in that same job continue it.
JOB_MARKER = ".torchrun-job"


def mark_job(run_dir: Path, context: DistributedContext) -> None:
    """On the first attempt of a torchrun job, record the job in ``run_dir`` (main process only)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if context.is_main and run_id and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        write_text(run_dir / JOB_MARKER, run_id)


def restarted_in_run(config_file: Path, last: Path, config: Config) -> bool:
    """Whether torchrun restarted this job's workers after one failed (``--max-restarts``) and the
    run of ``config_file`` (its config.yaml) and ``last`` (its last.pt) is the one this job's
    first attempt started, with ``config``: they then continue it from ``last``, whatever
    ``--overwrite`` said (the first attempt did that)."""
    marker = config_file.parent / JOB_MARKER
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or not marker.is_file():
        return False
    if marker.read_text().strip() != os.environ.get("TORCHELASTIC_RUN_ID") or not config_file.is_file():
        return False
    if not last.is_file() or load_config(config_file) != config:
        return False
    logger.info("torchrun restarted the workers; continuing the run in %s", config_file.parent)
    return True


def data_parallel(network: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """``network`` wrapped in DistributedDataParallel in a job of several processes, else itself."""
    if not context.enabled:
        return network
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over all processes (a no-op in a single process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean_over_ranks(value: float, context: DistributedContext) -> float:
    """The mean of ``value`` over all processes, rounded to float32 with any number of them."""
    total = all_reduce_sum(torch.tensor([value], device=context.device), context)
    return float((total / context.world_size).item())


def check_same_start(start_epoch: int, run_dir: Path, context: DistributedContext) -> None:
    """Raise ``TrainingError`` on every process unless all of them start at ``start_epoch``:
    a node that sees another ``run_dir`` (not one shared folder) would train other epochs."""
    if not context.enabled:
        return
    bounds = torch.tensor([start_epoch, -start_epoch], device=context.device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    latest, earliest = int(bounds[0]), -int(bounds[1])
    if latest != earliest:
        raise TrainingError(
            f"the processes would start at different epochs ({earliest + 1} to {latest + 1}): every node "
            f"must see the same run folder {run_dir} (a shared filesystem, mounted at the same path)"
        )


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (a no-op when it has been left already)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
