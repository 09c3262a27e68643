"""Tests for volseg.io: geometry-preserving reads and writes, validation, atomic writes."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import volseg.io.atomic
from volseg import io as vio
from volseg.errors import ConfigError, InputFileError, OutputError, OutputExistsError, ShapeError
from volseg.io import (
    Volume,
    check_finite,
    check_same_grid,
    orientation_code,
    read_volume,
    same_grid,
    write_volume,
)

# The shared real data sit beside the checkout: ../shared/data (see its README.md).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-mri-tiny"

SPACING = (0.8, 1.2, 3.0)  # anisotropic


def _rotation(deg: float) -> np.ndarray:
    """Rotation by ``deg`` about an oblique axis (not aligned with any world axis)."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    t = np.deg2rad(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


AFFINE_KINDS = {
    "RAS": np.diag([1.0, 1.0, 1.0]),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "LAS": np.diag([-1.0, 1.0, 1.0]),
    "oblique": _rotation(20.0),
}


def make_affine(kind: str, spacing=SPACING, origin=(-40.3, 12.7, 5.25)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = AFFINE_KINDS[kind] * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def nib_write(path: Path, array: np.ndarray, affine: np.ndarray, **codes) -> Path:
    """Write with nibabel directly (independent of write_volume)."""
    img = nib.Nifti1Image(array, affine)
    if codes:
        img.set_sform(affine, code=codes.get("sform", 1))
        img.set_qform(affine, code=codes.get("qform", 1))
    nib.save(img, str(path))
    return path


def image_array(shape=(6, 5, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def error_of(exc_type, func, *args, **kwargs) -> str:
    """Run ``func``, assert it raises ``exc_type`` with a one-line message; return it."""
    with pytest.raises(exc_type) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


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


def test_dicom_series_with_missing_slice_warns(tmp_path, caplog, capfd, write_dicom_series):
    write_dicom_series(tmp_path / "gap", np.zeros((5, 3, 3), np.int16), "1.2.3.9")
    (tmp_path / "gap" / "slice002.dcm").unlink()
    with caplog.at_level("WARNING", logger="volseg.io"):
        vol = read_volume(tmp_path / "gap")
    assert vol.array.shape == (3, 3, 4)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("unevenly spaced" in m and "gap" in m for m in warnings)
    assert "Non uniform" not in capfd.readouterr().err  # ITK's own stderr print is silenced
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # and restored afterwards


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


# ----------------------------------------------------------------------------- read errors


def test_missing_file(tmp_path):
    message = error_of(InputFileError, read_volume, tmp_path / "absent.nii.gz")
    assert "absent.nii.gz" in message and "no such file" in message


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    message = error_of(InputFileError, read_volume, tmp_path / "notes")
    assert "notes" in message and "DICOM" in message


def test_unknown_extension_lists_supported(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    message = error_of(InputFileError, read_volume, tmp_path / "scan.png")
    assert "scan.png" in message and ".nii.gz" in message and ".nrrd" in message


@pytest.mark.parametrize("name", ["text.nii.gz", "text.nii", "text.nrrd", "text.mha"])
def test_text_file_is_not_an_image(tmp_path, name):
    (tmp_path / name).write_text("this is not an image at all\n" * 50)
    assert name in error_of(InputFileError, read_volume, tmp_path / name)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_truncated_file(tmp_path, suffix):
    out = write_volume(tmp_path / f"full{suffix}", image_array((40, 40, 20)), np.eye(4))
    data = out.read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    assert f"cut{suffix}" in error_of(InputFileError, read_volume, tmp_path / f"cut{suffix}")


def test_corrupt_gzip(tmp_path):
    raw = nib.Nifti1Image(image_array((30, 30, 10)), np.eye(4)).to_bytes()
    data = bytearray(gzip.compress(raw))
    for pos in range(200, len(data) - 20, 97):
        data[pos] ^= 0x5A
    (tmp_path / "bad.nii.gz").write_bytes(bytes(data))
    message = error_of(InputFileError, read_volume, tmp_path / "bad.nii.gz", allow_nonfinite=True)
    assert "bad.nii.gz" in message and "corrupt" in message


def test_gzip_crc_mismatch_is_detected(tmp_path):
    """A flipped CRC leaves the deflate stream valid: only the CRC check can notice."""
    raw = nib.Nifti1Image(image_array((40, 40, 20)), np.eye(4)).to_bytes()
    data = bytearray(gzip.compress(raw))
    data[-8] ^= 0xFF  # first byte of the CRC32 trailer
    (tmp_path / "crc.nii.gz").write_bytes(bytes(data))
    message = error_of(InputFileError, read_volume, tmp_path / "crc.nii.gz")
    assert "crc.nii.gz" in message and "CRC" in message


def test_zero_sized_dimension(tmp_path):
    nib_write(tmp_path / "empty.nii", np.zeros((4, 0, 4), np.float32), np.eye(4))
    message = error_of(InputFileError, read_volume, tmp_path / "empty.nii")
    assert "empty.nii" in message and "zero-sized" in message


def test_5d_nifti_with_singleton_is_squeezed(tmp_path):
    arr = image_array((4, 5, 6, 1, 2))
    vol = read_volume(nib_write(tmp_path / "five.nii.gz", arr, np.eye(4)))
    assert vol.array.shape == (4, 5, 6, 2) and vol.num_channels == 2
    np.testing.assert_array_equal(vol.array, arr[:, :, :, 0, :])
    single = read_volume(nib_write(tmp_path / "t1.nii", arr[..., :1, 0], np.eye(4)))
    assert single.array.shape == (4, 5, 6) and single.num_channels == 1


def test_too_many_dimensions(tmp_path):
    nib_write(tmp_path / "many.nii.gz", image_array((4, 5, 6, 2, 2)), np.eye(4))
    message = error_of(InputFileError, read_volume, tmp_path / "many.nii.gz")
    assert "many.nii.gz" in message and "(4, 5, 6, 2, 2)" in message


def test_huge_header_is_refused_before_loading(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 4000))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    (tmp_path / "huge.nii").write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    # Only 1000 data bytes exist: a size message (not "truncated") shows the header was checked first.
    message = error_of(InputFileError, read_volume, tmp_path / "huge.nii")
    assert "huge.nii" in message and "GiB" in message
    small = nib_write(tmp_path / "small.nii", image_array((8, 8, 8)), np.eye(4))
    assert "GiB" in error_of(InputFileError, read_volume, small, max_bytes=1000)


def test_non_invertible_affine(tmp_path):
    img = nib.Nifti1Image(image_array((4, 4, 4)), np.eye(4))
    img.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    nib.save(img, str(tmp_path / "flat.nii"))
    message = error_of(InputFileError, read_volume, tmp_path / "flat.nii")
    assert "flat.nii" in message and "affine" in message


def test_non_finite_voxels(tmp_path):
    arr = image_array((4, 4, 4))
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = np.inf
    path = nib_write(tmp_path / "nan.nii.gz", arr, np.eye(4))
    message = error_of(InputFileError, read_volume, path)
    assert "nan.nii.gz" in message and "4 of 64" in message
    vol = read_volume(path, allow_nonfinite=True)
    assert np.isnan(vol.array).sum() == 3
    with pytest.raises(InputFileError, match="4 of 64"):
        check_finite(vol)
    check_finite(Volume(np.zeros((2, 2, 2), np.float32), np.eye(4)))  # fine: no error


def test_dtype_argument_casts(tmp_path):
    arr = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    vol = read_volume(nib_write(tmp_path / "i.nii", arr, np.eye(4)), dtype=np.float32)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, arr)


# ----------------------------------------------------------------------------- writing


def test_write_refuses_existing_without_overwrite(tmp_path):
    target = write_volume(tmp_path / "out.nii.gz", np.ones((3, 3, 3), np.uint8), np.eye(4))
    before = target.read_bytes()
    message = error_of(OutputExistsError, write_volume, target, np.zeros((3, 3, 3), np.uint8), np.eye(4))
    assert "out.nii.gz" in message and "overwrite" in message
    assert target.read_bytes() == before
    write_volume(target, np.full((3, 3, 3), 2, np.uint8), np.eye(4), overwrite=True)
    assert np.all(read_volume(target).array == 2)


def test_write_creates_missing_parent(tmp_path):
    out = write_volume(tmp_path / "a" / "b" / "x.nii", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert out.is_file() and out == tmp_path / "a" / "b" / "x.nii"


def test_write_uses_temp_file_with_extension_in_same_folder(tmp_path, monkeypatch):
    seen = []
    real_save = nib.save

    def spy(img, filename):
        seen.append(Path(filename))
        real_save(img, filename)

    monkeypatch.setattr(nib, "save", spy)
    write_volume(tmp_path / "seg.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".tmp-")
    assert seen[0].name.endswith("-seg.nii.gz") and not seen[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]
    with gzip.open(tmp_path / "seg.nii.gz") as f:  # really gzipped
        assert len(f.read()) > 348


@pytest.mark.parametrize(("suffix", "target"), [(".nii.gz", "nib"), (".nrrd", "sitk")])
def test_failed_write_leaves_no_temp_and_keeps_target(tmp_path, monkeypatch, suffix, target):
    out = tmp_path / f"seg{suffix}"
    write_volume(out, np.ones((3, 3, 3), np.uint8), np.eye(4))
    before = out.read_bytes()

    def broken(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    if target == "nib":
        monkeypatch.setattr(nib, "save", broken)
    else:
        monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(OSError, match="disk full"):
        write_volume(out, np.zeros((3, 3, 3), np.uint8), np.eye(4), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert out.read_bytes() == before


def test_failed_rename_removes_temp(tmp_path, monkeypatch):
    def no_replace(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(volseg.io.atomic.os, "replace", no_replace)
    with pytest.raises(OutputError, match="cannot write .*x.nii.*read-only"):
        write_volume(tmp_path / "x.nii", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_write_shape_mismatch_names_both_shapes(tmp_path):
    ref = Volume(np.zeros((4, 5, 6), np.float32), np.eye(4), path=Path("ref.nii.gz"))
    message = error_of(ShapeError, write_volume, tmp_path / "o.nii", np.zeros((4, 5, 7)), ref)
    assert "(4, 5, 7)" in message and "(4, 5, 6)" in message and "ref.nii.gz" in message
    assert not (tmp_path / "o.nii").exists()


def test_write_unknown_extension(tmp_path):
    zeros = np.zeros((2, 2, 2))
    message = error_of(ConfigError, write_volume, tmp_path / "o.png", zeros, np.eye(4))
    assert "o.png" in message and ".nii.gz" in message


def test_write_accepts_torch_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    out = write_volume(tmp_path / "t.nii", torch.ones(2, 3, 4, dtype=torch.int64), np.eye(4))
    vol = read_volume(out)
    assert vol.array.dtype == np.uint8 and vol.array.shape == (2, 3, 4)


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
