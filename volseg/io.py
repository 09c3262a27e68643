"""Read and write volumes with their geometry: NIfTI, NRRD/MHA/MHD and DICOM series.

A :class:`Volume` holds the array in the file's voxel order ``(i, j, k)`` as nibabel gives
it (channels last) and a 4x4 voxel -> RAS+ mm affine; SimpleITK reads (LPS, ``(z, y, x)``)
are converted to that convention. Bad input raises a one-line ``InputFileError`` naming the
file; writes are atomic (temporary file in the target folder, fsync, rename).
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.lib import recfunctions

from volseg.errors import ConfigError, InputFileError, OutputExistsError, ShapeError
from volseg.atomic import atomic_target

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".seg.nrrd", ".nhdr", ".mha", ".mhd")
READ_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# Only single-file formats can be written atomically (.mhd/.nhdr have a separate data file).
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha")
MAX_BYTES = 8 * 1024**3  # default limit on the memory a header may claim, checked before loading

_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse: flips x and y
# OverflowError: a header field nibabel turns into an integer is infinite (e.g. vox_offset).
_NIFTI_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError, OverflowError)


@dataclass
class Volume:
    """A voxel array with its geometry.

    ``array``: ``(*S)`` scalar or ``(*S, C)`` multi-channel, ``S`` in the file's voxel order
    ``(i, j, k)`` (``(i, j)`` in 2D). ``affine``: 4x4 float64, voxel index -> RAS+ mm.
    ``header``: the NIfTI header (nibabel reads only), whose qform/sform codes, units and
    description writes on this grid copy. ``spatial_dims``: 2 or 3, default 2 for 2D arrays.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: Any = None
    spatial_dims: int | None = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ShapeError(f"a volume affine must be 4x4, got shape {self.affine.shape}")
        if self.spatial_dims is None:
            self.spatial_dims = 2 if self.array.ndim == 2 else 3
        sd = self.spatial_dims
        if sd not in (2, 3) or self.array.ndim not in (sd, sd + 1):
            raise ShapeError(f"a {sd}D volume array needs {sd} or {sd + 1} (channels last) "
                             f"axes, got shape {self.array.shape}")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``S``: the first 3 (or 2) axes of ``array``."""
        return tuple(int(n) for n in self.array.shape[: self.spatial_dims])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel sizes in mm along each spatial axis (norms of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, : self.spatial_dims], axis=0))

    @property
    def num_channels(self) -> int:
        """``C``: 1 for a scalar volume."""
        return 1 if self.array.ndim == self.spatial_dims else int(self.array.shape[-1])

    @property
    def orientation(self) -> tuple[str, ...]:
        """Axis codes of the voxel axes, e.g. ``("L", "P", "S")``."""
        return tuple(c or "?" for c in nib.orientations.aff2axcodes(self.affine))

    def channels_first(self) -> np.ndarray:
        """The array as ``(C, *S)`` float32 (``C = 1`` for a scalar volume)."""
        arr = self.array if self.array.ndim > self.spatial_dims else self.array[..., None]
        with np.errstate(over="ignore"):  # values beyond float32 become inf, which callers reject as non-finite
            return np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float32)


def _suffix(path: Path, allowed: tuple[str, ...] = READ_SUFFIXES) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(allowed, key=len, reverse=True) if name.endswith(s)), None)


def _fail(path: object, problem: object) -> InputFileError:
    """An ``InputFileError`` with a one-line message naming ``path``."""
    return InputFileError(f"cannot read '{path}': {' '.join(str(problem).split())}")


def _itk_message(err: Exception) -> str:
    """The useful last line of a SimpleITK/ITK exception (drops the C++ source location)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return re.sub(r"^(sitk::ERROR|ITK ERROR):\s*", "", lines[-1]) if lines else type(err).__name__


def _check_shape(path: Path, shape: tuple[int, ...], itemsize: int, max_bytes: int) -> tuple:
    """Check a header shape before loading; drop singleton axes past the third:
    ``(X, Y, Z, 1, C)`` (as some tools write) -> ``(X, Y, Z, C)``; ``(X, Y, Z, 1)`` -> 3D."""
    shape = tuple(int(n) for n in shape)
    if any(n <= 0 for n in shape):
        raise _fail(path, f"has a zero-sized dimension (shape {shape})")
    if len(shape) < 2:
        raise _fail(path, f"has {len(shape)} dimension(s) (shape {shape}); volseg reads 2D and 3D volumes")
    squeezed = shape[:3] + tuple(n for n in shape[3:] if n != 1)
    if len(squeezed) > 4:
        raise _fail(path, f"has {len(squeezed)} non-singleton dimensions (shape {shape}); "
                    "volseg reads 2D/3D volumes with at most one channel axis")
    nbytes = int(np.prod(squeezed, dtype=np.float64)) * itemsize
    if nbytes > max_bytes:
        raise _fail(path, f"header claims shape {shape} ({nbytes / 1024**3:.1f} GiB in memory), "
                    f"over the {max_bytes / 1024**3:.1f} GiB limit (max_bytes); corrupt header?")
    return squeezed


