"""Reading DICOM series and multi-frame files (volseg.io.dicom_geometry behind read_volume): a
missing slice, uneven spacing, a localizer in the series, gantry tilt and enhanced multi-frame
files give the right grid or a one-line error, never a wrong grid."""

from __future__ import annotations

import logging
import re
import shutil
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_support import GANTRY_TILT, TILTED, assert_same_voxels, edit_dicom, enhanced_ct, rewrite_slice
from io_support import error_of

from volseg.errors import InputFileError
from volseg.io import read_volume
from volseg.io.dicom_geometry import Stack, check_even_spacing

UID = "1.2.826.0.1.3680043.2.1125.9"


def _volume(n=6, rows=4, cols=3) -> np.ndarray:
    return np.arange(n * rows * cols, dtype=np.int16).reshape(n, rows, cols)  # z, y, x


def _assert_on_grid(volume, image: sitk.Image, atol: float = 1e-4) -> None:
    """``volume`` (RAS) puts each corner voxel where the SimpleITK image ``image`` (LPS) has it."""
    for ijk in np.ndindex(2, 2, 2):
        corner = tuple(int(c * (n - 1)) for c, n in zip(ijk, image.GetSize(), strict=True))
        x, y, z = image.TransformIndexToPhysicalPoint(corner)
        np.testing.assert_allclose(volume.affine @ [*corner, 1], [-x, -y, z, 1], atol=atol)


# ----------------------------------------------------------------------------- spacing


def test_a_missing_slice_is_refused_naming_the_gap(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "gap", _volume(), UID)
    (tmp_path / "gap" / "slice002.dcm").unlink()
    message = error_of(InputFileError, read_volume, tmp_path / "gap")
    assert message == (
        f"cannot read '{tmp_path / 'gap'}': slice gap 5 mm between slices 2 and 3 (slice001.dcm, slice003.dcm), "
        "elsewhere 2.5 mm (a missing slice?); volseg reads only evenly spaced slices"
    )


def test_uneven_spacing_is_refused(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "uneven", _volume(10), UID)
    for k in (6, 8):  # 2.5 mm gaps, then 5 mm ones
        (tmp_path / "uneven" / f"slice00{k}.dcm").unlink()
    assert "slice gap 5 mm between slices 6 and 7 (slice005.dcm, slice007.dcm), elsewhere 2.5 mm " in error_of(
        InputFileError, read_volume, tmp_path / "uneven"
    )
    folder = tmp_path / "shifted"
    image = write_dicom_series(folder, _volume(), UID)
    moved = np.array(image.TransformIndexToPhysicalPoint((0, 0, 3))) + 1.0 * np.array(image.GetDirection())[2::3]
    rewrite_slice(folder / "slice003.dcm", folder / "slice003.dcm", {}, position=moved)  # 1 mm up: 3.5 then 1.5 mm
    message = error_of(InputFileError, read_volume, folder)
    assert "slice gap 3.5 mm between slices 3 and 4 (slice002.dcm, slice003.dcm), elsewhere 2.5 mm, 2 uneven gaps" in (
        message
    )
    assert "missing" not in message


def test_two_slices_at_one_position_are_refused(tmp_path, write_dicom_series):
    folder = tmp_path / "twice"
    write_dicom_series(folder, _volume(), UID)
    rewrite_slice(folder / "slice004.dcm", folder / "again.dcm", {})
    message = error_of(InputFileError, read_volume, folder)
    assert re.search(
        r"slices 5 and 6 \((slice004.dcm, again.dcm|again.dcm, slice004.dcm)\) lie at the same position", message
    )
    assert "volseg reads one image per position (several acquisitions, echoes or time points in one series?)" in message


