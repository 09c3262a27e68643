"""--fast: one window over the whole volume where that is cheap, no mirroring, labels like the default's."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from volseg.cli import main
from volseg.config import config_from_dict
from volseg.inference.predictor import FAST_OVERLAP, Predictor
from volseg.nn import create_model


def _predictor(name="unet", **options):
    network = create_model(name, 3, 1, 2, features=[4, 8, 16])
    config = config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "fg"}},
            "network": {"name": name, "options": {"features": [4, 8, 16]}},
            "sampling": {"patch_size": [32, 32, 32]},
        }
    )
    return Predictor(network, config, device="cpu", backend="torch", **options)


def test_the_fast_window_covers_the_volume_rounded_up_to_multiples_of_32():
    fast = _predictor(fast=True)
    assert fast.window_for([40, 50, 20]) == [64, 64, 32]  # 131k voxels: 4 model windows
    assert fast.window_for([20, 20, 20]) == [32, 32, 32]  # covered by one model window already
    assert fast.window_for([100, 100, 100]) == [32, 32, 32]  # 128^3 is 64 windows: too large, tile instead
    assert fast.tta_flips == [] and fast.overlap == FAST_OVERLAP
    assert _predictor().window_for([40, 50, 20]) == [32, 32, 32]
    assert _predictor(fast=True, overlap=0.5).overlap == 0.5  # an explicit overlap wins


def test_a_valid_convolution_network_keeps_its_tiling():
    network = create_model("unet-paper", 3, 1, 2, features=[4, 8, 16])
    roi = list(network.nearest_valid_shape([40, 40, 40], "up"))
    config = config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "fg"}},
            "network": {"name": "unet-paper", "options": {"features": [4, 8, 16]}},
            "sampling": {"patch_size": roi},
        }
    )
    predictor = Predictor(network, config, device="cpu", backend="torch", fast=True)
    assert predictor.window_for([50, 50, 50]) == roi


def test_fast_labels_equal_one_window_of_the_whole_volume(tmp_path):
    torch.manual_seed(0)
    fast = _predictor(fast=True)
    image = np.random.default_rng(0).normal(size=(40, 50, 20)).astype(np.float32)
    labels = fast.predict(image)
    assert labels.shape == image.shape
    whole = _predictor(overlap=0.0)
    whole.network.load_state_dict(fast.network.state_dict())
    whole.roi_size = [64, 64, 32]  # one window, as fast mode picks
    np.testing.assert_array_equal(whole.predict(image), labels)


def test_the_cli_flag(tmp_path):
    image = np.random.default_rng(1).normal(100.0, 20.0, (30, 40, 30)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "a.nii.gz"))
    argv = ["predict", "-m", "hippocampus", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "out.nii.gz")]
    assert main([*argv, "--fast", "--quiet"]) == 0
    assert np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj).shape == (30, 40, 30)
