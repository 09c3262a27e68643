"""Format readers and writers behind :func:`volseg.io.read_volume` and :func:`volseg.io.write_volume`.

Which code reads and writes each suffix is in :mod:`volseg.io.naming`. nibabel reads NIfTI-1/2,
NIfTI and Analyze pairs, MGH/MGZ, MINC 1, PAR/REC, AFNI and ECAT; SimpleITK reads NRRD,
MetaImage, GIPL, VTK, MINC 2 (nibabel needs h5py for it) and DICOM (series folders and single
files). Any failure of a reader on a bad file becomes a one-line ``InputFileError`` naming it.
"""

from __future__ import annotations

import gzip
import locale
import logging
import re
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.lib import recfunctions

from volseg.errors import InputFileError
from volseg.io.dicom_geometry import LPS_RAS, frames_of, series_order
from volseg.io.naming import NOT_VOLUMES, Format
from volseg.io.volume import Volume, _check_affine, _check_shape, _fail
from volseg.lazy import sitk  # SimpleITK, imported on first use

logger = logging.getLogger("volseg.io")  # one logger for reading and writing

_LPS_RAS = np.diag([*LPS_RAS, 1.0])  # as a 4x4 affine
# OverflowError: a header field nibabel turns into an integer is infinite (e.g. vox_offset).
_NIFTI_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError, OverflowError)


def _itk_message(err: Exception) -> str:
    """The useful last line of a SimpleITK/ITK exception (drops the C++ source location)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    return re.sub(r"^(sitk::ERROR|ITK ERROR):\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", lines[-1])  # and "XImageIO(0x..):"


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
            cifti = isinstance(img, nib.Cifti2Image) or not isinstance(img.header, nib.Nifti1Header)
            if not cifti:
                shape = img.shape
                hdr_dtype = img.header.get_data_dtype()
                scaled = img.dataobj.slope != 1 or img.dataobj.inter != 0
        except _NIFTI_ERRORS as err:
            raise _fail(path, f"not a valid NIfTI file ({err})") from err
        except (AttributeError, KeyError, IndexError, TypeError) as err:  # nibabel on an odd header
            raise _fail(path, f"not a valid NIfTI file ({type(err).__name__}: {err})") from err
    if cifti:
        raise _fail(path, f"is {NOT_VOLUMES['.dconn.nii']}")
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
def keep_locale() -> Iterator[None]:
    """Put the process's C locale back after the block: ITK's VTK reader and GDCM's DICOM writer
    set the "C" locale for the whole process, after which Python opens text files as ASCII."""
    before = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != before:
            locale.setlocale(locale.LC_ALL, before)


@contextmanager
def quiet_itk() -> Iterator[None]:
    """Stop ITK printing its own warnings to stderr inside the block (restored after)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_dicom_series(folder: Path, series_id: str | None, max_bytes: int) -> Volume:
    """The one series (or ``series_id``) of a folder: its image stack in position order, with
    localizers left out and uneven spacing refused (:func:`~volseg.io.dicom_geometry.series_order`); a
    series of one file is read as that file (a multi-frame file's frames are checked)."""
    reader = sitk.ImageSeriesReader()
    with quiet_itk():
        ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise _fail(folder, "is a folder but holds no DICOM series")
    if series_id is None and len(ids) > 1:
        raise _fail(
            folder,
            f"holds {len(ids)} DICOM series ({', '.join(ids)}); give a folder that holds "
            "one series (in Python, read_volume(..., series_id=) picks one)",
        )
    if series_id is not None and series_id not in ids:
        raise _fail(folder, f"has no DICOM series {series_id!r}; found: {', '.join(ids)}")
    with quiet_itk():
        files = list(reader.GetGDCMSeriesFileNames(str(folder), series_id or ids[0]))
        if len(files) == 1:
            return _read_dicom_file(Path(files[0]), max_bytes)
        files, stack = series_order(folder, files)
    info = sitk.ImageFileReader()
    info.SetFileName(files[0])
    try:
        info.ReadImageInformation()
        comps = info.GetNumberOfComponents()
        shape = tuple(info.GetSize()[:2]) + (len(files),) + ((comps,) if comps > 1 else ())
        _check_shape(folder, shape, _itk_itemsize(info.GetPixelID()), max_bytes)
        reader.SetFileNames(files)
        with quiet_itk():  # ITK notes rounding-level spacing deviations (uneven slices were refused)
            image = reader.Execute()
    except RuntimeError as err:
        raise _fail(folder, f"unreadable DICOM series ({_itk_message(err)})") from err
    volume = _from_sitk(image, folder)
    volume.affine = stack.affine(folder, volume.affine, volume.spatial_shape)
    return volume


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


# ----------------------------------------------------------------------------- other formats

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ANALYZE_NOTE = (
    "Analyze 7.5 header stores no orientation: assumed radiological LAS (x flipped, as SPM "
    "and nibabel do); check left and right"
)


def read_file(path: Path, fmt: Format, max_bytes: int, fixes: list[str]) -> Volume:
    """Read one file with the reader its :class:`~volseg.io.naming.Format` names."""
    if fmt.reader == "nifti":
        return _read_nifti(path, max_bytes, fixes)
    if fmt.reader == "itk":
        return _read_itk_file(path, max_bytes)
    if fmt.reader == "dicom":
        return _read_dicom_file(path, max_bytes)
    if fmt.reader == "minc":
        with open(path, "rb") as f:
            if f.read(8) == _HDF5_MAGIC:  # MINC 2: nibabel would need h5py
                with quiet_itk():
                    return _read_itk_file(path, max_bytes)
        return _read_nibabel(path, fmt, max_bytes, fixes, loader=nib.Minc1Image.from_filename)
    loader = nib.ecat.load if fmt.reader == "ecat" else nib.load
    return _read_nibabel(path, fmt, max_bytes, fixes, loader=loader)


