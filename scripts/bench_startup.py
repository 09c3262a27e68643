"""Start-up cost of the command line: fresh processes, wall clock, medians.

Times ``volseg --help``, an argument error, ``volseg predict`` of the bundled demo case (each
backend) and, as the floor of any process that runs a PyTorch network, ``python -c "import torch"``.
Run it on an idle machine; the OpenVINO disk cache is warmed by one untimed run first.

    python scripts/bench_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "volseg" / "models" / "hippocampus_sample"
VOLSEG = [sys.executable, "-m", "volseg"]


def wall(command: list[str], repeats: int) -> list[float]:
    """Seconds each of ``repeats`` runs of ``command`` took (its output is discarded)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="volseg_startup_"))
    predict = [*VOLSEG, "predict", "-m", "hippocampus", "-i", str(SAMPLE), "-o", str(out), "--overwrite"]
    subprocess.run(predict, stdout=subprocess.DEVNULL, check=True)  # warm the OpenVINO disk cache
    rows = {
        "python -c 'import torch' (the floor)": [sys.executable, "-c", "import torch"],
        "volseg --help": [*VOLSEG, "--help"],
        "volseg predict, an argument error (--overlap 2)": [*predict, "--overlap", "2"],
        "volseg predict demo case (backend auto = OpenVINO)": predict,
        "volseg predict demo case (--backend torch)": [*predict, "--backend", "torch"],
    }
    print(f"{'command':<52} {'median s':>9}  all")
    for name, command in rows.items():
        times = wall(command, args.repeats)
        print(f"{name:<52} {statistics.median(times):9.2f}  {', '.join(f'{t:.2f}' for t in times)}", flush=True)


if __name__ == "__main__":
    main()
