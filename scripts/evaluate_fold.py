"""Evaluate a training run on the cases it held out, file to file, as a user would.

    python scripts/evaluate_fold.py runs/hippocampus/fold_0 -o results/hippocampus_fold0

Predicts every validation case of the run's fold with its best checkpoint through
``volseg.Predictor`` (outputs on each input's grid), then scores them against the reference
labels with ``volseg.metrics`` (Dice, IoU, HD95 and surface Dice in mm, volumes): writes
``predictions/``, ``report.csv`` and ``summary.json`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from volseg.checkpoint import checkpoint_config, load_checkpoint
from volseg.data.datasets import find_cases
from volseg.data.splits import load_folds, split_for_fold
from volseg.metrics import evaluate_folders, summarise, write_report_csv
from volseg.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    args = parser.parse_args()

    checkpoint_path = args.run_dir / args.checkpoint
    config = checkpoint_config(load_checkpoint(checkpoint_path))
    _, val_ids = split_for_fold(load_folds(args.run_dir / "splits.json"), config.data.fold)
    dataset = find_cases(config.data.root, layout=config.data.layout)
    inputs, references = args.output / "inputs", args.output / "references"
    for folder in (inputs, references):
        folder.mkdir(parents=True, exist_ok=True)
    for case_id in val_ids:  # links named by case id: the folder run pairs predictions and references by name
        case = dataset.case(case_id)
        for source, target in ((case.images[0], inputs / f"{case_id}.nii.gz"), (case.label, references / f"{case_id}.nii.gz")):
            if not target.exists():
                os.symlink(source.resolve(), target)
    predictor = Predictor.from_checkpoint(checkpoint_path, device="cpu", tta=args.tta)
    started = time.perf_counter()
    predictor.predict_folder(inputs, args.output / "predictions", overwrite=True)
    seconds = time.perf_counter() - started
    labels = [value for value in sorted(config.data.labels) if value != 0]
    rows = evaluate_folders(args.output / "predictions", references, labels=labels)
    summary = summarise(rows)
    write_report_csv(rows, summary, args.output / "report.csv", overwrite=True)
    names = {str(value): name for value, name in config.data.labels.items()}
    result = {
        "run": str(args.run_dir), "checkpoint": args.checkpoint, "epoch_metrics": load_checkpoint(checkpoint_path)["metrics"],
        "cases": len(val_ids), "case_ids": val_ids, "tta": args.tta, "predict_seconds_total": round(seconds, 1),
        "summary": {names.get(k, k): v for k, v in summary.items()},
    }
    (args.output / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    for structure, metrics in result["summary"].items():
        print(f"{structure:>10}: Dice {metrics['dice']['mean']:.4f} ± {metrics['dice']['std']:.4f}, "
              f"HD95 {metrics['hd95']['mean']:.2f} mm, surface Dice {metrics['surface_dice']['mean']:.4f}")
    print(f"{len(val_ids)} held-out cases predicted in {seconds:.1f} s; report in {args.output}")


if __name__ == "__main__":
    main()
