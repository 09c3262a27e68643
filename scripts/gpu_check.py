"""The GPU check: one table of what volseg's CUDA paths do on one GPU (docs/performance.md, "GPU check").

Each row is its own function (in scripts/gpu_check_rows.py), run under its own time limit; a row that
fails prints FAIL with a one-line reason and the next row runs. Rows:

  resume                 train one epoch, then resume from last.pt for a second (RNG states, optimiser)
  DDP                    torchrun --nproc_per_node 1: NCCL DDP (forced: volseg skips DDP for one process)
                         around a 4-stage U-Net with deep supervision, 2 epochs
  steps fp32/fp16/bf16   training steps/s of configs/brats.yaml's network on a fixed synthetic batch of
                         BraTS shape (Trainer._step; fp16 with the gradient scaler); the loss must fall over
                         the steps, never inf/NaN
  syncs per step         host-device syncs in a bf16 step, counted from torch.cuda.set_sync_debug_mode("warn")
  data wait              the trainer's share of an epoch spent waiting for patches, 2 and 8 workers, on
                         synthetic BraTS-sized cases (4 x 240 x 240 x 155)
  sliding window         a 4 x 155 x 240 x 240 volume with 8-fold mirroring, fp32 and bf16: volseg against
                         MONAI's sliding_window_inference on the same network and GPU
  peak memory            a 100-class network on 300 x 512 x 512 through the Predictor: peak GPU memory
                         against the C x D x H x W float32 logits it never needs there
  pytest -m gpu          the tests marked gpu

Usage (from the repository root; scripts/gpu_check.sh installs the wheels and calls this):
    python scripts/gpu_check.py                 # on a CUDA GPU
    python scripts/gpu_check.py --cpu-dry-run   # the same rows on the CPU with tiny sizes: tests the plumbing
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # volseg, and gpu_check_rows and gpu_check_data beside this file

from gpu_check_rows import (  # noqa: E402
    DRY,
    GPU,
    Check,
    Sizes,
    Skip,
    ddp_worker,
    row_data_wait,
    row_ddp,
    row_peak_memory,
    row_pytest,
    row_resume,
    row_steps,
    row_syncs,
    row_window,
)

#: The whole table's budget: rows that would start after it are skipped (the shell script allows 8 minutes).
TOTAL_SECONDS = 430


# ---------------------------------------------------------------------------------------------- rows
Row = tuple[str, str, Callable[[Check], str]]  # (name, kind of time limit, function)


def rows(sizes: Sizes) -> list[Row]:
    """The table's rows, in order."""
    few, many = sizes.workers
    return [
        ("resume from last.pt", "resume", row_resume),
        ("DDP, 1 process, deep supervision", "ddp", row_ddp),
        ("BraTS network steps, fp32", "steps", lambda check: row_steps(check, "fp32")),
        ("BraTS network steps, fp16 + scaler", "steps", lambda check: row_steps(check, "fp16")),
        ("BraTS network steps, bf16", "steps", lambda check: row_steps(check, "bf16")),
        ("syncs per step", "syncs", row_syncs),
        (f"data wait, {few} workers", "wait", lambda check: row_data_wait(check, few)),
        (f"data wait, {many} workers", "wait", lambda check: row_data_wait(check, many)),
        ("sliding window + TTA, fp32", "window", lambda check: row_window(check, None)),
        ("sliding window + TTA, bf16", "window", lambda check: row_window(check, "bf16")),
        ("peak GPU memory, 100 classes", "peak", row_peak_memory),
        ("pytest -m gpu", "pytest", row_pytest),
    ]


# ---------------------------------------------------------------------------------------------- table
class RowTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`RowTimeout` in this (main) thread after ``seconds``."""

    def expire(*_args: object) -> None:
        raise RowTimeout(f"over its {seconds} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_row(check: Check, function: Callable[[Check], str], limit: int) -> tuple[str, str, float]:
    """``(status, text, seconds)`` of one row run for at most ``limit`` seconds: PASS, SKIP or FAIL
    with a one-line reason; never raises."""
    started = time.perf_counter()
    try:
        with time_limit(limit):
            status, text = "PASS", function(check)
    except Skip as reason:
        status, text = "SKIP", str(reason)
    except Exception as error:  # a failed row is reported and the next one runs
        lines = str(error).strip().splitlines()
        status, text = "FAIL", f"{type(error).__name__}: {lines[0] if lines else ''}"
    finally:
        gc.collect()
        if check.cuda:
            torch.cuda.empty_cache()
    return status, " ".join(text.split()), time.perf_counter() - started


def print_row(*cells: str) -> None:
    print("| " + " | ".join(cells) + " |", flush=True)


def run_table(check: Check, table: list[Row], budget: float = TOTAL_SECONDS) -> int:
    """Print the table, a row as it finishes, each row limited to what is left of ``budget`` seconds;
    return the number of FAIL rows."""
    where = torch.cuda.get_device_name() if check.cuda else "CPU dry run (tiny sizes)"
    print(f"volseg GPU check on {where}, torch {torch.__version__}", flush=True)
    print_row("check", "result", "details", "s")
    print_row("---", "---", "---", "---")
    started, failures = time.perf_counter(), 0
    for name, kind, function in table:
        left = int(budget - (time.perf_counter() - started))
        if left < 1:
            status, text, seconds = "SKIP", f"out of time: the table's {budget:.0f} s are spent", 0.0
        else:
            status, text, seconds = run_row(check, function, min(check.sizes.limits[kind], left))
        failures += status == "FAIL"
        print_row(name, status, text.replace("|", "/"), f"{seconds:.1f}")
    print(f"{failures} failed, {time.perf_counter() - started:.0f} s", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU: tests the plumbing")
    parser.add_argument("--work", help="folder for synthetic data and runs (default: a temporary one)")
    parser.add_argument("--only", help="comma-separated row numbers (1-based) to run")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = DRY if args.cpu_dry_run else GPU
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("volseg").setLevel(logging.ERROR)  # the table only
    warnings.filterwarnings("ignore", category=UserWarning, module="monai")
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("FAIL: torch.cuda.is_available() is False; use --cpu-dry-run on a machine without a GPU")
        return 1
    with contextlib.ExitStack() as stack:
        work = args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_"))
        check = Check(sizes, Path(work))
        if args.ddp_worker:
            ddp_worker(check)
            return 0
        table = rows(sizes)
        if args.only:
            table = [table[int(i) - 1] for i in args.only.split(",")]
        return 1 if run_table(check, table) else 0


if __name__ == "__main__":
    sys.exit(main())
