"""Add the training fingerprint to a checkpoint written before volseg recorded one.

    python scripts/add_fingerprint.py volseg/models/hippocampus.pt --splits runs/hippocampus/fold_0/splits.json
    python scripts/add_fingerprint.py model.pt --data ../shared/data/msd-hippocampus -o model_fp.pt

Measures the cases the model learnt from (the training cases of its fold in ``--splits``, less
their validation cases; without ``--splits``, every labelled case of the dataset) in the dataset
folder (``--data``, default the checkpoint's ``data.root``) and stores the summary under
``fingerprint`` (:mod:`volseg.data.training_fingerprint`). Everything else, the weights included,
is kept as it is. The checkpoint is rewritten atomically (or written to ``-o``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from volseg.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from volseg.data.training_fingerprint import fingerprint_training_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="the checkpoint to add the fingerprint to")
    parser.add_argument("--data", help="the dataset folder it was trained on (default: its config's data.root)")
    parser.add_argument("--splits", type=Path, help="the run's splits.json: measure only its fold's training cases")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of rewriting the checkpoint")
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.checkpoint)
    fingerprint = fingerprint_training_cases(checkpoint_config(checkpoint), root=args.data, splits=args.splits)
    checkpoint["fingerprint"] = fingerprint.to_dict()
    target = save_checkpoint(checkpoint, args.output or args.checkpoint)
    print(f"wrote {target}: fingerprint of {fingerprint.cases} cases")
    print(json.dumps(checkpoint["fingerprint"]))


if __name__ == "__main__":
    main()
