"""Tests for volseg.io: geometry-preserving reads and writes (round trips, SimpleITK and DICOM,
grid checks, the real data). Read errors and atomic writes: test_io_validation.py; uneven DICOM
series, localizers and multi-frame files: test_dicom_read.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from io_support import AFFINE_KINDS, SPACING, error_of, image_array, make_affine, nib_write

from volseg import io as vio
from volseg.errors import ConfigError, InputFileError, ShapeError
from volseg.io import Volume, check_same_grid, orientation_code, read_volume, same_grid, write_volume

# The shared real data sit beside the checkout: ../shared/data (see its README.md).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-mri-tiny"


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("kind", list(AFFINE_KINDS))
def test_round_trip_keeps_array_and_affine(tmp_path, kind, suffix):
    affine = make_affine(kind)
    src = read_volume(nib_write(tmp_path / "src.nii.gz", image_array(), affine))
    assert np.allclose(src.affine, affine, atol=1e-5)  # float32 storage of the header

    out = write_volume(tmp_path / f"out{suffix}", src.array, src)
    back = read_volume(out)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, src.array)
    np.testing.assert_allclose(back.affine, src.affine, rtol=0, atol=1e-6)
    assert back.orientation == src.orientation
    np.testing.assert_allclose(back.spacing, SPACING, atol=1e-5)
    if kind != "oblique":
        assert orientation_code(back.affine) == kind


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_round_trip_multichannel(tmp_path, suffix):
    arr = image_array((6, 5, 4, 3))
    src = read_volume(nib_write(tmp_path / "mc.nii.gz", arr, make_affine("oblique")))
    assert src.spatial_shape == (6, 5, 4) and src.num_channels == 3
    back = read_volume(write_volume(tmp_path / f"out{suffix}", src.array, src))
    assert back.array.shape == (6, 5, 4, 3)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-6)
    first = back.channels_first()
    assert first.shape == (3, 6, 5, 4) and first.dtype == np.float32
    np.testing.assert_array_equal(first[2], arr[..., 2])


@pytest.mark.parametrize("suffix", [".nii", ".mha"])
def test_round_trip_2d(tmp_path, suffix):
    arr = np.arange(12, dtype=np.uint8).reshape(4, 3)
    affine = np.diag([-0.5, 0.7, 1.0, 1.0])
    back = read_volume(write_volume(tmp_path / f"slice{suffix}", arr, affine))
    assert back.spatial_dims == 2 and back.spatial_shape == (4, 3)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.spacing, (0.5, 0.7))
    np.testing.assert_allclose(back.affine[:2, :2], affine[:2, :2])
    assert back.channels_first().shape == (1, 4, 3)


def test_write_copies_nifti_codes_units_and_description(tmp_path):
    affine = make_affine("LPS")
    img = nib.Nifti1Image(image_array(), affine)
    img.set_sform(affine, code=4)  # mni
    img.set_qform(affine, code=1)  # scanner
    img.header.set_xyzt_units("mm", "msec")
    img.header["descrip"] = b"volseg test"
    nib.save(img, str(tmp_path / "ref.nii.gz"))
    ref = read_volume(tmp_path / "ref.nii.gz")

    out = write_volume(tmp_path / "lab.nii.gz", (ref.array > 0).astype(np.int64), ref)
    hdr = nib.load(str(out)).header
    assert int(hdr["sform_code"]) == 4 and int(hdr["qform_code"]) == 1
    assert hdr.get_xyzt_units() == ("mm", "msec")
    assert hdr["descrip"].tobytes().rstrip(b"\0") == b"volseg test"
    np.testing.assert_allclose(nib.load(str(out)).get_qform(), ref.affine, atol=1e-5)


def test_write_from_plain_affine_sets_explicit_codes(tmp_path):
    out = write_volume(tmp_path / "a.nii", np.zeros((3, 3, 3), np.uint8), make_affine("LAS"))
    hdr = nib.load(str(out)).header
    assert int(hdr["sform_code"]) > 0 and int(hdr["qform_code"]) > 0
    assert orientation_code(read_volume(out).affine) == "LAS"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([True, False]), np.uint8),
        (np.array([0, 255], np.int64), np.uint8),
        (np.array([0, 256], np.int64), np.uint16),
        (np.array([-1, 5], np.int32), np.int16),
        (np.array([-1, 40000], np.int64), np.int32),
        (np.array([0.5, 2.0], np.float64), np.float32),
    ],
)
def test_label_dtype_choice(tmp_path, values, expected):
    arr = np.resize(values, (2, 2, 2))
    out = write_volume(tmp_path / "lab.nii.gz", arr, np.eye(4))
    img = nib.load(str(out))
    assert img.get_data_dtype() == expected
    back = read_volume(out)
    assert back.array.dtype == expected
    np.testing.assert_array_equal(back.array, arr.astype(expected))


def test_scaled_reference_writes_raw_labels(tmp_path):
    img = nib.Nifti1Image(np.arange(27, dtype=np.int16).reshape(3, 3, 3), np.eye(4))
    img.header.set_slope_inter(2.0, 10.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    ref = read_volume(tmp_path / "scaled.nii")
    assert ref.array.dtype == np.float64 and ref.array.min() == 10.0  # scaling applied on read

    labels = np.arange(27, dtype=np.uint8).reshape(3, 3, 3) % 3
    out = write_volume(tmp_path / "lab.nii", labels, ref)
    hdr = nib.load(str(out)).header
    slope, inter = hdr.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)
    np.testing.assert_array_equal(read_volume(out).array, labels)


def test_explicit_dtype_out_of_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="300"):
        write_volume(tmp_path / "x.nii", np.full((2, 2, 2), 300), np.eye(4), dtype=np.uint8)
    assert not list(tmp_path.iterdir())


def test_big_endian_nifti_reads_native(tmp_path):
    hdr = nib.Nifti1Header(endianness=">")
    hdr.set_data_dtype(np.int16)
    arr = np.arange(-30, 30, dtype=np.int16).reshape(3, 4, 5)
    nib.save(nib.Nifti1Image(arr, np.eye(4), header=hdr), str(tmp_path / "be.nii"))
    assert nib.load(str(tmp_path / "be.nii")).get_data_dtype().byteorder == ">"
    vol = read_volume(tmp_path / "be.nii")
    assert vol.array.dtype.isnative and vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, arr)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_rgb_nifti_with_scaling_reads_unscaled_as_three_channels(tmp_path, suffix):
    rgb = np.zeros((4, 5, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = 10, 20, 30
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), plain)
    raw = bytearray(plain.read_bytes())
    raw[112:120] = np.array([2.0, 1.0], "<f4").tobytes()  # scl_slope, scl_inter: nifti1.h says not for RGB
    path = tmp_path / f"rgb{suffix}"
    path.write_bytes(gzip.compress(bytes(raw)) if suffix.endswith(".gz") else bytes(raw))
    volume = vio.read_volume(path)
    assert volume.array.shape == (4, 5, 3, 3)
    assert volume.array[0, 0, 0].tolist() == [10, 20, 30]


# ----------------------------------------------------------------------------- SimpleITK


def test_simpleitk_nrrd_has_same_affine_as_nibabel(tmp_path):
    """ITK's own NIfTI reader converts the file; our LPS->RAS must agree with nibabel."""
    arr = image_array((7, 5, 4))
    nii = nib_write(tmp_path / "v.nii.gz", arr, make_affine("oblique"), sform=1, qform=1)
    sitk.WriteImage(sitk.ReadImage(str(nii)), str(tmp_path / "v.nrrd"))
    a, b = read_volume(nii), read_volume(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    assert b.header is None and b.array.shape == (7, 5, 4)


def test_written_nrrd_matches_written_nifti_for_itk(tmp_path):
    src = read_volume(nib_write(tmp_path / "v.nii.gz", image_array(), make_affine("LAS")))
    n = sitk.ReadImage(str(write_volume(tmp_path / "o.nii.gz", src.array, src)))
    r = sitk.ReadImage(str(write_volume(tmp_path / "o.seg.nrrd", src.array, src)))
    np.testing.assert_allclose(n.GetOrigin(), r.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(n.GetSpacing(), r.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(n.GetDirection(), r.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(n), sitk.GetArrayFromImage(r))


def test_multicomponent_sitk_image_is_channels_last(tmp_path):
    zyx_c = image_array((4, 5, 6, 2))
    img = sitk.GetImageFromArray(zyx_c, isVector=True)
    sitk.WriteImage(img, str(tmp_path / "vec.mha"))
    vol = read_volume(tmp_path / "vec.mha")
    assert vol.array.shape == (6, 5, 4, 2) and vol.num_channels == 2
    np.testing.assert_array_equal(vol.array[..., 1], zyx_c[..., 1].transpose(2, 1, 0))
    assert vol.orientation == ("L", "P", "S")  # identity direction in LPS


def test_dicom_series_reads_with_geometry(tmp_path, write_dicom_series):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # z, y, x
    image = write_dicom_series(tmp_path / "dcm", arr, "1.2.826.0.1.3680043.2.1125.7.1")
    vol = read_volume(tmp_path / "dcm")
    assert vol.array.shape == (6, 5, 4)
    np.testing.assert_array_equal(vol.array, arr.transpose(2, 1, 0))
    np.testing.assert_allclose(vol.spacing, (0.7, 0.8, 2.5), atol=1e-4)
    for ijk in [(0, 0, 0), (5, 0, 0), (0, 4, 0), (0, 0, 3), (5, 4, 3)]:
        x, y, z = image.TransformIndexToPhysicalPoint(ijk)  # LPS
        np.testing.assert_allclose(vol.affine @ [*ijk, 1], [-x, -y, z, 1], atol=1e-4)


def test_4d_sitk_image_is_channels_last(tmp_path):
    tzyx = image_array((3, 4, 5, 6))
    sitk.WriteImage(sitk.GetImageFromArray(tzyx, isVector=False), str(tmp_path / "t.nrrd"))
    vol = read_volume(tmp_path / "t.nrrd")
    assert vol.array.shape == (6, 5, 4, 3) and vol.num_channels == 3
    np.testing.assert_array_equal(vol.array[..., 2], tzyx[2].transpose(2, 1, 0))
    sitk.WriteImage(sitk.GetImageFromArray(tzyx[:1], isVector=False), str(tmp_path / "t1.nrrd"))
    assert read_volume(tmp_path / "t1.nrrd").array.shape == (6, 5, 4)


def test_dicom_folder_with_two_series_needs_series_id(tmp_path, write_dicom_series):
    folder = tmp_path / "two"
    arr = np.zeros((3, 4, 4), np.int16)
    write_dicom_series(folder / "a", arr, "1.2.3.4.5.1")
    write_dicom_series(folder / "b", arr + 7, "1.2.3.4.5.2")
    for f in list((folder / "b").iterdir()):
        f.rename(folder / f"b_{f.name}")
    for f in list((folder / "a").iterdir()):
        f.rename(folder / f"a_{f.name}")
    (folder / "a").rmdir()
    (folder / "b").rmdir()
    message = error_of(InputFileError, read_volume, folder)
    assert "1.2.3.4.5.1" in message and "1.2.3.4.5.2" in message and "two" in message
    vol = read_volume(folder, series_id="1.2.3.4.5.2")
    assert vol.array.shape == (4, 4, 3) and np.all(vol.array == 7)
    assert "9.9.9" in error_of(InputFileError, read_volume, folder, series_id="9.9.9")


# ----------------------------------------------------------------------------- grids


def test_orientation_code():
    assert orientation_code(make_affine("RAS")) == "RAS"
    assert orientation_code(make_affine("LPS")) == "LPS"
    assert orientation_code(make_affine("LAS")) == "LAS"
    permuted = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    assert orientation_code(permuted) == "PSR"


def test_volume_properties():
    vol = Volume(np.zeros((6, 5, 4, 2), np.int16), make_affine("oblique"))
    assert vol.spatial_shape == (6, 5, 4) and vol.num_channels == 2
    np.testing.assert_allclose(vol.spacing, SPACING)
    assert len(vol.orientation) == 3
    with pytest.raises(ShapeError):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(ShapeError):
        Volume(np.zeros((2, 2, 2, 2, 2)), np.eye(4))


def test_same_grid_and_check_same_grid():
    a = Volume(np.zeros((4, 5, 6)), make_affine("LPS"), path=Path("img.nii.gz"))
    b = Volume(np.zeros((4, 5, 6), np.uint8), a.affine.copy(), path=Path("lab.nii.gz"))
    assert same_grid(a, b)
    check_same_grid(a, b)

    shifted = b.affine.copy()
    shifted[0, 3] += 0.5
    c = Volume(b.array, shifted, path=Path("lab.nii.gz"))
    assert not same_grid(a, c) and same_grid(a, c, atol=0.6)
    message = error_of(ShapeError, check_same_grid, a, c)
    assert "img.nii.gz" in message and "lab.nii.gz" in message and "0.5" in message

    d = Volume(np.zeros((4, 5, 7)), a.affine, path=Path("lab2.nii.gz"))
    assert not same_grid(a, d)
    message = error_of(ShapeError, check_same_grid, a, d)
    assert "(4, 5, 6)" in message and "(4, 5, 7)" in message and "lab2.nii.gz" in message


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")
@pytest.mark.parametrize(
    ("name", "code", "dtype"),
    [("anatomical", "LAS", np.int16), ("reoriented_anat_moved", "RAS", np.float32)],
)
def test_real_brain_mri_tiny(tmp_path, name, code, dtype):
    image = read_volume(DATA / "imagesTr" / f"{name}.nii")
    label = read_volume(DATA / "labelsTr" / f"{name}_label.nii.gz")
    assert orientation_code(image.affine) == code and "".join(image.orientation) == code
    assert image.array.dtype == dtype and image.array.dtype.isnative
    assert label.array.dtype.kind == "u"
    check_same_grid(image, label)
    out = write_volume(tmp_path / "seg.nii.gz", label.array, image)
    back = read_volume(out)
    assert same_grid(back, image, atol=1e-6)
    np.testing.assert_array_equal(back.array, label.array)