def _check_affine(path: Path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise _fail(path, f"has a non-invertible voxel-to-world affine {affine[:3].tolist()}")


def _itk_to_affine(spacing: tuple, direction: tuple, origin: tuple) -> np.ndarray:
    """RAS affine from SimpleITK geometry (LPS); a 2D image gets a unit third axis."""
    dim, n, lps = len(spacing), min(len(spacing), 3), np.eye(4)
    lps[:n, :n] = np.reshape(direction, (dim, dim))[:n, :n] * np.asarray(spacing[:n])
    lps[:n, 3] = origin[:n]
    return _LPS_RAS @ lps


def _affine_to_itk(affine: np.ndarray, spatial_dims: int) -> tuple[list, list, list]:
    """SimpleITK ``(spacing, direction, origin)`` (LPS) for a RAS affine."""
    lps, n = _LPS_RAS @ affine, spatial_dims
    spacing = np.linalg.norm(lps[:n, :n], axis=0)
    return spacing.tolist(), (lps[:n, :n] / spacing).ravel().tolist(), lps[:n, 3].tolist()


def _itk_itemsize(pixel_id: int) -> int:
    """Bytes per component of a SimpleITK pixel type ("16-bit signed integer" -> 2)."""
    match = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(pixel_id))
    return int(match.group(1)) // 8 if match else 8


def _from_sitk(image: sitk.Image, path: Path) -> Volume:
    """Convert a SimpleITK image: ``(z, y, x[, C])`` array -> ``(x, y, z[, C])``, LPS -> RAS."""
    dim, comps = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dim > 4 or (dim == 4 and comps > 1):
        raise _fail(path, f"has {dim} dimensions and {comps} components; at most 3D + channels")
    arr = sitk.GetArrayFromImage(image)
    arr = arr.transpose(list(range(dim))[::-1] + ([dim] if comps > 1 else []))  # a view
    if dim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    affine = _itk_to_affine(image.GetSpacing(), image.GetDirection(), image.GetOrigin())
    _check_affine(path, affine)
    return Volume(arr, affine, path, None, spatial_dims=min(dim, 3))


def _read_gz_checked(path: Path, proxy: Any, *, scaled: bool = True) -> np.ndarray:
    """Data of a .nii.gz read through Python's gzip reader to the end, so that the gzip CRC
    is checked (nibabel reads only the bytes it needs and misses silent corruption).
    ``proxy``: the ``dataobj`` of the image :func:`nibabel.load` read (its header is not
    parsed again, so nibabel's header checks run once). ``scaled=False`` ignores scl_slope/inter."""
    spec = (proxy.shape, proxy.dtype, proxy.offset, *((proxy.slope, proxy.inter) if scaled else (1.0, 0.0)))
    with gzip.open(path, "rb") as f:
        arr = np.asanyarray(nib.arrayproxy.ArrayProxy(f, spec, mmap=False))
        while f.read(1 << 24):  # any trailing bytes; the CRC check happens at the end
            pass
    return arr


_NIBABEL_LOCK = threading.Lock()


@contextmanager
def _nibabel_messages() -> Iterator[list[str]]:
    """Collect what nibabel's header checks report (it prints them to stderr itself, e.g.
    "pixdim[1,2,3] should be non-zero; setting 0 dims to 1") instead of printing them."""
    nib_logger = nib.imageglobals.logger
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    collector = _Collect()
    with _NIBABEL_LOCK:  # the handlers are global: one swap at a time
        handlers, propagate = list(nib_logger.handlers), nib_logger.propagate
        for handler in handlers:
            nib_logger.removeHandler(handler)
        nib_logger.addHandler(collector)
        nib_logger.propagate = False
        try:
            yield messages
        finally:
            nib_logger.removeHandler(collector)
            for handler in handlers:
                nib_logger.addHandler(handler)
            nib_logger.propagate = propagate


