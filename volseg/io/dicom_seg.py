"""DICOM Segmentation objects (DICOM-SEG) of a label map, written with highdicom.

A DICOM-SEG refers to the images it segments, so it needs their DICOM series: the input series
itself, or a reference series that lies on the input's grid (a NIfTI converted from it).
:func:`read_source_series` reads the series' headers and maps each slice onto the label grid: any
file or slice order, any order or flip of the same voxel axes (a dcm2niix NIfTI). Anything else
is refused, naming what differs. :func:`write_dicom_seg` writes one BINARY segment per label
value, with its name, category and type codes, a recommended CIELab display colour and the
algorithm (volseg, its version, the model); frames that hold no voxel of a segment are left out.

highdicom (with pydicom) is the ``dicom`` extra: ``pip install 'volseg[dicom]'``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volseg.errors import ConfigError, InputFileError, OutputExistsError, ShapeError
from volseg.io.atomic import atomic_target
from volseg.io.dicom_geometry import LPS_RAS, series_order
from volseg.io.segments import Code, Segment

logger = logging.getLogger(__name__)

#: The most a source slice may lie off the label grid, in voxels (DICOM positions are decimal text).
GRID_TOLERANCE = 0.1


def require_highdicom() -> None:
    """Raise :class:`ConfigError` naming the extra to install when highdicom is missing."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--format dicom-seg needs highdicom, which is not installed; install it with: pip install 'volseg[dicom]'"
        ) from None


