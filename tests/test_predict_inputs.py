"""Which cases `volseg predict -i INPUT` finds."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from volseg.errors import InputFileError
from volseg.inference.inputs import find_inputs


def touch_volume(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))
    return path


def test_single_file_and_plain_folder(tmp_path):
    file = touch_volume(tmp_path / "a" / "scan.nii.gz")
    assert [c.case_id for c in find_inputs(file)] == ["scan"]
    touch_volume(tmp_path / "a" / "other.nrrd".replace(".nrrd", ".nii"))
    touch_volume(tmp_path / "a" / "scan_seg.nii.gz")  # a derived file, not a case
    assert [c.case_id for c in find_inputs(tmp_path / "a")] == ["other", "scan"]


def test_nnunet_channel_groups(tmp_path):
    for case in ("c1", "c2"):
        for channel in range(2):
            touch_volume(tmp_path / f"{case}_{channel:04d}.nii.gz")
    cases = find_inputs(tmp_path, channel_names=["t1", "t2"])
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [
        ("c1", ["c1_0000.nii.gz", "c1_0001.nii.gz"]),
        ("c2", ["c2_0000.nii.gz", "c2_0001.nii.gz"]),
    ]
    (tmp_path / "c2_0001.nii.gz").unlink()
    with pytest.raises(InputFileError, match="c2 has channels 0000"):
        find_inputs(tmp_path, channel_names=["t1", "t2"])


def test_brats_folders_in_both_conventions_give_the_model_order(tmp_path):
    for name in ("flair", "t1", "t1ce", "t2", "seg"):
        touch_volume(tmp_path / "old" / "Brats18_A" / f"Brats18_A_{name}.nii.gz")
    for name in ("t2f", "t1n", "t1c", "t2w"):
        touch_volume(tmp_path / "new" / f"BraTS-GLI-00001-000-{name}.nii.gz")
    model_channels = ["flair", "t1", "t1ce", "t2"]
    old = find_inputs(tmp_path / "old", channel_names=model_channels)
    assert [p.name.split("_")[-1] for p in old[0].images] == ["flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"]
    new = find_inputs(tmp_path / "new", channel_names=model_channels)
    assert new[0].brats_convention == "brats2023"
    assert [p.name.split("-")[-1] for p in new[0].images] == ["t2f.nii.gz", "t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz"]
    (tmp_path / "new" / "BraTS-GLI-00001-000-t1c.nii.gz").unlink()
    with pytest.raises(InputFileError, match="missing t1c"):
        find_inputs(tmp_path / "new", channel_names=model_channels)


def test_nothing_to_segment(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputFileError, match="found no volumes"):
        find_inputs(tmp_path)
    with pytest.raises(InputFileError, match="no such file"):
        find_inputs(tmp_path / "missing")
