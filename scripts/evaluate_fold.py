"""Evaluate a training run on the cases it held out, file to file, as a user would.

    python scripts/evaluate_fold.py runs/hippocampus/fold_0 -o results/hippocampus_fold0

Predicts every validation case of the run's fold with its best checkpoint through
``volseg.Predictor`` (outputs on each input's grid; BraTS cases from their folders), then
scores them against the reference labels with ``volseg.metrics`` (Dice, IoU, HD95 and surface
Dice in mm, volumes; per region for region-trained models): writes ``predictions/``,
``report.csv`` and ``summary.json`` into the output folder.
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
    references, predictions = args.output / "references", args.output / "predictions"
    references.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_checkpoint(checkpoint_path, device="cpu", tta=args.tta)
    started = time.perf_counter()
    for case_id in val_ids:
        case = dataset.case(case_id)
        reference = references / f"{case_id}.nii.gz"  # named by case id: predictions pair with it by name
        if not reference.exists():
            os.symlink(case.label.resolve(), reference)
        # one file per case, or the case's folder for multi-channel cases (BraTS)
        source = case.images[0] if len(case.images) == 1 else case.images[0].parent
        predictor.predict_file(source, predictions / f"{case_id}.nii.gz", overwrite=True)
    seconds = time.perf_counter() - started
    if config.data.regions:  # scored as the regions the model was trained on (BraTS: WT, TC, ET)
        rows = evaluate_folders(predictions, references, regions=config.data.regions)
    else:
        rows = evaluate_folders(predictions, references, labels=[v for v in sorted(config.data.labels) if v != 0])
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
