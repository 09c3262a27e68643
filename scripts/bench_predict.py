"""End-to-end prediction of one case, file to file, against the pure network time.

Times ``Predictor.predict_file`` on a BraTS case (4 NIfTI files in, a label map out) and splits
the wall time into the network's forward calls (hooks around the network), the sliding
window's own work, and everything else (reading, preprocessing, resampling back, writing).
The target is end to end <= 1.3x the pure network time. Also times the whole
``volseg predict`` command in a fresh process (Python and library start-up included).

The default model is configs/brats_cpu.yaml's network at 1 mm (the data's own spacing)
with random weights and 96^3 windows, BraTS-scale work without a trained model;
``-m`` takes a checkpoint or bundled model name instead.

    python scripts/bench_predict.py                          # first BraTS case in ../shared/data
    python scripts/bench_predict.py -m brats -i CASE_FOLDER --repeats 3
    python scripts/bench_predict.py --batch 8 --threads 1   # windows per call vs page faults
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from volseg import runtime
from volseg.checkpoint import build_checkpoint, save_checkpoint
from volseg.config import load_config
from volseg.inference.predictor import Predictor
from volseg.training import build_network

REPOSITORY = Path(__file__).resolve().parents[1]
BRATS = REPOSITORY.parent / "shared" / "data" / "brats2018"


class ForwardTimer:
    """Adds up the wall time of every forward call of ``network`` (pre/post hooks)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.seconds, self._started = 0.0, 0.0
        network.register_forward_pre_hook(self._start)
        network.register_forward_hook(self._stop)

    def _start(self, *_args: object) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_args: object) -> None:
        self.seconds += time.perf_counter() - self._started


def random_brats_checkpoint(folder: Path) -> Path:
    """configs/brats_cpu.yaml's network, 1 mm, 96^3 windows, seeded random weights."""
    config = load_config(
        REPOSITORY / "configs" / "brats_cpu.yaml",
        ["preprocessing.spacing=[1.0, 1.0, 1.0]", "inference.roi_size=[96, 96, 96]"],
    )
    torch.manual_seed(0)
    network = build_network(config, len(config.data.channels)).eval()
    return save_checkpoint(build_checkpoint(network, config), folder / "brats_random_1mm.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", help="checkpoint or bundled model (default: random 1 mm BraTS network)")
    parser.add_argument("-i", "--input", type=Path, help="BraTS case folder (default: the first in ../shared/data)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", default=None, help="windows per network call, N or auto (default: the model's)")
    args = parser.parse_args()
    if args.input is None:
        if not BRATS.is_dir():
            raise SystemExit(f"no BraTS data at {BRATS}; give a case folder with -i")
        args.input = sorted(p for p in BRATS.iterdir() if p.is_dir())[0]
    runtime.apply(runtime.Runtime(threads=args.threads))  # as the CLI: allocator tuning, threads
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model = args.model or str(random_brats_checkpoint(folder))
        batch = int(args.batch) if args.batch not in (None, "auto") else args.batch  # None: the model's own
        predictor = Predictor.from_checkpoint(model, device="cpu", tta=False, sw_batch_size=batch)
        timer = ForwardTimer(predictor.network)
        print(
            f"# {args.threads} threads, torch {torch.__version__}; "
            f"model {args.model or 'random 1 mm BraTS network'}, "
            f"window {predictor.roi_size}, batch {predictor.sw_batch_size}; case {args.input}"
        )
        rows = []
        for repeat in range(args.repeats + 1):  # the first is a warm-up
            timer.seconds, before = 0.0, resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            predictor.predict_file(args.input, folder / "out" / f"{repeat}.nii.gz", overwrite=True)
            total = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)  # page faults: the first touch of activations
            print(
                f"# call {repeat + 1}: {total:.2f} s, user {after.ru_utime - before.ru_utime:.1f} s, system "
                f"{after.ru_stime - before.ru_stime:.1f} s, {after.ru_minflt - before.ru_minflt} page faults, "
                f"peak RSS {after.ru_maxrss / 1024:.0f} MiB"
            )
            if repeat:
                rows.append((total, timer.seconds))
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "volseg",
                "predict",
                "-m",
                model,
                "-i",
                str(args.input),
                "-o",
                str(folder / "cli.nii.gz"),
                "--device",
                "cpu",
                "--no-tta",
                "--quiet",
            ],
            check=True,
        )
        command = time.perf_counter() - started
    total, network = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    print(f"{'predict_file, median s':<40} {total:8.2f}")
    print(f"{'  network forward calls':<40} {network:8.2f}")
    print(f"{'  everything else':<40} {total - network:8.2f}")
    print(f"{'end to end / network':<40} {total / network:8.2f}x   (target <= 1.3x)")
    print(f"{'volseg predict command (fresh process)':<40} {command:8.2f}   ({command / network:.2f}x the network)")
    print(f"# all (total, network) s: {[(round(a, 2), round(b, 2)) for a, b in rows]}")


if __name__ == "__main__":
    main()
