"""Where the images of a DICOM series, or the frames of a multi-frame file, lie: volseg's own
checks and grid for what SimpleITK/GDCM reads (:mod:`volseg.io.formats` calls them).

SimpleITK stacks a series' slices on an even grid along the slice normal, spaced by the average
step, and only notes (in a metadata key) when the slices were uneven; GDCM puts the frames of
an enhanced multi-frame file on an even grid of its own, and gives unevenly spaced ones a spacing
of 1 mm on every axis. A missing slice, uneven spacing or a sheared stack (a gantry tilt) thus
gave a wrong grid (volseg only warned, and not for a shear). Here the position of every image
(``ImagePositionPatient``; projected on the normal of ``ImageOrientationPatient`` for the gaps)
is checked: what is not one evenly spaced stack is refused with a one-line ``InputFileError``
naming where it is uneven, and the slice axis of the affine is the step between the images' own
positions (:meth:`Stack.affine`).

**Tolerance.** Two neighbouring images may be closer or further apart than the typical (median)
gap by at most ``max(0.01 mm, 1 % of that gap)``, and no image may lie further than that from the
even grid through the first and the last. Positions are decimal strings of at most 16
characters: rounding moves them by 1e-4 mm or less (GDCM writes 1e-10 mm; a tilted series
deviates by about 1e-11 mm), while a missing slice moves them by a whole gap, 100 %. Within the
tolerance no image lies more than 1 % of a voxel (or 0.01 mm) from its place on the grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volseg.io.volume import _fail
from volseg.lazy import sitk

logger = logging.getLogger("volseg.io")

#: The largest difference between direction cosines (or pixel spacings, mm) that counts as the same
#: orientation (1e-4 turns a 500 mm field of view by 0.05 mm).
ORIENTATION_TOLERANCE = 1e-4
#: DICOM's LPS patient axes <-> RAS: flips x and y; its own inverse
LPS_RAS = np.array([-1.0, -1.0, 1.0])
_CONVERT = "convert it to NIfTI (e.g. with dcm2niix)"


def spacing_tolerance(gap: float) -> float:
    """How far (mm) an image may lie from the even grid of images ``gap`` mm apart."""
    return max(0.01, 0.01 * abs(gap))


@dataclass(frozen=True)
class Stack:
    """Where the images of one stack lie, from their own tags: ``positions`` (N x 3, LPS mm, in the
    order they are stacked), ``orientation`` (row then column direction cosines), ``pixel_spacing``
    (between rows, between columns; None when the files do not say), ``size`` (columns, rows)."""

    positions: np.ndarray
    orientation: np.ndarray
    pixel_spacing: np.ndarray | None
    size: tuple[int, int]
    what: str = "slice"

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    def affine(self, where: Path, found: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The voxel -> RAS affine of the stack SimpleITK/GDCM read as ``found`` (``shape``).

        Its origin and pixel axes must be the stack's (else ``InputFileError``: SimpleITK stacked
        the images otherwise); its slice axis becomes the step from the first image to the last,
        which keeps a shear (a gantry tilt) that SimpleITK drops."""
        (cols, rows), count = self.size, len(self.positions)
        if tuple(shape[:3]) != (cols, rows, count):
            raise _fail(
                where, f"SimpleITK reads its {count} {self.what}(s) of {cols}x{rows} pixels as {shape}; {_CONVERT}"
            )
        spacing = self.pixel_spacing if self.pixel_spacing is not None else np.linalg.norm(found[:3, 1::-1], axis=0)
        wanted = found.copy()
        wanted[:3, 0] = LPS_RAS * self.orientation[:3] * spacing[1]  # one column to the right
        wanted[:3, 1] = LPS_RAS * self.orientation[3:] * spacing[0]  # one row down
        wanted[:3, 3] = LPS_RAS * self.positions[0]
        if count > 1:
            wanted[:3, 2] = LPS_RAS * (self.positions[-1] - self.positions[0]) / (count - 1)
        gaps = np.abs(np.diff(self.positions @ self.normal))
        tolerance = spacing_tolerance(float(np.median(gaps)) if count > 1 else 0.0)
        corners = np.array([[0, 0, 0, 1], [cols - 1, 0, 0, 1], [0, rows - 1, 0, 1]], dtype=float)
        error = float(np.abs(corners @ (found - wanted).T).max())
        if error > tolerance:
            raise _fail(
                where,
                f"SimpleITK reads its first {self.what} onto a wrong grid (a corner {error:.3g} mm from "
                f"where the file puts it); {_CONVERT}",
            )
        if np.abs(found[:3, 2] - wanted[:3, 2]).max() * (count - 1) > tolerance:
            step = wanted[:3, 2] * LPS_RAS
            tilt = np.degrees(np.arccos(min(1.0, abs(step @ self.normal) / np.linalg.norm(step))))
            logger.info(
                "%s: the %ss are sheared by %.3g degrees (a gantry tilt?); the affine keeps it", where, self.what, tilt
            )
        return wanted + 0.0  # no -0.0 entries


