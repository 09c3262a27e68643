"""Read and write volumes with their geometry: every format of :mod:`volseg.io.naming`.

A :class:`Volume` holds the array in the file's voxel order ``(i, j, k)`` as nibabel gives
it (channels last) and a 4x4 voxel -> RAS+ mm affine; SimpleITK reads (LPS, ``(z, y, x)``)
are converted to that convention (the readers are in :mod:`volseg.io.formats`). Bad input raises
a one-line ``InputFileError`` naming the file; writes are atomic (temporary file in the target
folder, fsync, rename).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from volseg.errors import ConfigError, OutputExistsError, ShapeError
from volseg.io import formats
from volseg.io.atomic import atomic_target
from volseg.io.naming import READ_SUFFIXES, WRITE_SUFFIXES, describe_formats, format_of, not_a_volume
from volseg.io.volume import Volume, _check_affine, _check_shape, _fail  # noqa: F401 - Volume is re-exported

logger = logging.getLogger(__name__)

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "MAX_BYTES",
    "Volume",
    "read_volume",
    "write_volume",
    "check_finite",
    "fill_nonfinite",
    "output_dtype",
    "orientation_code",
    "same_grid",
    "check_same_grid",
]
MAX_BYTES = 8 * 1024**3  # default limit on the memory a header may claim, checked before loading


def read_volume(
    path: str | os.PathLike,
    *,
    dtype: npt.DTypeLike | None = None,
    series_id: str | None = None,
    allow_nonfinite: bool = False,
    nonfinite_hint: str = "clean the file or pass allow_nonfinite=True",
    max_bytes: int = MAX_BYTES,
) -> Volume:
    """Read a volume file (any format of :mod:`volseg.io.naming`) or a DICOM series folder.

    Values as stored (integer labels stay integers; scaling where the format sets it), in
    native byte order. ``series_id`` picks one series of a DICOM folder that holds several.
    Float data with NaN/Inf raises (ending with ``nonfinite_hint``) unless ``allow_nonfinite``
    (see :func:`fill_nonfinite`).
    ``dtype`` casts the array after these checks. ``max_bytes``: the most memory a header may
    claim (checked before the data are read). Raises :class:`InputFileError` for any
    unreadable or invalid input, naming the file and what it is.
    """

    path = Path(path)
    fixes: list[str] = []  # what nibabel corrected in a header
    if not path.exists():
        raise _fail(path, "no such file or folder")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):  # else readers blame the format
        raise _fail(path, "is not readable by this user (permission denied)")
    if path.is_dir():
        with formats.keep_locale():
            volume = formats._read_dicom_series(path, series_id, max_bytes)
    else:
        what, fmt = not_a_volume(path.name), format_of(path.name)
        if what is not None:
            raise _fail(path, f"is {what}")
        if fmt is None:
            raise _fail(path, f"unknown file extension; supported: {describe_formats()}; or a DICOM series folder")
        with formats.keep_locale():
            volume = formats.read_file(path, fmt, max_bytes, fixes)
    if not allow_nonfinite:
        check_finite(volume, hint=nonfinite_hint)
    if fixes:  # said only for a usable file: an error says all there is to say
        logger.warning("%s: nibabel corrected its header: %s", path, "; ".join(fixes))
    if dtype is not None:
        volume.array = volume.array.astype(dtype, copy=False)
    logger.debug(
        "read %s: shape %s, %s, %s, spacing %s",
        path,
        volume.array.shape,
        volume.array.dtype,
        orientation_code(volume.affine),
        volume.spacing,
    )
    return volume


def _count_nonfinite(arr: np.ndarray) -> int:
    return 0 if arr.dtype.kind not in "fc" else arr.size - int(np.count_nonzero(np.isfinite(arr)))


def check_finite(volume: Volume, *, hint: str = "clean the file or pass allow_nonfinite=True") -> None:
    """Raise :class:`InputFileError` naming the file and the count of NaN/Inf voxels, then ``hint``."""
    bad = _count_nonfinite(volume.array)
    if bad:
        raise _fail(
            volume.path or "<in-memory volume>", f"{bad} of {volume.array.size} voxels are NaN or infinite; {hint}"
        )


def fill_nonfinite(volume: Volume, fill: str = "zero") -> tuple[int, float | None]:
    """Replace NaN/Inf voxels of ``volume`` in place by 0 (``fill="zero"``) or by the smallest
    finite value (``fill="min"``, for CT, where 0 is tissue); 0 when none is finite.

    Returns ``(count, value)``: how many voxels were replaced and by what (``value`` is None
    when none was).
    """
    if fill not in ("zero", "min"):
        raise ConfigError(f"fill={fill!r} is not valid; allowed: zero, min")
    arr = volume.array
    count = _count_nonfinite(arr)
    if not count:
        return 0, None
    finite = np.isfinite(arr)
    value = float(arr[finite].min()) if fill == "min" and finite.any() else 0.0
    if not arr.flags.writeable:
        arr = volume.array = arr.copy()
    arr[~finite] = value
    return count, value


def output_dtype(array: np.ndarray) -> np.dtype:
    """The dtype :func:`write_volume` stores ``array`` as: bool -> uint8; integers -> the
    first of uint8, uint16, int16, int32 that holds ``[min, max]``; floats -> float32."""
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if array.dtype.kind in "ui":
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for candidate in (np.uint8, np.uint16, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
        raise ConfigError(f"label values {lo}..{hi} do not fit int32; cast them first")
    if array.dtype.kind == "f":
        return np.dtype(np.float32)
    raise ConfigError(f"cannot write an array of dtype {array.dtype}; allowed: bool, int, float")


def _cast(array: np.ndarray, dtype: npt.DTypeLike | None) -> np.ndarray:
    target = output_dtype(array) if dtype is None else np.dtype(dtype)
    if target.kind in "ui" and array.dtype.kind in "uib" and array.size:
        lo, hi, info = int(array.min()), int(array.max()), np.iinfo(target)
        if lo < info.min or hi > info.max:
            raise ConfigError(f"values {lo}..{hi} do not fit dtype {target}")
    return array.astype(target, copy=False)


def write_volume(
    path: str | os.PathLike,
    array: np.ndarray,
    reference: Volume | np.ndarray,
    *,
    overwrite: bool = False,
    dtype: npt.DTypeLike | None = None,
) -> Path:
    """Write ``array`` (``(*S)`` or ``(*S, C)``) atomically on the grid of ``reference``.

    ``reference`` is a :class:`Volume` (its spatial shape must equal ``S``; its NIfTI header's
    qform/sform codes, units and description are copied) or a 4x4 RAS affine. Formats by
    extension (:data:`WRITE_SUFFIXES`): NIfTI .nii/.nii.gz, a NIfTI pair .hdr (+ .img), MGH
    .mgh/.mgz (nibabel); .nrrd, .seg.nrrd, .mha, MINC 2 .mnc (SimpleITK, compressed).
    Stored dtype: ``dtype`` if given, else see :func:`output_dtype` (labels as uint8 when
    they fit, floats as float32); scl_slope/scl_inter are reset so values are stored raw.
    A missing parent folder is created. Returns the written path.
    """
    out = Path(path)
    fmt = format_of(out.name)
    if fmt is None or not out.name.lower().endswith(WRITE_SUFFIXES):
        raise ConfigError(f"cannot write '{out}': unknown extension; allowed: {', '.join(WRITE_SUFFIXES)}")
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if isinstance(reference, Volume):
        affine, header, sdims = reference.affine, reference.header, reference.spatial_dims
        if tuple(array.shape[:sdims]) != reference.spatial_shape or array.ndim > sdims + 1:
            raise ShapeError(
                f"cannot write '{out}': array shape {tuple(array.shape)} does not "
                f"match the grid {reference.spatial_shape} of '{reference.path}'"
            )
    else:
        affine, header = np.asarray(reference, dtype=np.float64), None
        sdims = 2 if array.ndim == 2 else 3
        if affine.shape != (4, 4) or array.ndim not in (sdims, sdims + 1):
            raise ShapeError(
                f"cannot write '{out}': need a 4x4 affine and a 2D/3D array "
                f"(channels last), got {affine.shape} and {tuple(array.shape)}"
            )
    if out.is_dir():
        raise OutputExistsError(f"cannot write '{out}': it is a folder")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"'{out}' exists; pass overwrite=True (--overwrite on the command line) to replace it")
    array = _cast(array, dtype)

    if fmt.writer == "pair":
        with formats.keep_locale():
            formats.write_pair(out, array, affine, header)
    else:
        with atomic_target(out) as tmp, formats.keep_locale():
            formats.write_file(tmp, out, fmt, array, affine, header, sdims)
    logger.debug("wrote %s: shape %s, %s", out, array.shape, array.dtype)
    return out


def orientation_code(affine: np.ndarray) -> str:
    """Axis codes of an affine as a string, e.g. ``"RAS"`` or ``"LPS"``."""
    return "".join(c or "?" for c in nib.orientations.aff2axcodes(np.asarray(affine)))


def same_grid(a: Volume, b: Volume, *, atol: float = 1e-5) -> bool:
    """Whether two volumes have the same spatial shape and affines within ``atol``."""
    same = a.spatial_shape == b.spatial_shape
    return same and bool(np.allclose(a.affine, b.affine, rtol=0.0, atol=atol))


def check_same_grid(image: Volume, label: Volume, *, atol: float = 1e-5) -> None:
    """Raise :class:`ShapeError` naming both files when ``image`` and ``label`` grids differ."""
    names = f"image '{image.path}' and label '{label.path}'"
    if image.spatial_shape != label.spatial_shape:
        raise ShapeError(f"{names} have different shapes: {image.spatial_shape} vs {label.spatial_shape}")
    diff = float(np.max(np.abs(image.affine - label.affine)))
    if diff > atol:
        raise ShapeError(
            f"{names} have different affines (largest difference {diff:.3g}, "
            f"tolerance {atol}; orientations {orientation_code(image.affine)} vs "
            f"{orientation_code(label.affine)})"
        )
