"""Tests for volseg.io's checks: bad files are refused with one-line errors naming them, dimensions
are squeezed or refused, and writes refuse, replace or fail without leaving anything half-written.
Reads and writes that keep geometry: test_io.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from io_support import error_of, image_array, nib_write

import volseg.io.atomic
from volseg.errors import ConfigError, InputFileError, OutputError, OutputExistsError, ShapeError
from volseg.io import Volume, check_finite, read_volume, write_volume

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
