"""Cases per minute of a folder run: one process with every core, or K torchrun ranks sharing them.

Each configuration segments the same folder into a fresh output folder, as a user runs it (a new
process, model loading and the OpenVINO conversion from the disk cache included; one warm-up run
fills that cache first). Run it on an idle machine.

    python scripts/bench_ranks.py -m hippocampus -i ../shared/data/msd-hippocampus/imagesTr --cases 24
    python scripts/bench_ranks.py -m brats -i CASES --ranks 1 2 4 --backend torch
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def folder_of(source: Path, count: int, into: Path) -> Path:
    """The first ``count`` volume files or case folders of ``source``, linked into ``into``."""
    into.mkdir()
    entries = sorted(p for p in source.iterdir() if not p.name.startswith("."))[:count]
    for entry in entries:
        (into / entry.name).symlink_to(entry.resolve())
    return into


def run(model: str, inputs: Path, output: Path, ranks: int, backend: str, threads: int) -> float:
    """Seconds for one folder run with ``ranks`` processes (torchrun when more than one)."""
    predict = ["-m", "volseg", "predict", "-m", model, "-i", str(inputs), "-o", str(output), "--quiet"]
    predict += ["--backend", backend, "--no-report"]
    if ranks == 1:
        command = [sys.executable, *predict]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *predict]
    environment = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // ranks))}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="hippocampus")
    parser.add_argument("-i", "--input", required=True, help="a folder of cases")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores to share out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        inputs = folder_of(Path(args.input), args.cases, Path(work) / "in")
        count = len(list(inputs.iterdir()))
        run(
            args.model, folder_of(Path(args.input), 1, Path(work) / "warm"), Path(work) / "warm-out", 1, args.backend, 1
        )
        print(f"{args.model}, {count} cases, {args.threads} cores, backend {args.backend}")
        for ranks in args.ranks:
            seconds = run(args.model, inputs, Path(work) / f"out{ranks}", ranks, args.backend, args.threads)
            per_rank = max(1, args.threads // ranks)
            print(
                f"{ranks} process(es) x {per_rank} thread(s): {seconds:6.1f} s, {60 * count / seconds:6.1f} cases/min"
            )


if __name__ == "__main__":
    main()