@pytest.mark.parametrize("decimals", [10, 3])
def test_a_tilted_series_reads_without_a_false_alarm(tmp_path, write_dicom_series, caplog, capfd, decimals):
    """Positions written to 10 decimals (GDCM) or 3 (some scanners) deviate from the even grid by
    rounding only: no warning, no error, ITK's own note stays off stderr."""
    folder = tmp_path / "tilted"
    image = write_dicom_series(folder, _volume(8, 5, 4), UID, direction=TILTED, spacing=(0.7, 0.8, 1.3))
    if decimals == 3:
        for k in range(8):
            position = np.round(image.TransformIndexToPhysicalPoint((0, 0, k)), 3)
            rewrite_slice(folder / f"slice{k:03d}.dcm", folder / f"slice{k:03d}.dcm", {}, position=position)
    with caplog.at_level(logging.INFO, logger="volseg.io"):
        volume = read_volume(folder)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], caplog.text
    assert "Non uniform" not in capfd.readouterr().err
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # restored after quiet_itk
    np.testing.assert_array_equal(volume.array, _volume(8, 5, 4).transpose(2, 1, 0))
    _assert_on_grid(volume, image, atol=1e-3)  # the rounded positions are 5e-4 mm from the exact ones


def test_a_gantry_tilt_keeps_its_shear(tmp_path, write_dicom_series, caplog):
    """ITK stacks the slices along their normal; their positions step 11.3 degrees off it."""
    image = write_dicom_series(tmp_path / "tilt", _volume(), UID, direction=GANTRY_TILT)
    with caplog.at_level(logging.INFO, logger="volseg.io"):
        volume = read_volume(tmp_path / "tilt")
    _assert_on_grid(volume, image)
    assert "sheared by 11.3 degrees (a gantry tilt?)" in caplog.text


@pytest.mark.parametrize(
    "positions,expected",
    [
        (  # gaps of 2.49 mm, then 2.51 mm: each within 1 % of the median, the 11th slice 0.095 mm off
            [[0, 0, z] for z in np.cumsum([0] + [2.49] * 10 + [2.51] * 9)],
            "slice 11 lies 0.0947 mm off the even grid of the others",
        ),
        ([[0.3 * (k == 4), 0, 2.5 * k] for k in range(8)], "slice 5 lies 0.3 mm off the even grid of the others"),
        ([[0, 0, 2.5 * k] for k in (0, 1, 2, 3, 2, 5)], "slice gap -2.5 mm between slices 4 and 5, elsewhere 2.5 mm"),
    ],
    ids=["drift within the gap tolerance", "one slice off in-plane", "out of order"],
)
def test_even_spacing_checks_every_position(positions, expected):
    message = error_of(InputFileError, check_even_spacing, "s", np.array(positions, float), np.array([0, 0, 1.0]))
    assert expected in message


def test_rounding_noise_passes_the_spacing_check():
    rng = np.random.default_rng(0)
    normal = TILTED[:, 2]
    positions = np.outer(np.arange(300) * 0.625, normal) + rng.uniform(-5e-4, 5e-4, (300, 3))  # 3 decimals
    check_even_spacing("s", positions, normal)


# ----------------------------------------------------------------------------- localizers


@pytest.mark.parametrize("kind", ["orientation", "size", "LOCALIZER"])
def test_a_localizer_in_the_series_is_left_out(tmp_path, write_dicom_series, caplog, kind):
    clean = tmp_path / "clean"
    write_dicom_series(clean, _volume(), UID)
    folder = tmp_path / "with_localizer"
    shutil.copytree(clean, folder)
    if kind == "LOCALIZER":  # same orientation and size, at the first slice's position
        rewrite_slice(folder / "slice000.dcm", folder / "scout.dcm", {"0008|0008": "ORIGINAL\\PRIMARY\\LOCALIZER"})
        why = "scout.dcm (ImageType LOCALIZER)"
    else:
        other = tmp_path / "other"
        sideways = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]) if kind == "orientation" else None
        write_dicom_series(other, _volume(1, *((9, 9) if kind == "size" else (4, 3))), UID, direction=sideways)
        (other / "slice000.dcm").rename(folder / "scout.dcm")
        why = "scout.dcm (another orientation)" if kind == "orientation" else "scout.dcm (9x9 pixels, the others 3x4)"
    with caplog.at_level(logging.WARNING, logger="volseg.io"):
        volume = read_volume(folder)
    assert f"left out {why}, not part of the stack of 6 images (a localizer?)" in caplog.text
    expected = read_volume(clean)
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-6)


