"""The label map in the formats viewers and archives read, beside the label file.

``--format`` lists them, comma-separated: ``nifti`` (the label file as ``.nii.gz``, the default) or
``same`` (in the input's format where volseg writes it) choose the label file, which is always
written, last; ``dicom-seg`` adds ``<name>.dcm``, a DICOM Segmentation of the input's DICOM series
(or of ``--reference-dicom``), and ``seg-nrrd`` adds ``<name>_segmentation.seg.nrrd``, a 3D Slicer
segmentation (the ``_segmentation`` keeps it from being taken for a second label file of the
case). Every label file also gets ``<name>_labels.txt`` (ITK-SNAP label descriptions) and
``<name>.ctbl`` (a 3D Slicer colour table).

A case is finished when its label file and the files of every requested format exist, so a rerun
that asks for one more format redoes the cases that lack it. Each segment is one label value of
the model's label space (BraTS region models: the label values 1, 2, 4 or 1, 2, 3 they write),
named as the label space names it, coloured as in the previews, with the codes of
:mod:`volseg.io.segments` (the config's ``data.label_codes`` first).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from volseg.errors import ConfigError, InputFileError
from volseg.inference.output_formats import EXTRA_FORMATS
from volseg.io.segments import Segment, describe_segments

if TYPE_CHECKING:
    from volseg.data.label_space import LabelSpace
    from volseg.inference.inputs import PredictionInput
    from volseg.io import Volume
    from volseg.io.dicom_seg import SourceSeries


def is_finished(labels_path: Path, side: Mapping[str, Path], formats: tuple[str, ...] | list[str]) -> bool:
    """Whether the label file and the file of every format in ``formats`` exist."""
    return labels_path.exists() and all(side[EXTRA_FORMATS[name]].exists() for name in formats)


def dicom_source(case: PredictionInput, reference_dicom: str | Path | None) -> tuple[Path, str | None] | None:
    """The DICOM series a DICOM-SEG of ``case`` refers to: ``(folder, series UID or None)`` from
    ``reference_dicom``, the case's own series folder or the series of its ``.dcm`` file; None
    when the case has none."""
    if reference_dicom is not None:
        return Path(reference_dicom), None
    first = case.images[0]
    if len(case.images) == 1 and first.is_dir():
        return first, None
    if len(case.images) == 1 and first.name.lower().endswith(".dcm"):
        import pydicom

        try:
            header = pydicom.dcmread(first, stop_before_pixels=True, force=True)
        except (OSError, ValueError, EOFError) as error:
            raise InputFileError(f"{first}: not a readable DICOM file ({error})") from None
        return first.parent, str(header.get("SeriesInstanceUID", ""))
    return None


def check_dicom_sources(cases: list[PredictionInput], reference_dicom: str | Path | None) -> None:
    """Before any prediction: every case needs a DICOM series for ``dicom-seg``, and one
    ``reference_dicom`` serves one case only."""
    if reference_dicom is not None:
        if not Path(reference_dicom).is_dir():
            raise InputFileError(f"--reference-dicom {reference_dicom}: not a folder (give a DICOM series folder)")
        if len(cases) > 1:
            raise ConfigError(
                f"--reference-dicom names one series but the input holds {len(cases)} cases; segment one case "
                "at a time, or give DICOM series folders as input"
            )
    missing = [case.case_id for case in cases if dicom_source(case, reference_dicom) is None]
    if missing:
        raise ConfigError(
            f"--format dicom-seg needs the DICOM series the input was made from, and {missing[0]} is not a DICOM "
            "series: give the series folder as -i, or --reference-dicom SERIES_DIR"
        )


def load_dicom_source(case: PredictionInput, reference: Volume, reference_dicom: str | Path | None) -> SourceSeries:
    """Read the DICOM series of ``case`` and map it onto the grid of ``reference`` (raises when it
    does not lie there); called before the case is predicted."""
    from volseg.io.dicom_seg import read_source_series

    found = dicom_source(case, reference_dicom)
    if found is None:  # check_dicom_sources said so already
        raise ConfigError(f"{case.case_id}: no DICOM series for --format dicom-seg")
    folder, series_uid = found
    what = "--reference-dicom" if reference_dicom is not None else "the input DICOM series"
    shape = tuple(reference.spatial_shape) + (1,) * (3 - reference.spatial_dims)
    return read_source_series(folder, reference.affine, shape, series_uid=series_uid, what=what)


def segments_of(
    space: LabelSpace, convention: str | None, label_codes: Mapping[str, Mapping[str, str]] | None = None
) -> list[Segment]:
    """The segments of the label maps ``space`` writes in ``convention``: one per foreground label
    value, coloured as in the previews."""
    from volseg.data.label_space import label_colour

    names = space.names_in(convention)
    return describe_segments(names, {value: label_colour(value) for value in names}, label_codes)


@contextmanager
def written_beside(
    labels: np.ndarray,
    reference: Volume,
    side: Mapping[str, Path],
    segments: list[Segment],
    formats: tuple[str, ...] | list[str],
    *,
    source: SourceSeries | None = None,
    model_name: str = "volseg model",
) -> Iterator[list[Path]]:
    """Write the label tables and each of ``formats`` of ``labels`` (*S, on ``reference``'s grid),
    replacing what an interrupted run left, then run the block, which writes the label file. If
    anything fails, the files written here are removed: a failed case leaves no new file."""
    from volseg.io.label_tables import write_label_tables

    written: list[Path] = []
    try:
        written += write_label_tables(side["labels_itksnap"], side["colours_slicer"], segments, overwrite=True)
        if "seg-nrrd" in formats:
            from volseg.io.seg_nrrd import write_seg_nrrd

            written.append(write_seg_nrrd(side["seg_nrrd"], labels, reference.affine, segments, overwrite=True))
        if "dicom-seg" in formats:
            written.append(_write_dicom_seg(side["dicom_seg"], labels, source, segments, model_name))
        yield written
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _write_dicom_seg(
    path: Path, labels: np.ndarray, source: SourceSeries | None, segments: list[Segment], model_name: str
) -> Path:
    from volseg._version import __version__
    from volseg.io.dicom_seg import write_dicom_seg

    if source is None:
        raise ConfigError("--format dicom-seg needs the DICOM series the input was made from")
    volume = labels[..., None] if labels.ndim == 2 else labels  # a 2D map: one slice
    return write_dicom_seg(path, volume, source, segments, model_name=model_name, version=__version__, overwrite=True)
