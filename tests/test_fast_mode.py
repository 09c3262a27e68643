"""--fast: no mirroring and overlap 0.25 unless given; the windows stay the model's; a bundled model's int8 version."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from volseg.cli import main
from volseg.config import config_from_dict
from volseg.inference.predictor import FAST_OVERLAP, Predictor
from volseg.nn import create_model


def _predictor(**options):
    network = create_model("unet", 3, 1, 2, features=[4, 8, 16])
    config = config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "fg"}},
            "network": {"name": "unet", "options": {"features": [4, 8, 16]}},
            "sampling": {"patch_size": [32, 32, 32]},
            "inference": {"overlap": 0.5, "tta_flips": [0, 1, 2]},
        }
    )
    return Predictor(network, config, device="cpu", backend="torch", **options)


def test_fast_settings():
    fast = _predictor(fast=True, tta=None)
    assert fast.tta_flips == [] and fast.overlap == FAST_OVERLAP and fast.roi_size == [32, 32, 32]
    assert _predictor(fast=True, overlap=0.5).overlap == 0.5  # an explicit overlap wins
    assert _predictor(fast=True, tta=True).tta_flips == [0, 1, 2]  # and an explicit --tta
    assert _predictor().overlap == 0.5


def test_fast_labels_equal_the_default_at_the_fast_overlap():
    torch.manual_seed(0)
    fast = _predictor(fast=True)
    image = np.random.default_rng(0).normal(size=(40, 50, 20)).astype(np.float32)
    same = _predictor(overlap=FAST_OVERLAP, tta=False)
    same.network.load_state_dict(fast.network.state_dict())
    np.testing.assert_array_equal(same.predict(image), fast.predict(image))


def test_the_cli_flag(tmp_path):
    image = np.random.default_rng(1).normal(100.0, 20.0, (30, 40, 30)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "a.nii.gz"))
    argv = ["predict", "-m", "hippocampus", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "out.nii.gz")]
    assert main([*argv, "--fast", "--quiet"]) == 0
    assert np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj).shape == (30, 40, 30)


def test_fast_takes_a_bundled_models_int8_version_where_it_can_run():
    from volseg.bundled import int8_version

    assert int8_version("hippocampus") == "hippocampus-int8" and int8_version("hippocampus-int8") is None
    pytest.importorskip("openvino", reason="the int8 network runs on OpenVINO (pip install 'volseg[openvino]')")
    fast = Predictor.from_checkpoint("hippocampus", fast=True, device="cpu")
    assert fast.backend == "openvino" and fast.runner.precision == "int8"
    assert Predictor.from_checkpoint("hippocampus", device="cpu").runner.precision == "fp32"  # not without --fast
    assert Predictor.from_checkpoint("hippocampus", fast=True, backend="torch").backend == "torch"  # float weights