def test_a_series_of_localizers_only_or_of_two_stacks_is_refused(tmp_path, write_dicom_series):
    folder = tmp_path / "scouts"
    write_dicom_series(folder, _volume(2), UID)
    for name in ("slice000.dcm", "slice001.dcm"):
        rewrite_slice(folder / name, folder / name, {"0008|0008": "ORIGINAL\\PRIMARY\\LOCALIZER"})
    assert "holds only localizer images (ImageType LOCALIZER: slice000.dcm, slice001.dcm)" in (
        error_of(InputFileError, read_volume, folder)
    )
    two = tmp_path / "two_stacks"
    write_dicom_series(two, _volume(3), UID)
    write_dicom_series(tmp_path / "b", _volume(3), UID, direction=np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]))
    for path in (tmp_path / "b").iterdir():
        path.rename(two / f"b_{path.name}")
    assert "its series holds 2 stacks of images that differ in orientation, size or pixel spacing (3, 3 files)" in (
        error_of(InputFileError, read_volume, two)
    )


# ----------------------------------------------------------------------------- multi-frame


@pytest.mark.parametrize("direction", [TILTED, GANTRY_TILT], ids=["tilted", "gantry tilt"])
def test_an_enhanced_multi_frame_file_reads_like_its_series(tmp_path, write_dicom_series, direction):
    series = tmp_path / "series"
    write_dicom_series(series, _volume(5, 6, 7), UID, direction=direction)
    path = enhanced_ct(series, tmp_path / "mf" / "mf.dcm")
    expected = read_volume(series)
    for given in (path, path.parent):  # the file, and the folder that holds it alone
        volume = read_volume(given)
        assert volume.spatial_shape == (7, 6, 5)
        assert_same_voxels(volume, expected)


def test_uneven_frames_are_refused(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "series", _volume(), UID)
    path = enhanced_ct(tmp_path / "series", tmp_path / "mf.dcm", leave_out={"slice002.dcm"})
    message = error_of(InputFileError, read_volume, path)
    assert "frame gap" in message and "elsewhere 2.5 mm (a missing frame?); volseg reads only evenly spaced frames" in (
        message
    )


def test_frames_without_positions_are_refused(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "series", _volume(), UID)
    path = enhanced_ct(tmp_path / "series", tmp_path / "mf.dcm")

    def drop_positions(dataset):
        for frame in dataset.PerFrameFunctionalGroupsSequence:
            del frame.PlanePositionSequence

    edit_dicom(path, drop_positions)
    assert (
        "is a multi-frame DICOM (Legacy Converted Enhanced CT Image Storage) without a position, orientation and "
        "pixel spacing for each frame; volseg cannot place its frames; convert it to NIfTI (e.g. with dcm2niix) or "
        "give the single-frame series"
    ) in error_of(InputFileError, read_volume, path)


def test_a_multi_frame_file_needs_pydicom_to_be_checked(tmp_path, write_dicom_series, monkeypatch):
    write_dicom_series(tmp_path / "series", _volume(), UID)
    path = enhanced_ct(tmp_path / "series", tmp_path / "mf.dcm")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if it were not installed
    assert error_of(InputFileError, read_volume, path) == (
        f"cannot read '{path}': is a multi-frame DICOM; checking where its frames lie needs pydicom, which is not "
        "installed: pip install 'volseg[dicom]'; or give the single-frame series"
    )


def test_a_multi_frame_file_among_the_slices_of_its_series_is_refused(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "series", _volume(), UID)
    enhanced_ct(tmp_path / "series", tmp_path / "series" / "mf.dcm", series_uid=UID)
    assert "its series mixes 1 multi-frame file(s) (mf.dcm) with 6 other(s)" in (
        error_of(InputFileError, read_volume, tmp_path / "series")
    )


def test_a_grid_that_misplaces_the_first_frame_is_refused():
    """What GDCM gives unevenly spaced frames (1 mm on every axis) is caught even if they were even."""
    stack = Stack(
        np.array([[0.0, 0, 2.5 * k] for k in range(4)]),
        np.array([1.0, 0, 0, 0, 1, 0]),
        np.array([0.8, 0.7]),
        (3, 2),
        "frame",
    )
    gdcm = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert "reads its first frame onto a wrong grid (a corner 0.6 mm from where the file puts it)" in (
        error_of(InputFileError, stack.affine, "mf.dcm", gdcm, (3, 2, 4))
    )
    right = stack.affine("mf.dcm", np.diag([-0.7, -0.8, 2.5, 1.0]), (3, 2, 4))
    np.testing.assert_allclose(right, np.diag([-0.7, -0.8, 2.5, 1.0]))