@dataclass
class SourceSeries:
    """The headers of a DICOM series (one dataset per slice) and where its slices lie in a label
    grid: slice ``n`` is index ``slice_index[n]`` along ``slice_axis``; its rows run along
    ``row_axis`` and its columns along ``col_axis`` (reversed where ``*_flip``)."""

    folder: Path
    datasets: list[Any]
    slice_axis: int
    slice_index: list[int]
    row_axis: int
    row_flip: bool
    col_axis: int
    col_flip: bool
    slice_spacing: float

    def frames(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` (*S) as the pixels of each source slice: ``(N, Rows, Columns)``."""
        planes = np.transpose(labels, (self.slice_axis, self.row_axis, self.col_axis))
        if self.row_flip:
            planes = planes[:, ::-1]
        if self.col_flip:
            planes = planes[:, :, ::-1]
        return planes[self.slice_index]


def read_source_series(
    folder: str | os.PathLike,
    affine: np.ndarray,
    shape: Sequence[int],
    *,
    series_uid: str | None = None,
    what: str = "--reference-dicom",
) -> SourceSeries:
    """Read the image headers of the DICOM series in ``folder`` (the one of ``series_uid`` when
    given) and map its slices onto the grid ``affine`` (voxel -> RAS) and ``shape`` (3D).

    Raises :class:`InputFileError` for a folder without one readable single-frame series, and
    :class:`ConfigError` (starting with ``what``) when the series does not lie on the grid.
    """
    require_highdicom()
    folder = Path(folder)
    datasets = _series_headers(folder, series_uid, what)
    first = datasets[0]
    for key in ("FrameOfReferenceUID", "ImageOrientationPatient", "PixelSpacing"):
        if not first.get(key):
            raise InputFileError(f"{what} '{folder}': its images have no {key}; DICOM-SEG needs it")
    return _on_grid(folder, datasets, np.asarray(affine, dtype=np.float64), tuple(int(s) for s in shape), what)


def _series_headers(folder: Path, series_uid: str | None, what: str) -> list[Any]:
    """The headers (no pixel data) of the images of the one series in ``folder``."""
    import pydicom

    if not folder.is_dir():
        raise InputFileError(f"{what} '{folder}': not a folder (give the folder of the DICOM series)")
    series: dict[str, list[Any]] = defaultdict(list)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            dataset = pydicom.dcmread(
                path, stop_before_pixels=True, force=True
            )  # GDCM reads files without a preamble too
        except Exception:  # noqa: BLE001 - forced reads of other files fail in many ways
            continue  # not DICOM (a DICOMDIR, notes, ...)
        if "ImagePositionPatient" in dataset and "SOPInstanceUID" in dataset:
            series[str(dataset.get("SeriesInstanceUID", ""))].append(dataset)
    if series_uid is not None:
        series = {series_uid: series[series_uid]} if series.get(series_uid) else {}
    if len(series) != 1:
        found = f"holds {len(series)} DICOM series ({', '.join(sorted(series))})" if series else "holds no DICOM images"
        raise InputFileError(f"{what} '{folder}' {found}; give the folder of one series")
    datasets = next(iter(series.values()))
    if any(int(d.get("NumberOfFrames") or 1) > 1 for d in datasets):
        raise InputFileError(f"{what} '{folder}': multi-frame (enhanced) DICOM images are not supported as sources")
    # The image stack, as reading the series finds it: a localizer saved in the series is left out.
    kept = set(series_order(folder, [str(d.filename) for d in datasets])[0])
    return [d for d in datasets if str(d.filename) in kept]


def _on_grid(folder: Path, datasets: list[Any], affine: np.ndarray, shape: tuple[int, ...], what: str) -> SourceSeries:
    """Map each dataset's slice onto the grid, or raise ConfigError saying what differs."""

    def refuse(reason: str) -> ConfigError:
        return ConfigError(
            f"{what} '{folder}' does not lie on the grid of the input ({reason}); give the series the "
            "input was made from, with the same voxels"
        )

    first = datasets[0]
    rows, cols = int(first.Rows), int(first.Columns)
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    for dataset in datasets[1:]:
        same = (int(dataset.Rows), int(dataset.Columns)) == (rows, cols) and np.allclose(
            np.asarray(dataset.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-4
        )
        if not same:
            raise refuse(f"its images differ in size or orientation, e.g. instance {dataset.get('InstanceNumber')}")
    to_voxel = np.linalg.inv(affine)
    col_step = to_voxel[:3, :3] @ (LPS_RAS * orientation[:3] * col_spacing)  # one column to the right
    row_step = to_voxel[:3, :3] @ (LPS_RAS * orientation[3:] * row_spacing)  # one row down
    col_axis, row_axis = int(np.argmax(np.abs(col_step))), int(np.argmax(np.abs(row_step)))
    axes_fit = col_axis != row_axis and all(
        np.abs(step - np.round(step)).max() * max(count - 1, 1) <= GRID_TOLERANCE
        and abs(round(step[axis])) == 1
        and np.abs(np.round(step)).sum() == 1
        for step, axis, count in ((col_step, col_axis, cols), (row_step, row_axis, rows))
    )
    if not axes_fit:
        raise refuse(f"its pixel axes or spacing ({row_spacing:g} x {col_spacing:g} mm) are not the input's voxel axes")
    if (shape[row_axis], shape[col_axis]) != (rows, cols):
        raise refuse(f"its slices are {rows} x {cols} pixels; the input's are {shape[row_axis]} x {shape[col_axis]}")
    slice_axis = 3 - col_axis - row_axis
    col_flip, row_flip = col_step[col_axis] < 0, row_step[row_axis] < 0
    corner = np.array([0.0, 0.0, 0.0])
    corner[col_axis] = cols - 1 if col_flip else 0
    corner[row_axis] = rows - 1 if row_flip else 0
    indices = []
    for dataset in datasets:
        position = to_voxel[:3, :3] @ (LPS_RAS * np.asarray(dataset.ImagePositionPatient, dtype=float))
        position += to_voxel[:3, 3]
        index = int(round(position[slice_axis]))
        corner[slice_axis] = index
        if np.abs(position - corner).max() > GRID_TOLERANCE or not 0 <= index < shape[slice_axis]:
            raise refuse(
                f"instance {dataset.get('InstanceNumber')} lies at voxel "
                f"({', '.join(f'{v:.2f}' for v in position)}), off the input's {shape} voxels"
            )
        indices.append(index)
    if sorted(indices) != list(range(shape[slice_axis])):
        raise refuse(f"its {len(indices)} images cover {len(set(indices))} of the input's {shape[slice_axis]} slices")
    spacing = float(np.linalg.norm(affine[:3, slice_axis]))
    return SourceSeries(
        folder, datasets, slice_axis, indices, row_axis, bool(row_flip), col_axis, bool(col_flip), spacing
    )


def write_dicom_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    source: SourceSeries,
    segments: Sequence[Segment],
    *,
    model_name: str,
    version: str,
    overwrite: bool = False,
) -> Path:
    """Write ``labels`` ((*S) label values on the grid ``source`` was mapped to) as a BINARY
    DICOM-SEG of ``source``'s series, one segment per entry of ``segments``; returns the path."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"'{out}' exists; pass overwrite=True (--overwrite on the command line) to replace it")
    if not segments:
        raise ShapeError(f"cannot write '{out}': the label space has no foreground label to make a segment of")
    numbers = np.zeros(max(s.value for s in segments) + 1, dtype=np.uint16)  # label value -> segment number
    for number, segment in enumerate(segments, start=1):
        numbers[segment.value] = number
    frames = source.frames(np.asarray(labels))
    frames = numbers[np.where(frames < len(numbers), frames, 0)]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="volseg", family=codes.cid7162.ArtificialIntelligence, version=version, parameters={"model": model_name}
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.name[:64],
            segmented_property_category=_concept(hd, segment.category),
            segmented_property_type=_concept(hd, segment.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*segment.rgb255()),
        )
        for number, segment in enumerate(segments, start=1)
    ]
    _fill_slice_thickness(source)
    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="volseg",
        manufacturer_model_name=model_name[:64],
        software_versions=version,
        device_serial_number="n/a",
        series_description=f"volseg {model_name}"[:64],
        content_description=f"volseg {version}, model {model_name}"[:64],
    )
    with atomic_target(out) as tmp:
        seg.save_as(tmp)
    return out


def _concept(hd: Any, code: Code) -> Any:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _fill_slice_thickness(source: SourceSeries) -> None:
    """highdicom copies SliceThickness from the sources; where a series leaves it out (it may),
    the slice spacing stands in (set on the headers in memory only)."""
    for dataset in source.datasets:
        if not dataset.get("SliceThickness"):
            dataset.SliceThickness = f"{source.slice_spacing:.6g}"
