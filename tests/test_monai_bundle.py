"""MONAI bundle export: the bundle runs under MONAI's own runner and agrees with ``volseg predict``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from test_export import make_checkpoint

from volseg.bundled import bundled_sample
from volseg.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict
from volseg.errors import ConfigError, OutputExistsError
from volseg.export import export_model
from volseg.export.monai_bundle import BUNDLE_FILES
from volseg.nn import create_model

pytest.importorskip("monai.bundle")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _labels(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _run_workflow(bundle, dataset_dir, output_dir) -> None:
    """MONAI's runner in this process: the class ``python -m monai.bundle run`` builds."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs/inference.json"),
        workflow_type=None,
        logging_file=False,
        bundle_root=str(bundle),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
    )
    workflow.initialize()
    workflow.run()
    torch.set_grad_enabled(True)  # the bundle's initialize turns gradients off in its process


def test_the_bundled_model_runs_under_monais_runner_and_agrees_with_predict(tmp_path):
    bundle, inputs, outputs = tmp_path / "bundle", tmp_path / "in", tmp_path / "out"
    assert main(["export", "hippocampus", "--format", "monai-bundle", "-o", str(bundle), "--quiet"]) == 0
    assert all((bundle / f).is_file() for f in BUNDLE_FILES)
    image = next(bundled_sample("hippocampus").glob("*.nii.gz"))
    inputs.mkdir()
    (inputs / image.name).symlink_to(image)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs/inference.json")]
    command += ["--bundle_root", str(bundle), "--dataset_dir", str(inputs), "--output_dir", str(outputs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ours = tmp_path / "volseg.nii.gz"
    assert main(["predict", "-m", "hippocampus", "-i", str(image), "-o", str(ours), "--no-tta", "--quiet"]) == 0
    theirs = outputs / image.name.replace(".nii.gz", "_seg.nii.gz")
    assert (_labels(theirs) == _labels(ours)).mean() >= 0.999
    np.testing.assert_allclose(nib.load(str(theirs)).affine, nib.load(str(image)).affine, atol=1e-5)
    metadata = json.loads((bundle / "configs/metadata.json").read_text())
    assert metadata["name"] == "hippocampus"
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "background",
        "1": "Anterior",
        "2": "Posterior",
    }


def test_a_region_model_with_two_channels_decodes_its_regions(tmp_path):
    regions = {"WT": [1, 2], "TC": [2]}
    _, checkpoint = make_checkpoint(regions=regions)
    model_path = save_checkpoint(checkpoint, tmp_path / "model.pt")
    bundle = tmp_path / "bundle"
    export_model(load_checkpoint(model_path), bundle, fmt="monai-bundle")
    case = tmp_path / "in" / "case1"
    case.mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for channel in ("t1", "flair"):
        array = rng.normal(50.0, 40.0, (16, 14, 10)).astype(np.float32)  # one window: no blending
        nib.save(nib.Nifti1Image(array, affine), str(case / f"case1_{channel}.nii.gz"))
    _run_workflow(bundle, tmp_path / "in", tmp_path / "out")
    ours = tmp_path / "volseg" / "case1.nii.gz"
    argv = ["predict", "-m", str(model_path), "-i", str(case), "-o", str(ours), "--no-tta", "--save-probabilities"]
    assert main([*argv, "--quiet"]) == 0
    theirs = _labels(tmp_path / "out" / "case1_t1_seg.nii.gz")
    assert theirs.shape == (16, 14, 10)
    assert set(np.unique(theirs)) <= {0, 1, 2}
    # One window, so the two blenders do not differ (MONAI floors the Gaussian weights at 1e-3 of
    # the centre, volseg does not, which an untrained network's disagreeing windows magnify); an
    # untrained network leaves regions near probability 0.5: compare the voxels that are no near-tie.
    probabilities = np.asarray(nib.load(str(tmp_path / "volseg" / "case1_probabilities.nii.gz")).dataobj)
    decided = (np.abs(probabilities - 0.5) > 0.02).all(axis=-1)
    assert decided.mean() > 0.3
    assert (theirs == _labels(ours))[decided].mean() >= 0.999


def test_a_valid_convolution_network_is_refused_and_nothing_is_written(tmp_path):
    model = create_model("unet-paper", 3, 2, 3, features=[4, 8, 16])
    roi = list(model.nearest_valid_shape([40, 40, 40], "up"))
    config = config_from_dict(
        {
            "data": {"channels": ["t1", "flair"], "labels": {0: "background", 1: "a", 2: "b"}},
            "network": {"name": "unet-paper", "options": {"features": [4, 8, 16]}},
            "sampling": {"patch_size": roi},
        }
    )
    with pytest.raises(ConfigError, match="smaller than its window"):
        export_model(build_checkpoint(model, config), tmp_path / "bundle", fmt="monai-bundle")
    assert not (tmp_path / "bundle").exists()


def test_existing_bundle_files_are_kept_without_overwrite(tmp_path):
    _, checkpoint = make_checkpoint()
    export_model(checkpoint, tmp_path, fmt="monai-bundle")
    before = (tmp_path / "configs/inference.json").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_model(checkpoint, tmp_path, fmt="monai-bundle")
    assert (tmp_path / "configs/inference.json").read_text() == before
    export_model(checkpoint, tmp_path, fmt="monai-bundle", overwrite=True)


def test_the_bundle_records_volsegs_preprocessing(tmp_path):
    _, checkpoint = make_checkpoint()
    export_model(checkpoint, tmp_path, fmt="monai-bundle")
    inference = json.loads((tmp_path / "configs/inference.json").read_text())
    steps = {step["_target_"]: step for step in inference["preprocessing"]["transforms"]}
    assert steps["Spacingd"]["pixdim"] == [1.0, 1.0, 2.0]
    # CT preset: clip to [-100, 200], then (x - 50) / 25
    assert (steps["ScaleIntensityRanged"]["b_min"], steps["ScaleIntensityRanged"]["b_max"]) == (-6.0, 6.0)
    assert inference["inferer"]["overlap"] == 0.25 and inference["inferer"]["roi_size"] == [16, 16, 16]
    assert inference["channels"] == ["t1", "flair"]


def test_a_2d_network_is_refused(tmp_path):
    network = create_model("unet", 2, 2, 3, features=[4, 8])
    config = config_from_dict(
        {
            "data": {"channels": ["t1", "flair"], "labels": {0: "background", 1: "a", 2: "b"}},
            "network": {"name": "unet", "spatial_dims": 2, "options": {"features": [4, 8]}},
            "sampling": {"patch_size": [32, 32]},
        }
    )
    with pytest.raises(ConfigError, match="only 3D networks"):
        export_model(build_checkpoint(network, config), tmp_path / "bundle", fmt="monai-bundle")
    assert not (tmp_path / "bundle").exists()