@dataclass(frozen=True)
class _Image:
    """What one file of a series says about where its image lies (``None``: absent or invalid)."""

    path: str
    position: np.ndarray | None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient: row then column direction cosines
    pixel_spacing: np.ndarray | None  # PixelSpacing: between rows, between columns
    size: tuple[int, ...]
    frames: int
    localizer: bool

    @property
    def name(self) -> str:
        return Path(self.path).name

    def differs_from(self, other: _Image) -> str | None:
        """How this image differs from ``other`` in orientation, size or pixel spacing, or None."""
        if self.size != other.size:
            return f"{'x'.join(map(str, self.size))} pixels, the others {'x'.join(map(str, other.size))}"
        for what, mine, theirs in (
            ("orientation", self.orientation, other.orientation),
            ("pixel spacing", self.pixel_spacing, other.pixel_spacing),
        ):
            if (mine is None) != (theirs is None) or (
                mine is not None and np.abs(mine - theirs).max() > ORIENTATION_TOLERANCE
            ):
                return f"another {what}"
        return None


def _numbers(value: object, count: int) -> np.ndarray | None:
    """``count`` finite numbers from a DICOM multi-value string (``a\\b\\c``) or pydicom value, else None."""
    if value is None:
        return None
    try:
        parts = value.strip().split("\\") if isinstance(value, str) else np.atleast_1d(value)
        values = np.array([float(v) for v in parts])
    except (ValueError, TypeError):
        return None
    return values if values.size == count and np.isfinite(values).all() else None


def _orientation(values: np.ndarray | None) -> np.ndarray | None:
    """ImageOrientationPatient, each vector scaled to length 1, when it is two orthogonal unit
    vectors (to 1e-3: the cosines are rounded decimals), else None."""
    if values is None:
        return None
    row, col = values[:3], values[3:]
    unit = abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(col) - 1) < 1e-3
    return (
        np.concatenate([row / np.linalg.norm(row), col / np.linalg.norm(col)])
        if unit and abs(row @ col) < 1e-3
        else None
    )


def _read_image(folder: Path, path: str) -> _Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise _fail(folder, f"unreadable DICOM file {Path(path).name} ({lines[-1].strip()})") from err

    def tag(key: str) -> str | None:
        return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else None

    frames = _numbers(tag("0028|0008"), 1)
    return _Image(
        path,
        _numbers(tag("0020|0032"), 3),
        _orientation(_numbers(tag("0020|0037"), 6)),
        _numbers(tag("0028|0030"), 2),
        tuple(reader.GetSize()[:2]),
        int(frames[0]) if frames is not None else 1,
        "LOCALIZER" in (tag("0008|0008") or "").upper().replace(" ", "").split("\\"),
    )


def _names(images: list[_Image], most: int = 3) -> str:
    names = [image.name for image in images[:most]]
    return ", ".join(names) + (f" and {len(images) - most} more" if len(images) > most else "")


