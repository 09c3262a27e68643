"""Fingerprint and planner: hand-checked rules, generated datasets, the real hippocampus plan."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volseg.cli import main
from volseg.config import load_config
from volseg.data.datasets import find_cases
from volseg.data.fingerprint import (
    fingerprint_case,
    fingerprint_dataset,
    nonzero_bounding_shape,
    reorient_shape_and_spacing,
)
from volseg.data.planner import (
    estimate_memory_bytes,
    plan_dataset,
    plan_patch,
    plan_target_spacing,
    plan_topology,
)
from volseg.nn import create_model

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_reorientation_permutes_shape_and_spacing():
    # Voxel axes i, j, k point to S, R, A: in RAS order the shape becomes (j, k, i).
    affine = np.array([[0, 2.0, 0, 0], [0, 0, 3.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    shape, spacing, permutation = reorient_shape_and_spacing((4, 5, 6), (1.0, 2.0, 3.0), affine)
    assert shape == [5, 6, 4] and spacing == [2.0, 3.0, 1.0] and list(permutation) == [1, 2, 0]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert reorient_shape_and_spacing((4, 5, 6), (1, 1, 1), lps)[0] == [4, 5, 6]


def test_nonzero_bounding_shape_by_hand():
    mask = np.zeros((6, 7, 8), bool)
    mask[1, 2, 3] = mask[4, 2, 5] = True
    assert nonzero_bounding_shape(mask) == [4, 1, 3]
    assert nonzero_bounding_shape(np.zeros((2, 3, 4), bool)) == [2, 3, 4]


def test_case_fingerprint_counts_and_samples_foreground(tmp_path, make_msd):
    dataset = find_cases(make_msd(tmp_path / "msd", cases=1))
    record = fingerprint_case(dataset.cases[0])
    label = np.asarray(nib.load(str(dataset.cases[0].label)).dataobj)
    values, counts = np.unique(label, return_counts=True)
    assert record.label_counts == dict(zip(values.tolist(), counts.tolist()))
    assert set(record.intensity_samples[0]) == {100.0}  # only voxels inside the label
    assert record.cropped_shape == [16, 20, 12] and record.shape == [20, 24, 16]


def test_anisotropic_target_spacing_uses_the_10th_percentile(tmp_path, make_msd):
    dataset = find_cases(make_msd(tmp_path / "msd", cases=2, spacing=(0.8, 0.8, 5.0)))
    fingerprint = fingerprint_dataset(dataset)
    fingerprint.spacing_percentile_10 = [0.8, 0.8, 4.0]
    assert plan_target_spacing(fingerprint) == pytest.approx([0.8, 0.8, 4.0])
    fingerprint.spacing_percentile_10 = [0.8, 0.8, 0.5]  # never finer than the other axes
    assert plan_target_spacing(fingerprint)[2] == pytest.approx(0.8 + 1e-5)


def test_topology_lets_a_coarse_axis_wait():
    topology = plan_topology([160, 160, 32], [0.8, 0.8, 3.0], 3)
    # z (3.0 mm) is more than twice x/y (0.8 mm): x/y halve alone first; at 1.6 mm z is within
    # twice the finest spacing and joins.
    assert topology.strides[:3] == [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    assert topology.kernel_sizes[:2] == [[3, 3, 1], [3, 3, 3]]
    assert topology.features[:3] == [32, 64, 128] and max(topology.features) == 320


def test_patch_shrinks_to_the_memory_budget():
    big, topology_big = plan_patch([200.0, 200.0, 200.0], [1.0, 1.0, 1.0], 3, 64 * 1024**3, 2)
    small, topology_small = plan_patch([200.0, 200.0, 200.0], [1.0, 1.0, 1.0], 3, 1024**3, 2)
    assert np.prod(small) < np.prod(big)
    assert estimate_memory_bytes(topology_small, small, 2, 2) <= 1024**3
    assert all(p % d == 0 for p, d in zip(small, topology_small.divisor))


def test_plan_config_builds_a_network_that_takes_its_patch(tmp_path, make_msd):
    config, fingerprint = plan_dataset(str(make_msd(tmp_path / "msd")))
    assert config.data.labels == {0: "background", 1: "outer", 2: "inner"}
    assert config.preprocessing.intensity == "mri" and config.data.regions is None
    model = create_model("unet", 3, 1, 3, **config.network.options)
    assert model.is_valid_input_shape(config.sampling.patch_size)
    assert config.inference.roi_size == config.sampling.patch_size
    assert config.inference.mask_nonzero is True  # MRI: the zero background is background


def test_ct_is_recognised_by_modality_or_by_hounsfield_air(tmp_path, make_msd):
    by_name, _ = plan_dataset(str(make_msd(tmp_path / "named", modality="CT")))
    by_values, _ = plan_dataset(str(make_msd(tmp_path / "air", modality="", offset=-1000.0)))
    for config in (by_name, by_values):
        assert config.preprocessing.intensity == "ct" and config.inference.mask_nonzero is False
        low, high = config.preprocessing.clip
        assert 100 <= low <= high <= 103  # the labelled voxels are 100 + case index


def test_two_dimensional_plan(tmp_path, make_msd):
    config, fingerprint = plan_dataset(str(make_msd(tmp_path / "msd")), spatial_dims=2)
    assert config.network.spatial_dims == 2 and len(config.sampling.patch_size) == 2
    assert all(len(s) == 2 for s in config.network.options["strides"])


def test_plan_cli_writes_a_config_train_accepts(tmp_path, capsys, make_msd):
    data, output = make_msd(tmp_path / "msd"), tmp_path / "plan.yaml"
    assert main(["plan", str(data), "-o", str(output), "--fingerprint", str(tmp_path / "fp.json"), "--quiet"]) == 0
    config = load_config(output)
    assert config.data.root == str(data)
    assert json.loads((tmp_path / "fp.json").read_text())["num_cases"] == 4
    assert main(["plan", str(data), "-o", str(output), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["plan", str(data), "-o", str(output), "--quiet", "--overwrite", "--dims", "2"]) == 0
    assert load_config(output).network.spatial_dims == 2
    assert main(["plan", str(tmp_path / "missing"), "--quiet"]) == 2


@pytest.mark.realdata
def test_real_hippocampus_plan_matches_nnunet_patch():
    root = SHARED_DATA / "msd-hippocampus"
    if not root.exists():
        pytest.skip(f"real data not found at {root}")
    config, fingerprint = plan_dataset(str(root), num_workers=2)
    assert fingerprint.num_cases == 208 and fingerprint.median_spacing == [1.0, 1.0, 1.0]
    # nnU-Net's published 3d_fullres plan for Task04 uses a 40 x 56 x 40 patch and 4 stages.
    assert config.sampling.patch_size == [40, 56, 40]
    assert config.network.options["features"] == [32, 64, 128, 256]