def _read_nifti(path: Path, max_bytes: int, fixes: list[str]) -> Volume:
    """Read a NIfTI file; what nibabel corrected in its header is added to ``fixes``."""
    with _nibabel_messages() as messages:
        try:
            img = nib.load(str(path), mmap=False)
            shape = img.shape
            hdr_dtype = img.header.get_data_dtype()
            scaled = img.dataobj.slope != 1 or img.dataobj.inter != 0
        except _NIFTI_ERRORS as err:
            raise _fail(path, f"not a valid NIfTI file ({err})") from err
    fixes += dict.fromkeys(messages)
    if hdr_dtype.kind == "c" or (hdr_dtype.fields and len({f[0] for f in hdr_dtype.fields.values()}) != 1):
        raise _fail(path, f"has {hdr_dtype} voxels; volseg reads integer or float data (RGB as 3 channels)")
    if scaled and hdr_dtype.fields:  # nifti1.h: scl_slope/scl_inter do not apply to RGB data
        fixes.append("scl_slope/scl_inter ignored: NIfTI does not scale RGB voxels")
        scaled = False
    # nibabel applies scl_slope/scl_inter when set, giving float64 data.
    shape = _check_shape(path, shape, 8 if scaled else hdr_dtype.itemsize, max_bytes)
    _check_affine(path, img.affine)
    try:
        gz = path.name.lower().endswith(".gz")
        if gz:
            arr = _read_gz_checked(path, img.dataobj, scaled=scaled)
        else:
            arr = np.asanyarray(img.dataobj if scaled else img.dataobj.get_unscaled())
    except _NIFTI_ERRORS as err:
        raise _fail(path, f"truncated or corrupt image data ({err})") from err
    arr = np.asarray(arr).reshape(shape, order="A")
    spatial_dims = 2 if len(shape) == 2 else 3
    if arr.dtype.fields:  # RGB(A): one channel per colour, channels last
        if len(shape) > 3:
            raise _fail(path, f"is a {len(shape)}D {arr.dtype} volume; colour volumes can have 2 or 3 dimensions")
        arr = recfunctions.structured_to_unstructured(arr)
        shape = shape + arr.shape[-1:]
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return Volume(arr, img.affine, path, img.header, spatial_dims=spatial_dims)


def _read_itk_file(path: Path, max_bytes: int) -> Volume:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise _fail(path, f"not a readable image ({_itk_message(err)})") from err
    comps = reader.GetNumberOfComponents()
    shape = tuple(reader.GetSize()) + ((comps,) if comps > 1 else ())
    _check_shape(path, shape, _itk_itemsize(reader.GetPixelID()), max_bytes)
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise _fail(path, f"truncated or corrupt image data ({_itk_message(err)})") from err
    return _from_sitk(image, path)


