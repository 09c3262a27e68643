"""Every file nibabel ships with its own tests through ``volseg predict``: a result on the input's
grid (exit 0) or one clean error line (exit 2); never a traceback or a partial output."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volseg.cli import main
from volseg.io import read_volume

ROOT = Path(nib.__file__).parent
FILES = sorted(
    p
    for folder in (ROOT / "tests" / "data", ROOT / "nicom" / "tests" / "data")
    if folder.is_dir()
    for p in folder.iterdir()
    if p.is_file()
)
MAX_MB = 4  # bigger files would make this test slow; none of nibabel's is


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.parent.parent.name}/{p.name}" for p in FILES])
def test_nibabel_test_file_predicts_or_fails_cleanly(path, tmp_path, capsys):
    if path.stat().st_size > MAX_MB * 1024**2:
        pytest.skip(f"over {MAX_MB} MB")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "-m",
            "hippocampus",
            "-i",
            str(path),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--overlap",
            "0",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 2), err
    written = sorted(p for p in out.rglob("*") if p.is_file()) if out.exists() else []
    written = [p for p in written if not p.name.endswith(("_labels.txt", ".ctbl"))]  # the label tables
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("volseg: error: ")]
        assert len(errors) == 1, err
        assert path.name in errors[0] or "channels" in errors[0], errors[0]
        assert written == [], f"partial output: {written}"
        return
    assert len(written) == 1 and written[0].name.endswith(".nii.gz"), written
    labels, image = read_volume(written[0]), read_volume(path, allow_nonfinite=True)
    assert labels.spatial_shape == image.spatial_shape
    np.testing.assert_allclose(labels.affine, image.affine, atol=1e-5)


def test_the_data_are_installed():
    names = {p.name for p in FILES}
    assert {"row_major.dconn.nii", "resampled_anat_moved.nii", "test.mgz", "tiny.mnc"} <= names
