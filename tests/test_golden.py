"""Golden test: the bundled hippocampus model still gives its recorded labels on its sample.

A guard for refactors of the prediction path: the labels written by ``scripts/make_golden.py``
must come back on >= 99.9 % of the voxels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from volseg.bundled import bundled_models, bundled_sample
from volseg.inference.predictor import Predictor
from volseg.io import read_volume

GOLDEN = Path(__file__).parent / "golden"


def test_bundled_hippocampus_labels_match_the_golden_reference():
    recorded = json.loads((GOLDEN / "hippocampus_sample_labels.json").read_text())["model_sha256"]
    model = hashlib.sha256(bundled_models()["hippocampus"].read_bytes()).hexdigest()
    assert model == recorded, "the bundled hippocampus model changed: rerun scripts/make_golden.py on purpose"
    sample = bundled_sample("hippocampus")
    image = read_volume(sample / json.loads((sample / "sample.json").read_text())["images"][0])
    golden = read_volume(GOLDEN / "hippocampus_sample_labels.nii.gz")
    labels = Predictor.from_checkpoint("hippocampus", device="cpu", tta=False).predict(image)
    assert labels.shape == golden.array.shape and np.allclose(golden.affine, image.affine)
    assert np.mean(labels == golden.array) >= 0.999
    assert 2000 < int((golden.array > 0).sum()) < 5000  # the reference holds a hippocampus, not an empty map