@contextmanager
def _quiet_itk() -> Iterator[None]:
    """Stop ITK printing its own warnings to stderr inside the block (restored after)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_dicom_series(folder: Path, series_id: str | None, max_bytes: int) -> Volume:
    reader = sitk.ImageSeriesReader()
    with _quiet_itk():
        ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise _fail(folder, "is a folder but holds no DICOM series")
    if series_id is None and len(ids) > 1:
        raise _fail(folder, f"holds {len(ids)} DICOM series ({', '.join(ids)}); give a folder that holds "
                    "one series (in Python, read_volume(..., series_id=) picks one)")
    if series_id is not None and series_id not in ids:
        raise _fail(folder, f"has no DICOM series {series_id!r}; found: {', '.join(ids)}")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id or ids[0])
    info = sitk.ImageFileReader()
    info.SetFileName(files[0])
    try:
        info.ReadImageInformation()
        comps = info.GetNumberOfComponents()
        shape = tuple(info.GetSize()[:2]) + (len(files),) + ((comps,) if comps > 1 else ())
        _check_shape(folder, shape, _itk_itemsize(info.GetPixelID()), max_bytes)
        reader.SetFileNames(files)
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError as err:
        raise _fail(folder, f"unreadable DICOM series ({_itk_message(err)})") from err
    if image.HasMetaDataKey("ITK_non_uniform_sampling_deviation"):
        logger.warning("%s: DICOM slices are unevenly spaced (missing slices?); the slice "
                       "spacing is an average and the geometry may be wrong", folder)
    return _from_sitk(image, folder)


def read_volume(
    path: str | os.PathLike,
    *,
    dtype: npt.DTypeLike | None = None,
    series_id: str | None = None,
    allow_nonfinite: bool = False,
    max_bytes: int = MAX_BYTES,
) -> Volume:
    """Read a NIfTI, NRRD, MHA/MHD file or a DICOM series folder into a :class:`Volume`.

    NIfTI keeps the stored dtype (integer labels stay integers; scaling only where
    scl_slope/scl_inter are set), in native byte order. ``series_id`` picks one series of a
    DICOM folder that holds several. Float data with NaN/Inf raises unless
    ``allow_nonfinite``. ``dtype`` casts the array after these checks.
    Raises :class:`InputFileError` for any unreadable or invalid input.
    """
    path = Path(path)
    fixes: list[str] = []  # what nibabel corrected in a NIfTI header
    if not path.exists():
        raise _fail(path, "no such file or folder")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):  # else readers blame the format
        raise _fail(path, "is not readable by this user (permission denied)")
    if path.is_dir():
        volume = _read_dicom_series(path, series_id, max_bytes)
    else:
        suffix = _suffix(path)
        if suffix is None:
            raise _fail(path, f"unknown file extension; supported: {', '.join(READ_SUFFIXES)} "
                        "or a DICOM series folder")
        volume = _read_nifti(path, max_bytes, fixes) if suffix in NIFTI_SUFFIXES else _read_itk_file(path, max_bytes)
    if not allow_nonfinite:
        check_finite(volume)
    if fixes:  # said only for a usable file: an error says all there is to say
        logger.warning("%s: nibabel corrected its header: %s", path, "; ".join(fixes))
    if dtype is not None:
        volume.array = volume.array.astype(dtype, copy=False)
    logger.debug("read %s: shape %s, %s, %s, spacing %s", path, volume.array.shape,
                 volume.array.dtype, orientation_code(volume.affine), volume.spacing)
    return volume


def check_finite(volume: Volume) -> None:
    """Raise :class:`InputFileError` naming the file and the count of NaN/Inf voxels."""
    arr = volume.array
    if arr.dtype.kind not in "fc":
        return
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise _fail(volume.path or "<in-memory volume>", f"{bad} of {arr.size} voxels are NaN "
                    "or infinite; clean the file or pass allow_nonfinite=True")


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


def _write_nifti(tmp: Path, array: np.ndarray, affine: np.ndarray, header: Any) -> None:
    ref = header if isinstance(header, nib.Nifti1Header) else None  # Nifti2Header included
    hdr = ref.copy() if ref is not None else nib.Nifti1Header()
    cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    img = cls(array, affine, header=hdr)
    codes = (int(hdr["sform_code"]), int(hdr["qform_code"])) if ref is not None else (0, 0)
    sform_code, qform_code = codes if any(codes) else (1, 1)  # make the geometry explicit
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    img.set_data_dtype(array.dtype)
    out = img.header
    out.set_slope_inter(np.nan, np.nan)  # store values raw
    out["cal_min"] = out["cal_max"] = 0
    out.set_intent("none")
    if ref is None:
        out.set_xyzt_units("mm", "unknown")
    nib.save(img, str(tmp))


def _write_itk(tmp: Path, array: np.ndarray, affine: np.ndarray, spatial_dims: int) -> None:
    vector = array.ndim == spatial_dims + 1
    axes = list(range(spatial_dims))[::-1] + ([spatial_dims] if vector else [])
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(axes)), isVector=vector)
    spacing, direction, origin = _affine_to_itk(affine, spatial_dims)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(tmp), True)


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
    extension: .nii, .nii.gz (nibabel), .nrrd, .seg.nrrd, .mha (SimpleITK, compressed).
    Stored dtype: ``dtype`` if given, else see :func:`output_dtype` (labels as uint8 when
    they fit, floats as float32); scl_slope/scl_inter are reset so values are stored raw.
    A missing parent folder is created. Returns the written path.
    """
    out = Path(path)
    suffix = _suffix(out, WRITE_SUFFIXES)
    if suffix is None:
        raise ConfigError(f"cannot write '{out}': unknown extension; "
                          f"allowed: {', '.join(WRITE_SUFFIXES)}")
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if isinstance(reference, Volume):
        affine, header, sdims = reference.affine, reference.header, reference.spatial_dims
        if tuple(array.shape[:sdims]) != reference.spatial_shape or array.ndim > sdims + 1:
            raise ShapeError(f"cannot write '{out}': array shape {tuple(array.shape)} does not "
                             f"match the grid {reference.spatial_shape} of '{reference.path}'")
    else:
        affine, header = np.asarray(reference, dtype=np.float64), None
        sdims = 2 if array.ndim == 2 else 3
        if affine.shape != (4, 4) or array.ndim not in (sdims, sdims + 1):
            raise ShapeError(f"cannot write '{out}': need a 4x4 affine and a 2D/3D array "
                             f"(channels last), got {affine.shape} and {tuple(array.shape)}")
    if out.is_dir():
        raise OutputExistsError(f"cannot write '{out}': it is a folder")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"'{out}' exists; pass overwrite=True (--overwrite on the "
                                "command line) to replace it")
    array = _cast(array, dtype)
    with atomic_target(out) as tmp:
        if suffix in NIFTI_SUFFIXES:
            _write_nifti(tmp, array, affine, header)
        else:
            _write_itk(tmp, array, affine, sdims)
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
        raise ShapeError(f"{names} have different shapes: {image.spatial_shape} vs "
                         f"{label.spatial_shape}")
    diff = float(np.max(np.abs(image.affine - label.affine)))
    if diff > atol:
        raise ShapeError(f"{names} have different affines (largest difference {diff:.3g}, "
                         f"tolerance {atol}; orientations {orientation_code(image.affine)} vs "
                         f"{orientation_code(label.affine)})")
