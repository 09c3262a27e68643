"""Corpus rows for ``volseg predict``'s input file: files that are not volumes, shapes volseg cannot
segment, voxel values, other formats and geometry (the contract: test_bad_inputs.py)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from corpus_support import (
    BRATS,
    OBLIQUE,
    PREDICT,
    PREDICT4,
    SHAPE,
    Ctx,
    Fails,
    Works,
    affine_of,
    image,
    input_nifti,
    nifti,
    predict,
    raw_bytes,
    raw_input,
    rotation,
    set_fields,
)

from volseg import io as vio

SHEARED = affine_of(np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.2], [0.1, 0.0, 1.5]]))
QFORM = affine_of(rotation(15, 2) @ np.diag([1.0, 1.0, 1.5]), origin=(-5.0, 2.0, 1.0))
SFORM = affine_of(np.diag([0.8, 0.9, 2.0]), origin=(10.0, 20.0, -30.0))
NON_ORTHONORMAL = np.array([[1.0, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.3, 1.0]])


# ----------------------------------------------------------------------------- builders


def truncated(suffix: str, fraction: float = 0.5) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        path = nifti(c.d / f"full{suffix}", image())
        data = path.read_bytes()
        path.unlink()
        (c.d / f"in{suffix}").write_bytes(data[: int(len(data) * fraction)])

    return build


def gzip_flipped_byte(c: Ctx) -> None:
    """A .nii.gz whose compressed stream has one byte flipped near its end (CRC or inflate error)."""
    path = nifti(c.d / "full.nii.gz", image())
    data = bytearray(path.read_bytes())
    path.unlink()
    data[-12] ^= 0xFF
    (c.d / "in.nii.gz").write_bytes(bytes(data))


def wrong_magic(c: Ctx) -> None:
    path = nifti(c.d / "full.nii", image())
    data = bytearray(path.read_bytes())
    path.unlink()
    data[344:348] = b"xyz\0"
    (c.d / "in.nii").write_bytes(bytes(data))


def header_claims(shape: tuple[int, ...], datatype=np.float32) -> Callable[[Ctx], None]:
    """A NIfTI whose header says ``shape`` but which holds a few bytes of data only."""

    def build(c: Ctx) -> None:
        header = nib.Nifti1Header()
        header.set_data_dtype(datatype)
        header["dim"][0] = len(shape)
        header["dim"][1 : len(shape) + 1] = shape
        header["pixdim"][1:4] = 1.0
        header["vox_offset"] = 352
        header.set_sform(np.eye(4), code=1)
        (c.d / "in.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 64)

    return build


def with_nonfinite(value: float) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        arr = image()
        arr[5, 5, 5] = value
        arr[6, 6, 6] = value
        nifti(c.d / "in.nii.gz", arr)

    return build


def extremes(dtype) -> Callable[[Ctx], None]:
    """Integer data reaching both ends of its type, with an ordinary body between."""

    def build(c: Ctx) -> None:
        info = np.iinfo(dtype)
        arr = np.clip(image(), info.min, info.max).astype(dtype)
        arr[2:5, 2:5, 2:5] = info.max
        arr[10:13, 10:13, 6:9] = info.min if info.min < 0 else 0
        arr[0, 0, 0] = info.min
        nifti(c.d / "in.nii.gz", arr)

    return build


def mha_with_direction(direction: np.ndarray) -> Callable[[Ctx], None]:
    """An MHA file with a non-orthonormal direction matrix written into its text header."""

    def build(c: Ctx) -> None:
        data = np.ascontiguousarray(image().transpose(2, 1, 0))  # (z, y, x) for ITK
        matrix = " ".join(f"{v:.6f}" for v in direction.T.ravel())  # MetaIO lists columns
        header = (
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = False\nTransformMatrix = {matrix}\nOffset = 1 2 3\n"
            "ElementSpacing = 1 1 1\nDimSize = 20 18 12\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
        )
        (c.d / "in.mha").write_bytes(header.encode() + data.astype("<f4").tobytes())

    return build


def brats_case(missing: str | None) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        folder = c.d / "BraTS-001"
        folder.mkdir()
        for i, channel in enumerate(BRATS):
            if channel != missing:
                nifti(folder / f"BraTS-001_{channel}.nii.gz", image(seed=i))

    return build


def _mgz_input(c: Ctx) -> None:
    nib.save(nib.MGHImage(image(), OBLIQUE), str(c.d / "in.mgz"))


def _gifti_input(c: Ctx) -> None:
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.zeros(4, np.float32))]), str(c.d / "in.gii"))


def _nibabel_file(name: str) -> Callable[[Ctx], None]:
    """A copy of a file of nibabel's installed test data."""

    def build(c: Ctx) -> None:
        (c.d / name).write_bytes((Path(nib.__file__).parent / "tests" / "data" / name).read_bytes())

    return build


