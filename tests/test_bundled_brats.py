"""The bundled BraTS model: small, and `volseg predict -m brats -i CASE_FOLDER` writes labels 1/2/4
on the input's grid, close to the reference on a case the model never trained on."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.bundled import bundled_models
from volseg.cli import main
from volseg.io import read_volume, same_grid
from volseg.metrics import evaluate_case

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

HELD_OUT = "Brats18_CBICA_ABM_1"  # runs/brats_cpu/fold_0 held this case out (docs/results.md lists the four)


def test_the_brats_model_is_bundled_and_at_most_20_mb():
    assert bundled_models()["brats"].stat().st_size <= 20 * 1024**2


def test_predict_a_brats_case_folder_writes_brats_labels_on_its_grid(tmp_path, real_data):
    case = real_data("brats2018", HELD_OUT)
    output = tmp_path / "seg.nii.gz"
    assert main(["predict", "-m", "brats", "-i", str(case), "-o", str(output), "--quiet"]) == 0
    prediction, flair = read_volume(output), read_volume(case / f"{HELD_OUT}_flair.nii.gz")
    assert same_grid(prediction, flair)
    assert set(np.unique(prediction.array)) <= {0, 1, 2, 4}
    reference = read_volume(case / f"{HELD_OUT}_seg.nii.gz").array
    scores = evaluate_case(prediction.array, reference, spacing=flair.spacing, structures={"WT": [1, 2, 4]})
    assert scores["WT"]["dice"] >= 0.7