def series_order(folder: Path, files: list[str]) -> tuple[list[str], Stack]:
    """The files of one series (as GDCM listed them) that make its image stack, in position
    order, and the :class:`Stack` they make.

    Every file must be a single-frame image with a position and an orientation, and the stack
    must be evenly spaced (:func:`check_even_spacing`); otherwise ``InputFileError``.

    **Localizers.** Files marked ``LOCALIZER`` in ImageType, and files whose orientation, image
    size or pixel spacing differs from the stack's, are left out with one warning naming them: a
    localizer saved in the series of the scan it planned is not part of that scan, and the stack
    without it is read exactly where the scanner placed each slice. The stack is the largest group
    of files of one orientation, size and pixel spacing; a series in which no group holds more than
    half of the non-localizer files is refused (it is several stacks, not one with a stray image).
    """
    images = [_read_image(folder, path) for path in files]
    multi = [image for image in images if image.frames > 1]
    if multi:
        raise _fail(
            folder,
            f"its series mixes {len(multi)} multi-frame file(s) ({_names(multi)}) with {len(images) - len(multi)} "
            "other(s); give a multi-frame file on its own, or a folder of single-frame images",
        )
    stack = _stack(folder, images)
    unplaced = [image for image in stack if image.position is None or image.orientation is None]
    if unplaced:
        raise _fail(
            folder,
            f"{_names(unplaced)}: no valid ImagePositionPatient or ImageOrientationPatient; "
            "volseg cannot place the slices of the series",
        )
    first = stack[0]
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    stack = sorted(stack, key=lambda image: float(image.position @ normal))  # as GDCM sorts
    positions = np.array([image.position for image in stack])
    check_even_spacing(folder, positions, normal, [image.name for image in stack])
    size = (int(first.size[0]), int(first.size[1]))
    return [image.path for image in stack], Stack(positions, first.orientation, first.pixel_spacing, size)


def _stack(folder: Path, images: list[_Image]) -> list[_Image]:
    """The largest group of non-localizer images alike in orientation, size and pixel spacing."""
    candidates = [image for image in images if not image.localizer]
    if not candidates:
        raise _fail(folder, f"holds only localizer images (ImageType LOCALIZER: {_names(images)}); no volume to read")
    groups: list[list[_Image]] = []
    for image in candidates:
        group = next((g for g in groups if image.differs_from(g[0]) is None), None)
        if group is None:
            groups.append([image])
        else:
            group.append(image)
    groups.sort(key=len, reverse=True)
    stack = groups[0]
    if len(groups) > 1 and 2 * len(stack) <= len(candidates):
        raise _fail(
            folder,
            f"its series holds {len(groups)} stacks of images that differ in orientation, size or pixel spacing "
            f"({', '.join(str(len(g)) for g in groups)} files); give a folder that holds one stack",
        )
    left_out = [(image, "ImageType LOCALIZER") for image in images if image.localizer]
    left_out += [(image, image.differs_from(stack[0])) for group in groups[1:] for image in group]
    if left_out:
        shown = ", ".join(f"{image.name} ({why})" for image, why in left_out[:3])
        more = f" and {len(left_out) - 3} more" if len(left_out) > 3 else ""
        logger.warning(
            "%s: left out %s%s, not part of the stack of %d images (a localizer?)", folder, shown, more, len(stack)
        )
    return stack


def check_even_spacing(
    where: Path, positions: np.ndarray, normal: np.ndarray, names: list[str] | None = None, what: str = "slice"
) -> None:
    """Raise ``InputFileError`` unless ``positions`` (N x 3 mm, in the order they are stacked)
    step evenly along ``normal`` and lie on one even grid (tolerance: :func:`spacing_tolerance`).

    The message names the most uneven gap (the first of equals), the two ``what``s around it
    (1-based, and their ``names`` when given) and the typical gap, e.g. "slice gap 5 mm between
    slices 3 and 4 (b.dcm, c.dcm), elsewhere 2.5 mm (a missing slice?); volseg reads only evenly
    spaced slices"."""
    if len(positions) < 2:
        return
    gaps = np.diff(positions @ normal)
    typical = float(np.median(gaps))
    tolerance = spacing_tolerance(typical)
    same, off = np.flatnonzero(np.abs(gaps) <= tolerance), np.abs(gaps - typical)
    k = int(same[0] if same.size else np.flatnonzero(off >= off.max() - 1e-6)[0])
    pair = f"{what}s {k + 1} and {k + 2}" + (f" ({names[k]}, {names[k + 1]})" if names else "")
    if same.size:
        raise _fail(
            where,
            f"{pair} lie at the same position; volseg reads one image per position "
            "(several acquisitions, echoes or time points in one series?)",
        )
    if off[k] > tolerance:
        ratio, uneven = gaps[k] / typical, int(np.count_nonzero(off > tolerance))
        hint = f" ({what}s out of position order?)" if ratio < 0 else ""
        if round(ratio) >= 2 and abs(ratio - round(ratio)) < 0.1:
            hint = f" (a missing {what}?)" if round(ratio) == 2 else f" ({round(ratio) - 1} missing {what}s?)"
        sign = 1 if ratio < 0 else np.sign(typical)  # gaps as distances, unless they go both ways
        raise _fail(
            where,
            f"{what} gap {sign * gaps[k]:.4g} mm between {pair}, elsewhere {sign * typical:.4g} mm{hint}"
            + (f", {uneven} uneven gaps in all" if uneven > 1 else "")
            + f"; volseg reads only evenly spaced {what}s",
        )
    steps = np.arange(len(positions))[:, None] / (len(positions) - 1)
    distance = np.linalg.norm(positions - (positions[0] + steps * (positions[-1] - positions[0])), axis=1)
    k = int(np.argmax(distance))
    if distance[k] > tolerance:
        raise _fail(
            where,
            f"{what} {k + 1}{f' ({names[k]})' if names else ''} lies {distance[k]:.3g} mm off the even grid of "
            f"the others; volseg reads only evenly spaced {what}s",
        )