def check_qform_equals_sform(c_affine: np.ndarray) -> Callable[[Path], None]:
    def check(output: Path) -> None:
        img = nib.load(str(output))
        np.testing.assert_allclose(img.get_sform(), c_affine, atol=1e-5)
        np.testing.assert_allclose(img.get_qform(), c_affine, atol=1e-4)
        assert int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0

    return check


def _labels_only(values: set[int]) -> Callable[[Path], None]:
    def check(output: Path) -> None:
        assert set(np.unique(vio.read_volume(output).array).tolist()) <= values

    return check


def _rgb(alpha: bool = False) -> np.ndarray:
    grey = np.clip(image(), 0, 255).astype(np.uint8)
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")] + ([("A", "u1")] if alpha else []))
    rgb["R"], rgb["G"], rgb["B"] = grey, grey // 2, grey // 3
    if alpha:
        rgb["A"] = 255
    return rgb


def _sheared_kept(output: Path) -> None:
    """The sform keeps the shear exactly; the qform (rigid by definition) holds the nearest rigid affine."""
    img = nib.load(str(output))
    np.testing.assert_allclose(img.get_sform(), SHEARED, atol=1e-5)
    linear = img.get_qform()[:3, :3]
    rotation_part = linear / np.linalg.norm(linear, axis=0)
    np.testing.assert_allclose(rotation_part.T @ rotation_part, np.eye(3), atol=1e-5)
    assert not np.allclose(img.get_qform(), SHEARED, atol=1e-3)


def _fix_pixdim(header: nib.Nifti1Header) -> None:
    header["pixdim"][2] = 0.0


# ----------------------------------------------------------------------------- the rows


