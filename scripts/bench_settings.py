"""Speed and accuracy of predict settings on held-out cases: the table of docs/performance.md.

Each setting segments the same held-out cases file to file (``Predictor.predict_file``; reading,
preprocessing, network, writing) and is scored per label or region with volseg's metrics. Printed
per setting: the median seconds per case, its ratio to the first setting, and the mean Dice of
every structure with its change from the first setting. Run it on an idle machine.

    python scripts/bench_settings.py -m brats --splits runs/brats_cpu_v2/fold_0/splits.json
    python scripts/bench_settings.py -m hippocampus --splits runs/hippocampus/fold_0/splits.json --cases 10
    python scripts/bench_settings.py -m brats --int8 brats-int8.pt ...   # adds the int8 rows

One untimed case first warms each setting up (OpenVINO compiles the network for its window
once per process, or loads it from the disk cache). Settings: torch (the network in PyTorch), the
default (``auto``: OpenVINO fp32 where installed), ``--fast``'s settings on the float network, ``--fast``
itself (a bundled model's int8 version where one is shipped), and with ``--int8`` that checkpoint.
Mirroring is off in every row (the CPU default); ``--mirroring`` adds it
everywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from volseg import runtime
from volseg.bundled import resolve_model
from volseg.checkpoint import checkpoint_config, checkpoint_label_space, load_checkpoint
from volseg.data.datasets import find_cases
from volseg.inference.predictor import Predictor
from volseg.metrics import evaluate_files


def held_out(root: str, splits: str, fold: int, count: int | None):
    """The fold's held-out cases (``"val"`` of the splits file) of the dataset in ``root``."""
    names = json.loads(Path(splits).read_text())[fold]["val"]
    cases = {case.case_id: case for case in find_cases(root).cases}
    chosen = [cases[name] for name in names if name in cases]
    return chosen[:count] if count else chosen


def run(model: str, options: dict, cases, structures, repeats: int) -> tuple[float, dict[str, float]]:
    """Median seconds per case (best of ``repeats`` per case) and mean Dice per structure."""
    predictor = Predictor.from_checkpoint(model, device="cpu", **options)
    seconds, dice = [], {name: [] for name in structures}
    with tempfile.TemporaryDirectory() as folder:
        warm = cases[0].images[0].parent if len(cases[0].images) > 1 else cases[0].images[0]
        predictor.predict_file(warm, Path(folder) / "warm-up.nii.gz")  # compiles: not timed (a process does it once)
        for case in cases:
            source = case.images[0].parent if len(case.images) > 1 else case.images[0]
            output = Path(folder) / f"{case.case_id}.nii.gz"
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                predictor.predict_file(source, output, overwrite=True)
                times.append(time.perf_counter() - started)
            seconds.append(min(times))
            for name, metrics in evaluate_files(output, case.label, regions=structures).items():
                dice[name].append(metrics["dice"])
    return statistics.median(seconds), {name: statistics.fmean(values) for name, values in dice.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", required=True, help="checkpoint or bundled model name")
    parser.add_argument("--splits", required=True, help="the splits.json whose held-out cases are scored")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--data", help="dataset folder (default: the model's data.root)")
    parser.add_argument("--cases", type=int, help="score only the first N held-out cases")
    parser.add_argument("--int8", help="the quantized checkpoint of the same model (volseg quantize)")
    parser.add_argument("--mirroring", action="store_true", help="mirror in every setting")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (the best counts)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    runtime.apply(runtime.Runtime(threads=args.threads), record=False)
    checkpoint = load_checkpoint(resolve_model(args.model))
    structures = checkpoint_label_space(checkpoint).structures()
    cases = held_out(args.data or str(checkpoint_config(checkpoint).data.root), args.splits, args.fold, args.cases)
    common = {"tta": args.mirroring}
    float_file = str(resolve_model(args.model))  # a file: --fast keeps its float network
    settings = [
        ("torch", args.model, {"backend": "torch"}),
        ("default (auto)", args.model, {}),
        ("fp32 --fast settings", float_file, {"fast": True}),
        ("--fast", args.model, {"fast": True}),  # a bundled model's int8 version, where one is shipped
    ]
    if args.int8:
        settings.append(("int8", args.int8, {"backend": "openvino"}))
    print(f"{args.model}: {len(cases)} held-out case(s), {args.threads} thread(s), torch {torch.__version__}")
    print("speed-ups against the torch row and the default row; Dice change against the torch row")
    first = default = None
    for name, model, options in settings:
        seconds, dice = run(model, {**common, **options}, cases, structures, args.repeats)
        first = first or (seconds, dice)
        default = seconds if name.startswith("default") else default
        against_default = f" x{default / seconds:5.2f} default" if default else ""
        scores = ", ".join(f"{k} {v:.4f} ({v - first[1][k]:+.4f})" for k, v in dice.items())
        print(
            f"{name:<22} {seconds:7.2f} s/case  x{first[0] / seconds:5.2f} torch{against_default}   Dice {scores}",
            flush=True,
        )


if __name__ == "__main__":
    main()
