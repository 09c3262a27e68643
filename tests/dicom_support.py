"""Builders of odd DICOM inputs for the tests of DICOM reading (test_dicom_read.py, the bad-input
corpus): a slice file rewritten with other tags, an enhanced multi-frame file made from a series,
and a comparison of two volumes voxel by voxel in world space."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from volseg.io import Volume
from volseg.io.formats import keep_locale


def rotation(axis: int, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


#: An oblique direction whose slice normal is tilted too (LPS columns), and a sheared one: the
#: slices step 11.3 degrees off their normal, as a CT gantry tilt makes them.
TILTED = rotation(0, 23.0) @ rotation(2, 15.0)
GANTRY_TILT = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 1.0]]) / [1.0, 1.0, np.hypot(1.0, 0.2)]


def rewrite_slice(source: Path, target: Path, tags: dict[str, str], *, position=None) -> Path:
    """Write the slice file ``source`` again as ``target`` with ``tags`` ("gggg|eeee": value) set,
    a new SOP instance UID and, when given, another ImagePositionPatient (LPS mm)."""
    image = sitk.ReadImage(str(source))
    image.SetMetaData("0008|0018", image.GetMetaData("0008|0018") + ".99")
    if position is not None:
        image.SetOrigin(tuple(float(v) for v in position))
        image.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
    for tag, value in tags.items():
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(target))
    with keep_locale():  # GDCM's writer sets the C locale for the whole process
        writer.Execute(image)
    return target


def enhanced_ct(series: Path, target: Path, *, leave_out=(), series_uid: str | None = None) -> Path:
    """An enhanced (legacy converted) CT multi-frame file made by highdicom from the slice files
    of ``series`` (without the files named in ``leave_out``); skips the test without highdicom."""
    pytest.importorskip("pydicom", reason="building a multi-frame DICOM needs pydicom (the dicom extra)")
    highdicom = pytest.importorskip(
        "highdicom", reason="building a multi-frame DICOM needs highdicom (the dicom extra)"
    )
    import pydicom
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    files = sorted(p for p in series.glob("*.dcm") if p.name not in leave_out)
    highdicom_logger = logging.getLogger("highdicom")
    level = highdicom_logger.level
    highdicom_logger.setLevel(logging.ERROR)  # notes on attributes our small series lacks
    try:
        image = LegacyConvertedEnhancedCTImage(
            [pydicom.dcmread(p) for p in files],
            series_instance_uid=series_uid or highdicom.UID(),
            series_number=2,
            sop_instance_uid=highdicom.UID(),
            instance_number=1,
        )
    finally:
        highdicom_logger.setLevel(level)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(target)
    return target


def edit_dicom(path: Path, edit) -> Path:
    """Apply ``edit(dataset)`` to the DICOM file ``path`` with pydicom and save it in place."""
    pydicom = pytest.importorskip("pydicom", reason="editing a DICOM file needs pydicom (the dicom extra)")
    dataset = pydicom.dcmread(path)
    edit(dataset)
    dataset.save_as(path)
    return path


def same_grid_index(got: Volume, expected: Volume, atol: float = 1e-3) -> tuple[np.ndarray, ...]:
    """Assert that the voxel centres of ``got`` are those of ``expected`` (its axes may run the
    other way, to ``atol`` voxels); return, for each voxel of ``got`` in C order, its index in ``expected``."""
    assert np.prod(got.spatial_shape) == np.prod(expected.spatial_shape)
    ijk = np.indices(got.spatial_shape).reshape(3, -1).astype(float)
    world = got.affine[:3, :3] @ ijk + got.affine[:3, 3:]
    there = np.linalg.solve(expected.affine[:3, :3], world - expected.affine[:3, 3:])
    index = np.round(there).astype(int)
    np.testing.assert_allclose(there, index, atol=atol)
    assert (index >= 0).all() and (index < np.array(expected.spatial_shape)[:, None]).all()
    return tuple(index)


def assert_same_voxels(got: Volume, expected: Volume, atol: float = 1e-3) -> None:
    """``got`` holds ``expected``'s voxels, each at the same place in the world (:func:`same_grid_index`)."""
    index = same_grid_index(got, expected, atol)
    np.testing.assert_array_equal(got.array.reshape(-1), expected.array[index])