def _read_nibabel(path: Path, fmt: Format, max_bytes: int, fixes: list[str], *, loader: Any) -> Volume:
    """Read a non-NIfTI nibabel format (pairs, MGH, MINC 1, PAR/REC, AFNI, ECAT): scaled values,
    the format's affine. nibabel raises many kinds of error on bad files: each becomes one line."""
    with _nibabel_messages() as messages, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = loader(str(path))
            if not isinstance(img, nib.spatialimages.SpatialImage):
                raise TypeError(f"nibabel reads it as {type(img).__name__}, not a volume")
            dtype = img.get_data_dtype(0) if fmt.reader == "ecat" else img.get_data_dtype()  # ECAT: per frame
            shape, affine = tuple(int(n) for n in img.shape), np.asarray(img.affine)
            if dtype.kind == "c" or dtype.fields:
                raise TypeError(f"has {dtype} voxels; volseg reads integer or float data")
            # Scaled formats give float64: check the memory that will take.
            shape = _check_shape(path, shape, 8, max_bytes)
            _check_affine(path, affine)
            arr = np.asarray(img.dataobj).reshape(shape, order="A")
        except InputFileError:
            raise
        except FileNotFoundError as err:
            missing = Path(err.filename or "?").name
            raise _fail(path, f"is a {fmt.name} header without its data file ({missing} is missing)") from err
        except MemoryError as err:
            raise _fail(path, "does not fit in memory") from err
        except Exception as err:  # noqa: BLE001 - third-party parsers of untrusted files
            raise _fail(path, f"not a valid {fmt.name} file ({type(err).__name__}: {err})") from err
    fixes += dict.fromkeys([*messages, *(str(w.message) for w in caught)])
    header = img.header if isinstance(img.header, nib.Nifti1Header) else None
    if isinstance(img, nib.AnalyzeImage) and header is None and not path.with_suffix(".mat").is_file():
        logger.warning("%s: %s", path, _ANALYZE_NOTE)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return Volume(arr, affine, path, header, spatial_dims=2 if len(shape) == 2 else 3)


def _read_dicom_file(path: Path, max_bytes: int) -> Volume:
    """One DICOM file: the whole series from its folder when the folder holds more of it (with a
    note), else the file alone (one slice, or the frames of a multi-frame enhanced DICOM, always
    alone and checked against the positions its functional groups give them)."""
    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    info.SetImageIO("GDCMImageIO")
    try:
        with quiet_itk():
            info.ReadImageInformation()
    except RuntimeError as err:
        raise _fail(path, f"not a readable DICOM file ({_itk_message(err)})") from err
    series = info.GetMetaData("0020|000e").strip() if info.HasMetaDataKey("0020|000e") else ""
    frames = info.GetMetaData("0028|0008").strip() if info.HasMetaDataKey("0028|0008") else ""
    multi_frame = frames.isdigit() and int(frames) > 1
    if series and not multi_frame:
        with quiet_itk():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), series)
        if len(files) > 1:
            logger.info(
                "%s: one file of a %d-file DICOM series; reading the series from %s", path, len(files), path.parent
            )
            return _read_dicom_series(path.parent, series, max_bytes)
    stack = frames_of(path) if multi_frame else None  # before the pixel data are read
    with quiet_itk():
        volume = _read_itk_file(path, max_bytes)
    if stack is not None:
        volume.affine = stack.affine(path, volume.affine, volume.spatial_shape)
    return volume


def write_file(
    tmp: Path, out: Path, fmt: Format, array: np.ndarray, affine: np.ndarray, header: Any, spatial_dims: int
) -> None:
    """Write ``array`` to ``tmp`` (to be renamed to ``out``) with the writer ``fmt`` names."""
    if fmt.writer == "nifti":
        _write_nifti(tmp, array, affine, header)
    elif fmt.writer == "itk":
        _write_itk(tmp, array, affine, spatial_dims)
    elif fmt.writer == "mgh":
        if array.dtype not in (np.uint8, np.int16, np.int32, np.float32):  # what MGH stores
            array = array.astype(np.int32 if array.dtype.kind in "ui" else np.float32)
        nib.save(nib.MGHImage(array, affine), str(tmp))
    else:
        raise ValueError(f"no writer {fmt.writer!r} for {out}")


def write_pair(out: Path, array: np.ndarray, affine: np.ndarray, header: Any) -> None:
    """Write a NIfTI pair ``out`` (.hdr) + its .img, each atomically, the .img first (the .hdr
    marks a finished file); Analyze inputs get a NIfTI pair, which stores the orientation."""
    from volseg.io.atomic import atomic_target

    ref = header if isinstance(header, nib.Nifti1Header) else None
    with atomic_target(out) as tmp_hdr, atomic_target(out.with_suffix(".img")) as tmp_img:
        _write_nifti(tmp_hdr, array, affine, ref)  # header and data to the temporary .hdr/.img
        produced = tmp_hdr.with_suffix(".img")
        produced.replace(tmp_img)
