"""Split a folder of cases between N independent workers: ``volseg predict --shard I/N``.

For job arrays (SLURM ``--array=0-N-1`` with ``--shard $SLURM_ARRAY_TASK_ID/N``) or any N
machines that see the same folders: each worker computes the same split from the input alone,
so nothing is shared but the output folder. Cases are dealt largest first to the least loaded
shard (by the bytes of their input files; ties by case id), so shards take about equally long;
every case is in exactly one shard. A worker skips the cases whose outputs exist, so a killed
shard is finished by starting it again.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from pathlib import Path

from volseg.errors import ConfigError

_SHARD = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; a one-line error otherwise."""
    match = _SHARD.match(text.strip())
    if match is None or not int(match.group(1)) < int(match.group(2)):
        raise ConfigError(f"--shard {text!r} is not valid; give I/N with 0 <= I < N, e.g. 0/4 (the first of 4 shards)")
    return int(match.group(1)), int(match.group(2))


def _size(paths: Sequence[Path]) -> int:
    total = 0
    for path in paths:
        if path.is_dir():  # a DICOM series
            total += sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        elif path.exists():
            total += path.stat().st_size
    return total


def shard_of(case_ids: Sequence[str], sizes: Sequence[int], count: int) -> dict[str, int]:
    """``{case id: shard}`` balancing the summed ``sizes`` over ``count`` shards (deterministic)."""
    order = sorted(range(len(case_ids)), key=lambda i: (-sizes[i], case_ids[i]))
    loads = [(0, shard) for shard in range(count)]  # (load, shard): the least loaded, then the lowest index
    heapq.heapify(loads)
    assignment = {}
    for i in order:
        load, shard = heapq.heappop(loads)
        assignment[case_ids[i]] = shard
        heapq.heappush(loads, (load + sizes[i], shard))
    return assignment


def select_shard(cases: Sequence, shard: tuple[int, int]) -> list:
    """The cases (objects with ``case_id`` and ``images``) of shard ``shard = (I, N)``, in their order."""
    index, count = shard
    assignment = shard_of([c.case_id for c in cases], [_size(c.images) for c in cases], count)
    return [case for case in cases if assignment[case.case_id] == index]
