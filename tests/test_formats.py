"""Every volume format of volseg.io.naming: read with its geometry, written back on its own grid,
refused in one line when it is no volume; the NaN/Inf policy of ``volseg predict``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from volseg.cli import main
from volseg.errors import InputFileError
from volseg.inference.inputs import find_inputs
from volseg.io import Volume, fill_nonfinite, naming, read_volume, write_volume

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
SHAPE = (12, 10, 8)
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _affine() -> np.ndarray:
    """Oblique, anisotropic, off-origin: any axis or sign mix-up shows."""
    angle = np.deg2rad(20.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 2.0])
    affine[:3, 3] = (-30.0, 12.5, 7.25)
    return affine


def _array() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 200, SHAPE).astype(np.int16)


def _sitk_write(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write with SimpleITK directly (independent of volseg's writer)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    lps = LPS_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(image, str(path))
    return path


def _nib_write(cls):
    def write(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
        nib.save(cls(array, affine), str(path))
        return path

    return write


# name -> (file name, independent writer, whether volseg writes the format back)
WRITTEN = {
    "mgz": ("in.mgz", _nib_write(nib.MGHImage), True),
    "mgh": ("in.mgh", _nib_write(nib.MGHImage), True),
    "nifti-pair": ("in.hdr", _nib_write(nib.Nifti1Pair), True),
    "nifti2": ("in.nii", _nib_write(nib.Nifti2Image), True),
    "minc2": ("in.mnc", _sitk_write, True),
    "nrrd": ("in.nrrd", _sitk_write, True),
    "mha": ("in.mha", _sitk_write, True),
    "gipl": ("in.gipl", _sitk_write, False),
    "vtk": ("in.vtk", _sitk_write, False),
}


@pytest.mark.parametrize("kind", list(WRITTEN))
def test_generated_file_reads_with_its_geometry_and_writes_back_on_its_grid(kind, tmp_path):
    name, write, writable = WRITTEN[kind]
    array, affine = _array(), _affine()
    if kind in ("gipl", "vtk"):  # these store no orientation (GIPL no origin either)
        affine = np.diag([0.9, 1.1, 2.0, 1.0]) @ LPS_RAS
    path = write(tmp_path / name, array, affine)
    volume = read_volume(path)
    assert volume.spatial_shape == SHAPE
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array, array)
    labels = (array > 100).astype(np.uint8)
    suffix = naming.split_volume_name(name)[1] if writable else ".nii.gz"
    out = write_volume(tmp_path / f"out{suffix}", labels, volume)
    back = read_volume(out)
    assert back.spatial_shape == SHAPE
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, labels)
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_pair_is_written_as_header_and_data_and_read_by_nibabel(tmp_path):
    volume = Volume(_array(), _affine())
    out = write_volume(tmp_path / "labels.hdr", (volume.array > 50).astype(np.uint8), volume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.hdr", "labels.img"]
    img = nib.load(str(out))
    assert isinstance(img, nib.Nifti1Pair)
    np.testing.assert_allclose(img.affine, _affine(), atol=1e-5)


def test_nifti2_stays_nifti2(tmp_path):
    path = _nib_write(nib.Nifti2Image)(tmp_path / "in.nii.gz", _array(), _affine())
    out = write_volume(tmp_path / "out.nii.gz", np.zeros(SHAPE, np.uint8), read_volume(path))
    assert isinstance(nib.load(str(out)), nib.Nifti2Image)


def test_analyze_without_orientation_is_read_with_a_warning(tmp_path, caplog):
    img = nib.AnalyzeImage(_array(), np.diag([0.9, 1.1, 2.0, 1.0]))
    nib.save(img, str(tmp_path / "old.hdr"))
    with caplog.at_level(logging.WARNING, logger="volseg.io"):
        volume = read_volume(tmp_path / "old.hdr")
    assert "no orientation" in caplog.text and "LAS" in caplog.text
    np.testing.assert_allclose(volume.affine, nib.load(str(tmp_path / "old.hdr")).affine)
    assert volume.orientation[0] == "L"


@pytest.mark.parametrize(
    "name",
    [
        "tiny.mnc",
        "minc1_1_scale.mnc",
        "phantom_EPI_asc_CLEAR_2_1.PAR",
        "phantom_EPI_asc_CLEAR_2_1.REC",
        "scaled+tlrc.HEAD",
        "scaled+tlrc.BRIK",
        "example4d+orig.BRIK.gz",
        "test.mgz",
        "example_nifti2.nii.gz",
    ],
)
def test_nibabel_formats_read_as_nibabel_reads_them(name):
    volume, img = read_volume(NIB_DATA / name), nib.load(str(NIB_DATA / name))
    squeezed = tuple(n for i, n in enumerate(img.shape) if i < 3 or n != 1)
    assert volume.array.shape == squeezed
    np.testing.assert_allclose(volume.affine, img.affine, atol=1e-6)
    np.testing.assert_allclose(volume.array, np.asanyarray(img.dataobj).reshape(squeezed), rtol=1e-6)


def test_ecat_reads_with_its_geometry():
    volume, img = read_volume(NIB_DATA / "tinypet.v"), nib.ecat.load(str(NIB_DATA / "tinypet.v"))
    assert volume.spatial_shape == img.shape[:3]
    np.testing.assert_allclose(volume.affine, img.affine)


def test_one_dicom_file_reads_its_series(tmp_path, write_dicom_series, caplog):
    write_dicom_series(tmp_path / "series", np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5), "1.2.3.4")
    series = read_volume(tmp_path / "series")
    with caplog.at_level(logging.INFO, logger="volseg.io"):
        one = read_volume(tmp_path / "series" / "slice002.dcm")
    assert "one file of a 4-file DICOM series" in caplog.text
    assert one.spatial_shape == series.spatial_shape == (5, 6, 4)
    np.testing.assert_allclose(one.affine, series.affine)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "series" / "slice002.dcm", alone / "x.dcm")
    single = read_volume(alone / "x.dcm")
    assert single.spatial_shape == (5, 6, 1)
    np.testing.assert_allclose(single.affine[:3, :2], series.affine[:3, :2], atol=1e-6)


def _gifti(path: Path) -> None:
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.zeros(4, np.float32))]), str(path))


@pytest.mark.parametrize(
    "name,make,what",
    [
        ("row_major.dconn.nii", None, "CIFTI-2 file"),
        ("surface.gii", _gifti, "GIFTI file"),
        ("simple.trk", None, "streamlines"),
        ("notes.txt", lambda p: p.write_text("hello\n"), "text file"),
        ("T1.PAR", None, "PAR/REC header without its data file (T1.REC is missing)"),
        ("analyze.hdr", None, "without its data file (analyze.img is missing)"),
        ("minc2_baddim.mnc", None, "not a readable image"),
        ("scan.png", lambda p: p.write_bytes(b"\x89PNG"), "unknown file extension; supported: NIfTI"),
    ],
)
def test_files_that_are_no_volume_are_refused_in_one_line(name, make, what, tmp_path):
    path = NIB_DATA / name if make is None else tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(InputFileError) as info:
        read_volume(path)
    message = str(info.value)
    assert "\n" not in message and name in message and what in message


def test_the_suffix_table_serves_reading_discovery_and_pairing(tmp_path):
    assert naming.split_volume_name("Case_01.MGZ") == ("Case_01", ".MGZ")
    assert naming.split_volume_name("a.dconn.nii") is None and naming.not_a_volume("a.dconn.nii")
    assert naming.split_volume_name("x+orig.BRIK.gz") == ("x+orig", ".BRIK.gz")
    assert [naming.is_case_file(n) for n in ("a.hdr", "a.img", "a.PAR", "a.REC", "s.dcm", ".a.mgz")] == [
        True,
        False,
        True,
        False,
        False,
        False,
    ]
    assert naming.case_id("p/case7_seg.mgz") == "case7" and naming.case_id("case7.img") is None
    assert ".mgz" in naming.WRITE_SUFFIXES and ".img" not in naming.WRITE_SUFFIXES
    for stem in ("a", "b"):
        nib.save(nib.Nifti1Pair(_array(), _affine()), str(tmp_path / f"{stem}.hdr"))
    (tmp_path / "a_probabilities.mgz").write_bytes(b"")  # a side output is no case
    cases = find_inputs(tmp_path)
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [("a", ["a.hdr"]), ("b", ["b.hdr"])]


def test_fill_nonfinite_zero_or_minimum():
    array = np.array([[[np.nan, -5.0], [np.inf, 3.0]]], np.float32)
    volume = Volume(array.copy(), np.eye(4))
    assert fill_nonfinite(volume, "zero") == (2, 0.0)
    np.testing.assert_array_equal(volume.array, [[[0.0, -5.0], [0.0, 3.0]]])
    volume = Volume(array.copy(), np.eye(4))
    assert fill_nonfinite(volume, "min") == (2, -5.0)
    assert fill_nonfinite(Volume(np.zeros((2, 2, 2), np.int16), np.eye(4))) == (0, None)


def _nan_input(path: Path) -> Path:
    array = np.random.default_rng(1).normal(100, 20, (24, 24, 20)).astype(np.float32)
    array[:3, :3, :3] = np.nan
    array[-1, -1, -1] = np.inf
    nib.save(nib.Nifti1Image(array, _affine()), str(path))
    return path


def test_predict_replaces_nan_with_one_warning_and_records_it(tmp_path, capsys):
    source = _nan_input(tmp_path / "moved.nii.gz")
    code = main(
        [
            "predict",
            "-m",
            "hippocampus",
            "-i",
            str(source),
            "-o",
            str(tmp_path / "out"),
            "--stats",
            "--device",
            "cpu",
            "--overlap",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("NaN/Inf voxel(s) replaced by 0") == 1 and "28 NaN/Inf" in err
    stats = json.loads((tmp_path / "out" / "moved_stats.json").read_text())
    assert stats and all(row["input_nonfinite"]["voxels"] == 28 for row in stats)
    assert stats[0]["input_nonfinite"]["replaced_by"] == "zero"
    labels, source_volume = read_volume(tmp_path / "out" / "moved.nii.gz"), read_volume(source, allow_nonfinite=True)
    assert labels.spatial_shape == source_volume.spatial_shape
    np.testing.assert_allclose(labels.affine, source_volume.affine, atol=1e-5)


def test_predict_strict_refuses_nan_and_writes_nothing(tmp_path, capsys):
    source = _nan_input(tmp_path / "moved.nii.gz")
    code = main(["predict", "-m", "hippocampus", "-i", str(source), "-o", str(tmp_path / "out"), "--strict"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "moved.nii.gz" in err[0] and "28 of 11520 voxels are NaN or infinite" in err[0] and "--strict" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "name,write,expected",
    [
        ("case.mgz", _nib_write(nib.MGHImage), "case.mgz"),
        ("case.hdr", _nib_write(nib.Nifti1Pair), "case.hdr"),
        ("case.mnc", _sitk_write, "case.mnc"),
        ("case.gipl", _sitk_write, "case.nii.gz"),  # not written by volseg: NIfTI, with a warning
    ],
)
def test_predict_format_same_writes_the_inputs_format_on_its_grid(name, write, expected, tmp_path, capsys):
    array = np.random.default_rng(2).normal(100, 20, (20, 22, 16)).astype(np.float32)
    affine = _affine() if not name.endswith(".gipl") else np.diag([0.9, 1.1, 2.0, 1.0]) @ LPS_RAS
    source = write(tmp_path / name, array, affine)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "-m",
            "hippocampus",
            "-i",
            str(tmp_path),
            "-o",
            str(out),
            "--format",
            "same",
            "--device",
            "cpu",
            "--overlap",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert ("cannot write GIPL" in err) == name.endswith(".gipl")
    labels, image = read_volume(out / expected), read_volume(source)
    assert labels.spatial_shape == image.spatial_shape
    np.testing.assert_allclose(labels.affine, image.affine, atol=1e-4)
    assert set(np.unique(labels.array)) <= {0, 1, 2}


def test_a_header_claiming_gigabytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.mgh"
    nib.save(nib.MGHImage(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[4:16] = np.array([4000, 4000, 4000], ">i4").tobytes()  # width, height, depth
    path.write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match=r"huge.mgh.*GiB in memory\), over the .* limit"):
        read_volume(path)


def test_reading_a_vtk_file_leaves_the_process_locale_alone(tmp_path):
    import locale

    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(tmp_path / "a.vtk"))
    before = locale.setlocale(locale.LC_ALL)
    read_volume(tmp_path / "a.vtk")  # ITK's VTK reader sets the C locale for the whole process
    assert locale.setlocale(locale.LC_ALL) == before
