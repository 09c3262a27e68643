"""glibc malloc tuning: freed activation-sized blocks are reused instead of re-faulted."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from volseg import allocator

SCRIPT = """
import resource, torch
from volseg.allocator import keep_freed_memory
applied = keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, above glibc's largest mmap threshold
    del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is for glibc malloc")


def _run(tuning: str) -> tuple[bool, int]:
    environment = dict(os.environ, VOLSEG_MALLOC_TUNING=tuning)
    output = subprocess.run([sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True, check=True)
    applied, faults = output.stdout.split()
    return applied == "True", int(faults)


@glibc_only
@pytest.mark.slow
def test_tuned_allocator_reuses_freed_blocks_instead_of_faulting_them_in_again():
    applied, tuned_faults = _run("1")
    untouched, plain_faults = _run("0")
    assert applied and not untouched
    pages = 64 * 2**20 // 4096
    assert plain_faults > 10 * pages  # every 64 MiB block mapped and faulted in anew
    # Faulted in once and reused, give or take the kernel: more than 3x fewer faults on an idle
    # machine, 2.5-2.9x while two training processes ran (2026-12-01); 2x is the bound.
    assert tuned_faults < plain_faults / 2


def test_tuning_is_applied_once_and_remembered(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("VOLSEG_MALLOC_TUNING", "0")
    assert allocator.keep_freed_memory() is False
    monkeypatch.setenv("VOLSEG_MALLOC_TUNING", "1")
    assert allocator.keep_freed_memory() is False  # decided once per process