PREDICT_INPUTS: list = [
    # --- files that are not volumes
    ("truncated .nii.gz", truncated(".nii.gz"), PREDICT, Fails("truncated or corrupt image data")),
    ("truncated .nii (data cut)", truncated(".nii", 0.6), predict("in.nii"), Fails("truncated or corrupt image data")),
    ("header-only .nii.gz (cut at 200 bytes)", truncated(".nii.gz", 0.05), PREDICT, Fails("in.nii.gz")),
    ("gzip stream with a flipped byte", gzip_flipped_byte, PREDICT, Fails("truncated or corrupt image data")),
    (
        "text file named .nii.gz",
        raw_bytes("in.nii.gz", b"patient: 12\nno image here\n"),
        PREDICT,
        Fails("not a valid NIfTI file"),
    ),
    ("empty file named .nii.gz", raw_bytes("in.nii.gz", b""), PREDICT, Fails("in.nii.gz")),
    ("wrong magic bytes", wrong_magic, predict("in.nii"), Fails("not a valid NIfTI file")),
    ("vox_offset = inf", raw_input(image(), set_fields(vox_offset=np.inf)), PREDICT, Fails("not a valid NIfTI file")),
    (
        "vox_offset past the end of the file",
        raw_input(image(), set_fields(vox_offset=1e6)),
        PREDICT,
        Fails("truncated or corrupt image data"),
    ),
    (
        "unknown datatype code",
        raw_input(image(), set_fields(datatype=77)),
        PREDICT,
        Fails("not a valid NIfTI file (data code 77 not recognized)"),
    ),
    (
        "pixdim 0 (nibabel sets it to 1; a warning says so)",
        raw_input(image(), _fix_pixdim),
        PREDICT,
        Works(grid="in.nii.gz", stderr="nibabel corrected its header: pixdim[1,2,3] should be non-zero"),
    ),
    (
        "pixdim 0 and NaN voxels, --strict: the error alone",
        raw_input(np.where(image() > 90, np.nan, image()), _fix_pixdim),
        [*PREDICT, "--strict"],
        Fails("NaN or infinite"),
    ),
    (
        "gzip of text named .nii.gz",
        raw_bytes("in.nii.gz", gzip.compress(b"hello " * 100)),
        PREDICT,
        Fails("not a valid NIfTI file"),
    ),
    (
        "text file named .nrrd",
        raw_bytes("in.nrrd", b"NRRD0004\ntype: float\nnonsense\n"),
        predict("in.nrrd"),
        Fails("not a readable image"),
    ),
    (
        "unknown extension (.png)",
        raw_bytes("in.png", b"\x89PNG\r\n\x1a\n"),
        predict("in.png"),
        Fails("unknown file extension"),
    ),
    ("missing input file", lambda c: None, PREDICT, Fails("no such file or folder")),
    ("a folder named in.nii.gz", lambda c: (c.d / "in.nii.gz").mkdir(), PREDICT, Fails("found no volumes to segment")),
    (
        "input path through a file",
        raw_bytes("blocker", b"x"),
        predict("blocker/in.nii.gz"),
        Fails("no such file or folder"),
    ),
    # --- shapes volseg cannot segment
    ("2D image for a 3D model", input_nifti(image((20, 18))), PREDICT, Fails("is 2D; volseg pipelines need 3D")),
    (
        "4D (3 channels) for a 1-channel model",
        input_nifti(image((20, 18, 12, 3))),
        PREDICT,
        Fails("the model takes 1 channels (image); the input has 3"),
    ),
    ("5D image", input_nifti(image((10, 10, 8, 2, 3))), PREDICT, Fails("non-singleton dimensions")),
    (
        "1D image",
        raw_input(np.arange(50, dtype=np.float32), lambda h: None),
        PREDICT,
        Fails("has 1 dimension(s) (shape (50,)); volseg reads 2D and 3D volumes"),
    ),
    (
        "RGB image for a 1-channel model",
        input_nifti(_rgb()),
        PREDICT,
        Fails("the model takes 1 channels (image); the input has 3"),
    ),
    (
        "RGBA image for a 1-channel model",
        input_nifti(_rgb(alpha=True)),
        PREDICT,
        Fails("the model takes 1 channels (image); the input has 4"),
    ),
    (
        "complex-valued image",
        input_nifti(image().astype(np.complex64)),
        PREDICT,
        Fails("has complex64 voxels; volseg reads integer or float data"),
    ),
    ("zero-sized dimension", header_claims((20, 0, 12)), predict("in.nii"), Fails("zero-sized dimension")),
    (
        "header claiming terabytes",
        header_claims((20000, 20000, 20000)),
        predict("in.nii"),
        Fails("over the 8.0 GiB limit"),
    ),
    (
        "header claiming more data than the file holds",
        header_claims((64, 64, 64)),
        predict("in.nii"),
        Fails("truncated or corrupt image data"),
    ),
    (
        "1-channel image for a 4-channel model",
        input_nifti(image()),
        PREDICT4,
        Fails("the model takes 4 channels (flair, t1, t1ce, t2); the input has 1"),
    ),
    (
        "BraTS case folder missing t2",
        brats_case("t2"),
        predict("BraTS-001", model="{ckpt4}"),
        Fails("BraTS case BraTS-001: missing t2"),
    ),
    # --- voxel values
    (
        "NaN voxels (replaced by 0, one warning)",
        with_nonfinite(np.nan),
        PREDICT,
        Works(grid="in.nii.gz", stderr="2 NaN/Inf voxel(s) replaced by 0"),
    ),
    (
        "Inf voxels (replaced by 0, one warning)",
        with_nonfinite(np.inf),
        PREDICT,
        Works(grid="in.nii.gz", stderr="2 NaN/Inf voxel(s) replaced by 0"),
    ),
    ("-Inf voxels (replaced by 0, one warning)", with_nonfinite(-np.inf), PREDICT, Works(grid="in.nii.gz")),
    (
        "NaN voxels with --strict",
        with_nonfinite(np.nan),
        [*PREDICT, "--strict"],
        Fails("2 of 4320 voxels are NaN or infinite; refused by --strict"),
    ),
    ("Inf voxels with --strict", with_nonfinite(np.inf), [*PREDICT, "--strict"], Fails("refused by --strict")),
    # --- other formats (tests/test_formats.py has each one's geometry)
    ("FreeSurfer .mgz input", _mgz_input, predict("in.mgz"), Works(grid="in.mgz")),
    (
        "FreeSurfer .mgz input, --format same",
        _mgz_input,
        predict("in.mgz", "--format", "same", output="{d}/out"),
        Works(grid="in.mgz", output="out/in.mgz"),
    ),
    (
        "a CIFTI-2 file",
        _nibabel_file("row_major.dconn.nii"),
        predict("row_major.dconn.nii"),
        Fails("is a CIFTI-2 file"),
    ),
    ("a GIFTI surface", _gifti_input, predict("in.gii"), Fails("in.gii': is a GIFTI file")),
    (
        "a PAR header without its REC",
        _nibabel_file("T1.PAR"),
        predict("T1.PAR"),
        Fails("without its data file (T1.REC is missing)"),
    ),
    ("a streamlines file", _nibabel_file("simple.trk"), predict("simple.trk"), Fails("streamlines file")),
    (
        "scl_slope = inf (ignored, as nibabel does)",
        raw_input(image().astype(np.int16), set_fields(scl_slope=np.inf)),
        PREDICT,
        Works(grid="in.nii.gz"),
    ),
    (
        "scl_slope = NaN (no scaling)",
        raw_input(image().astype(np.int16), set_fields(scl_slope=np.nan)),
        PREDICT,
        Works(grid="in.nii.gz"),
    ),
    (
        "scl_inter = inf",
        raw_input(image().astype(np.int16), set_fields(scl_slope=2.0, scl_inter=np.inf)),
        PREDICT,
        Fails("Valid slope but invalid intercept inf"),
    ),
    (
        "scl_slope = 1e38 (scaled values overflow float32)",
        raw_input(image().astype(np.int16), set_fields(scl_slope=1e38, scl_inter=0.0)),
        PREDICT,
        Fails("has values beyond the float32 range"),
    ),
    (
        "scl_slope = 0 (no scaling, by the NIfTI standard)",
        raw_input(image().astype(np.int16), set_fields(scl_slope=0.0)),
        PREDICT,
        Works(grid="in.nii.gz"),
    ),
    ("int16 extremes", extremes(np.int16), PREDICT, Works(grid="in.nii.gz")),
    ("uint16 max", extremes(np.uint16), PREDICT, Works(grid="in.nii.gz")),
    ("int32 extremes", extremes(np.int32), PREDICT, Works(grid="in.nii.gz")),
    (
        "uint8 image of zeros only",
        input_nifti(np.zeros(SHAPE, np.uint8)),
        PREDICT,
        Works(grid="in.nii.gz", check=_labels_only({0, 1, 2})),
    ),
    ("int8 image", input_nifti(np.clip(image(), -128, 127).astype(np.int8)), PREDICT, Works(grid="in.nii.gz")),
    ("float64 image", input_nifti(image(dtype=np.float64)), PREDICT, Works(grid="in.nii.gz")),
    # --- geometry
    ("oblique affine", input_nifti(image(), OBLIQUE), PREDICT, Works(grid="in.nii.gz")),
    ("sheared affine (sform)", input_nifti(image(), SHEARED), PREDICT, Works(grid="in.nii.gz", check=_sheared_kept)),
    (
        "qform and sform disagree (sform wins)",
        input_nifti(image(), None, qform=(QFORM, 1), sform=(SFORM, 2)),
        PREDICT,
        Works(grid="in.nii.gz", check=check_qform_equals_sform(SFORM)),
    ),
    (
        "qform only (sform_code 0)",
        input_nifti(image(), None, sform=(SFORM, 0), qform=(QFORM, 1)),
        PREDICT,
        Works(
            grid="in.nii.gz",
            check=lambda out: np.testing.assert_allclose(vio.read_volume(out).affine, QFORM, atol=1e-5),
        ),
    ),
    (
        "no qform or sform (codes 0)",
        input_nifti(image(), None, sform=(SFORM, 0), qform=(QFORM, 0)),
        PREDICT,
        Works(grid="in.nii.gz"),
    ),
    ("non-orthonormal direction (MHA)", mha_with_direction(NON_ORTHONORMAL), predict("in.mha"), Works(grid="in.mha")),
    (
        "singular affine (sform with a zero column)",
        raw_input(image(), lambda h: (h.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1), set_fields(qform_code=0)(h))),
        PREDICT,
        Fails("non-invertible voxel-to-world affine"),
    ),
    ("1-slice volume", input_nifti(image((20, 18, 1))), PREDICT, Works(grid="in.nii.gz")),
    ("volume thinner than the window (20x18x3)", input_nifti(image((20, 18, 3))), PREDICT, Works(grid="in.nii.gz")),
    ("tiny volume (2x2x2)", input_nifti(image((2, 2, 2))), PREDICT, Works(grid="in.nii.gz")),
]