def frames_of(path: Path) -> Stack:
    """The :class:`Stack` of the frames of a multi-frame DICOM file, from the position, orientation
    and pixel spacing its functional groups give each frame (per frame, else shared), in the order
    the frames are stored (the order GDCM reads them in). ``InputFileError`` unless every frame has
    them, all frames share an orientation and pixel spacing, and they are evenly spaced.

    Needs pydicom (the ``dicom`` extra): SimpleITK does not give the per-frame functional groups,
    and GDCM's own grid for the frames is wrong when they are uneven or sheared.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise _fail(
            path,
            "is a multi-frame DICOM; checking where its frames lie needs pydicom, which is not installed: "
            "pip install 'volseg[dicom]'; or give the single-frame series",
        ) from None
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        rows, cols, count = int(dataset.Rows), int(dataset.Columns), int(dataset.NumberOfFrames)
        frames = [_frame_geometry(dataset, k) for k in range(count)]
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError) as err:
        raise _fail(path, f"unreadable multi-frame DICOM header ({type(err).__name__}: {err})") from err
    if any(value is None for frame in frames for value in frame):
        sop = getattr(dataset.get("SOPClassUID"), "name", "unknown SOP class")
        raise _fail(
            path,
            f"is a multi-frame DICOM ({sop}) without a position, orientation and pixel spacing for each frame; "
            f"volseg cannot place its frames; {_CONVERT} or give the single-frame series",
        )
    planes = np.array([np.concatenate([orientation, spacing]) for _, orientation, spacing in frames])
    differs = np.flatnonzero(np.abs(planes - planes[0]).max(axis=1) > ORIENTATION_TOLERANCE)
    if differs.size:
        raise _fail(
            path,
            f"frame {differs[0] + 1} differs from frame 1 in orientation or pixel spacing; volseg reads one "
            "evenly spaced stack of frames",
        )
    stack = Stack(np.array([frame[0] for frame in frames]), planes[0, :6], planes[0, 6:], (cols, rows), "frame")
    check_even_spacing(path, stack.positions, stack.normal, what="frame")
    return stack


def _frame_geometry(dataset: Any, k: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) of frame ``k`` (0-based):
    from its per-frame functional group, else the shared one; None where neither has it."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    groups = [per_frame[k] if k < len(per_frame) else None, *(dataset.get("SharedFunctionalGroupsSequence") or [])]

    def value(sequence: str, keyword: str, count: int) -> np.ndarray | None:
        for group in groups:
            items = group.get(sequence) if group is not None else None
            if items and items[0].get(keyword) is not None:
                return _numbers(items[0].get(keyword), count)
        return None

    return (
        value("PlanePositionSequence", "ImagePositionPatient", 3),
        _orientation(value("PlaneOrientationSequence", "ImageOrientationPatient", 6)),
        value("PixelMeasuresSequence", "PixelSpacing", 2),
    )
