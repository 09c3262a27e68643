"""Bundle a trained run as a named model inside the package (``volseg predict -m NAME``).

    python scripts/bundle_model.py runs/hippocampus/fold_0 --name hippocampus --sample hippocampus_XXX
    python scripts/bundle_model.py runs/brats_cpu/fold_0 --name brats --no-sample

Writes ``volseg/models/NAME.pt`` (inference only, fp16 weights unless --fp32, with the training
fingerprint: the run's own, or measured on its fold's training cases when the checkpoint predates
it) and copies one case that the run held out for validation (image and label) into
``volseg/models/NAME_sample/`` with the dataset's attribution, so that the sample is never a case
the model trained on.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from volseg.checkpoint import checkpoint_config, inference_only, load_checkpoint, save_checkpoint
from volseg.data.datasets import find_cases
from volseg.data.splits import load_folds, split_for_fold
from volseg.data.training_fingerprint import fingerprint_training_cases

PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "volseg" / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the training run folder (holds best.pt and splits.json)")
    parser.add_argument("--name", required=True, help="the bundled model's name")
    parser.add_argument("--sample", help="case id of the sample (default: the first validation case)")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (default best.pt)")
    parser.add_argument(
        "--no-sample",
        action="store_true",
        help="ship no sample case (data whose licence does not allow redistribution, e.g. BraTS)",
    )
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16, half the size)")
    parser.add_argument("--attribution", type=Path, help="text file with the dataset's licence and citation")
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.run_dir / args.checkpoint)
    config = checkpoint_config(checkpoint)
    _, val_ids = split_for_fold(load_folds(args.run_dir / "splits.json"), config.data.fold)
    sample_id = args.sample or val_ids[0]
    if sample_id not in val_ids:
        raise SystemExit(
            f"{sample_id} was used for training; pick one of the validation cases: {', '.join(val_ids[:10])}"
        )
    slim = inference_only(checkpoint, half=not args.fp32)
    slim["metrics"] = {**checkpoint.get("metrics", {}), "bundled_from": str(args.run_dir / args.checkpoint)}
    if "fingerprint" not in slim:  # written before runs recorded it
        slim["fingerprint"] = fingerprint_training_cases(config, splits=args.run_dir / "splits.json").to_dict()
    target = save_checkpoint(slim, PACKAGE_MODELS / f"{args.name}.pt")
    if args.no_sample:
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB), no sample case")
        return

    case = find_cases(config.data.root, layout=config.data.layout).case(sample_id)
    sample_dir = PACKAGE_MODELS / f"{args.name}_sample"
    if sample_dir.exists():
        shutil.rmtree(sample_dir)
    (sample_dir / "label").mkdir(parents=True)
    for image in case.images:
        shutil.copy2(image, sample_dir / image.name)
    shutil.copy2(case.label, sample_dir / "label" / case.label.name)
    if args.attribution:
        shutil.copy2(args.attribution, sample_dir / "ATTRIBUTION.md")
    (sample_dir / "sample.json").write_text(
        json.dumps(
            {
                "case_id": sample_id,
                "images": [p.name for p in case.images],
                "label": f"label/{case.label.name}",
                "held_out_in": str(args.run_dir),
                "fold": config.data.fold,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB) and {sample_dir} (case {sample_id})")


if __name__ == "__main__":
    main()
