"""Write the golden labels of the bundled hippocampus model on its sample case.

    python scripts/make_golden.py

``tests/test_golden.py`` checks that the bundled model still gives these labels (>= 99.9 % of
voxels equal) through every refactor. Rerun this only when the bundled model itself is replaced
on purpose: the JSON beside the labels records the model's checksum, and the test says when it
no longer matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from volseg.bundled import bundled_models, bundled_sample
from volseg.inference.predictor import Predictor
from volseg.io import read_volume, write_volume

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


def main() -> None:
    sample = bundled_sample("hippocampus")
    image = sample / json.loads((sample / "sample.json").read_text())["images"][0]
    volume = read_volume(image)
    labels = Predictor.from_checkpoint("hippocampus", device="cpu", tta=False).predict(volume)
    GOLDEN.mkdir(exist_ok=True)
    write_volume(GOLDEN / "hippocampus_sample_labels.nii.gz", labels, volume, overwrite=True)
    digest = hashlib.sha256(bundled_models()["hippocampus"].read_bytes()).hexdigest()
    (GOLDEN / "hippocampus_sample_labels.json").write_text(json.dumps({"model_sha256": digest}, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {int((labels > 0).sum())} foreground voxels, model {digest[:16]}")


if __name__ == "__main__":
    main()
