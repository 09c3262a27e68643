"""NIfTI header fields fuzzed with ``hypothesis`` against ``read_volume``: every file reads or raises
:class:`InputFileError`, never anything else (docs/reliability.md, "Fuzzed NIfTI headers"; the corpus
of whole command lines is test_bad_inputs.py)."""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from corpus_support import affine_of, rotation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volseg import io as vio
from volseg.errors import InputFileError

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.int64]
#: NIfTI datatype codes: the usual ones, RGB (128), complex (32, 1792), RGBA (2304), float128 (1536),
#: complex256 (2048), and codes that mean nothing.
DATATYPES = [2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 32, 128, 1792, 2304, 0, 1, 1536, 2048, 77, -3, 30000]
HOSTILE = st.sampled_from([0.0, -1.0, 1e-30, 1e30, 3e38, float("nan"), float("inf"), float("-inf")])
FLOATS = st.one_of(HOSTILE, st.floats(-1e4, 1e4, allow_nan=False))
FIELDS = (
    "dim",
    "dim0",
    "pixdim",
    "datatype",
    "bitpix",
    "vox_offset",
    "scl_slope",
    "scl_inter",
    "sform_code",
    "qform_code",
    "srow",
    "quatern",
    "magic",
    "sizeof_hdr",
    "extension",
    "payload",
)


@st.composite
def nifti_files(draw):
    """A valid small NIfTI-1 file with one to three header fields (or its data) made hostile."""
    shape = draw(st.lists(st.integers(1, 4), min_size=2, max_size=5))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    size = int(np.prod(shape)) * dtype.itemsize
    payload = draw(st.binary(min_size=size, max_size=size)) if draw(st.booleans()) else bytes(size)
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_zooms([draw(st.sampled_from([0.5, 1.0, 2.5])) for _ in shape])
    header["vox_offset"] = 352
    header.set_sform(affine_of(np.diag([1.0, 1.0, 2.0])), code=1)
    header.set_qform(affine_of(rotation(10) @ np.diag([1.0, 1.0, 2.0])), code=1)
    extension = b"\0\0\0\0"
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        if name == "dim":
            header["dim"][draw(st.integers(1, 7))] = draw(st.sampled_from([0, 1, 2, 5, -1, 255, 32767, -32768]))
        elif name == "dim0":
            header["dim"][0] = draw(st.sampled_from([-1, 0, 1, 6, 7, 8, 300]))
        elif name == "pixdim":
            header["pixdim"][draw(st.integers(0, 7))] = draw(HOSTILE)
        elif name == "datatype":
            header["datatype"] = draw(st.sampled_from(DATATYPES))
        elif name == "bitpix":
            header["bitpix"] = draw(st.sampled_from([0, 1, 7, 8, 16, 64, 128, -8]))
        elif name == "vox_offset":
            header["vox_offset"] = draw(
                st.sampled_from([0.0, 348.0, 351.0, 353.0, 368.0, 1e9, -352.0, float("nan"), float("inf")])
            )
        elif name in ("scl_slope", "scl_inter"):
            header[name] = draw(FLOATS)
        elif name in ("sform_code", "qform_code"):
            header[name] = draw(st.sampled_from([0, 2, 3, 4, 5, -1, 255]))
        elif name == "srow":
            header[draw(st.sampled_from(["srow_x", "srow_y", "srow_z"]))][draw(st.integers(0, 3))] = draw(FLOATS)
        elif name == "quatern":
            header[draw(st.sampled_from(["quatern_b", "quatern_c", "quatern_d", "qoffset_x"]))] = draw(FLOATS)
        elif name == "magic":
            header["magic"] = draw(st.sampled_from([b"ni1", b"n+2", b"xyz", b""]))
        elif name == "sizeof_hdr":
            header["sizeof_hdr"] = draw(st.sampled_from([0, 540, 347, -348, 1 << 24]))
        elif name == "extension":
            extension = draw(
                st.sampled_from(
                    [
                        b"",
                        b"\1\0\0\0",
                        b"\1\0\0\0" + struct.pack("<ii", 16, 6) + bytes(8),
                        b"\1\0\0\0" + struct.pack("<ii", 1 << 30, 6),
                    ]
                )
            )
        else:
            cut = draw(st.integers(0, len(payload)))
            payload = payload[:cut] if draw(st.booleans()) else payload + bytes(draw(st.integers(1, 64)))
    compressed = draw(st.booleans())
    return header.binaryblock + extension + payload, compressed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(nifti_files())
def test_fuzzed_nifti_headers_read_or_raise_input_file_error(example):
    data, compressed = example
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("fuzz.nii.gz" if compressed else "fuzz.nii")
        path.write_bytes(gzip.compress(data) if compressed else data)
        try:
            volume = vio.read_volume(path, max_bytes=16 * 1024**2)
        except InputFileError as error:
            assert "\n" not in str(error) and str(path) in str(error)
            return
    assert volume.spatial_dims in (2, 3) and min(volume.array.shape) >= 1
    assert volume.array.ndim in (volume.spatial_dims, volume.spatial_dims + 1)
    assert np.all(np.isfinite(volume.affine)) and abs(np.linalg.det(volume.affine[:3, :3])) > 0
    assert volume.array.dtype.kind in "uif"
    if volume.array.dtype.kind == "f":
        assert np.all(np.isfinite(volume.array))
    assert volume.channels_first().dtype == np.float32  # what the pipelines take


def test_struct_sizes_of_the_fuzzed_header():
    """The fuzz writes a real NIfTI-1 header: 348 bytes, magic n+1 at 344."""
    block = nib.Nifti1Header().binaryblock
    assert len(block) == 348 and struct.unpack("<i", block[:4])[0] == 348 and block[344:348] == b"n+1\0"
