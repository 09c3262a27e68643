"""Files in, files out: what ``volseg predict`` does for each case.

For a case ``<name>`` the outputs are ``<name>.nii.gz`` (labels, on the input's grid; in the
input's own format with ``extension="same"`` where volseg can write it) and, when asked for,
``<name>_probabilities.nii.gz`` (channels last), ``<name>_uncertainty.nii.gz``,
``<name>_stats.json`` and ``<name>_preview.png``; with ``formats``, DICOM-SEG and 3D Slicer
files, and always ITK-SNAP and Slicer label tables (:mod:`volseg.inference.label_outputs`). The
label file is written last and every file atomically, so a label file that exists (with the
files of every requested format) marks a finished case: an interrupted folder
run started again skips those and redoes the rest (removing the temporary files a kill left
for the outputs it redoes). NaN/Inf input voxels are replaced (0, or the image minimum for a CT
model) with one warning, or refused with ``strict``; so is an input unlike the model's training
scans (:mod:`volseg.inference.input_checks`). The stats record both.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from volseg.errors import ConfigError, OutputExistsError, VolsegError
from volseg.inference import label_outputs
from volseg.inference.inputs import PredictionInput, find_inputs
from volseg.inference.output_formats import check_formats
from volseg.inference.postprocess import (
    keep_largest_component,
    label_statistics,
    label_volumes,
    remove_small_components,
    write_statistics,
)
from volseg.inference.preview import render_preview
from volseg.io import WRITE_SUFFIXES, Volume, fill_nonfinite, read_volume, write_volume
from volseg.io.atomic import remove_stale_temporaries
from volseg.io.naming import format_of, side_output_names, split_volume_name

if TYPE_CHECKING:  # the Predictor calls this module for predict_file: no import at run time
    from volseg.inference.predictor import Prediction, Predictor

logger = logging.getLogger(__name__)


@dataclass
class OutputOptions:
    """What to write besides the label map, and how to post-process it."""

    overwrite: bool = False
    probabilities: bool = False
    uncertainty: str | None = None
    largest_component: bool = False
    min_size_ml: float | None = None
    stats: bool = False
    preview: bool = False
    #: label file format: a written suffix (:data:`volseg.io.WRITE_SUFFIXES`), or ``"same"``: the
    #: input's own where writable, else .nii.gz with a warning (MINC 1 inputs are written as MINC 2).
    extension: str = ".nii.gz"
    #: refuse inputs with NaN/Inf voxels instead of replacing them, and inputs unlike the training scans
    strict: bool = False
    #: further formats of the labels beside the label file: "dicom-seg" (<name>.dcm), "seg-nrrd"
    #: (<name>_segmentation.seg.nrrd); see :mod:`volseg.inference.label_outputs`
    formats: tuple[str, ...] = ()
    #: the DICOM series the input was made from (dicom-seg of an input that is not a DICOM series)
    reference_dicom: str | Path | None = None
    #: the model's name, recorded in DICOM-SEG files
    model_name: str = "volseg model"
    #: folder for the run report's small previews (None: none are drawn unless ``preview``)
    report_previews: Path | None = None


@dataclass
class CaseOutcome:
    """One case of a run: where its labels went, whether it was skipped, its statistics, and how
    its input differs from the model's training scans (``warnings``)."""

    case_id: str
    labels_path: Path
    skipped: bool
    seconds: float = 0.0
    statistics: list[dict[str, Any]] | None = None
    warnings: list[str] = field(default_factory=list)
    #: seconds spent reading the input, predicting (preprocessing, network, back to the input grid),
    #: writing and drawing previews
    timings: dict[str, float] = field(default_factory=dict)
    #: label name -> volume in mL of the written label map
    volumes_ml: dict[str, float] | None = None
    #: why the case failed: its label file was not written (side files written before the failure
    #: may remain; a rerun replaces them)
    error: str | None = None
    #: the preview written for the run report, if any
    report_preview: Path | None = None

    @property
    def status(self) -> str:
        """``"done"``, ``"skipped"`` (finished by an earlier run) or ``"failed"``."""
        return "failed" if self.error is not None else "skipped" if self.skipped else "done"


def output_paths(labels_path: Path) -> dict[str, Path]:
    """The side outputs that belong to ``labels_path``."""
    stem, extension = split_volume_name(labels_path.name) or (labels_path.stem, labels_path.suffix)
    return {kind: labels_path.parent / name for kind, name in side_output_names(stem, extension).items()}


def output_extension(case: PredictionInput, extension: str) -> str:
    """The label file suffix of ``case``: ``extension``, or with ``"same"`` the suffix of its
    first input file when volseg writes that format (else .nii.gz, with a warning)."""
    if extension != "same":
        return extension
    first = case.images[0]
    parts = split_volume_name(first.name) if first.is_file() else None
    if parts and parts[1].lower() in WRITE_SUFFIXES:
        return parts[1]
    fmt = format_of(first.name) if first.is_file() else None
    if first.is_file() and fmt is None:  # not a volume: reading it says so
        return ".nii.gz"
    what = f"{fmt.name} ({first.name})" if fmt else f"a DICOM series ({first.name})"
    logger.warning("%s: volseg cannot write %s; writing the labels as NIfTI (.nii.gz)", case.case_id, what)
    return ".nii.gz"


def plan_outputs(
    inputs: list[PredictionInput], output: Path, options: OutputOptions
) -> list[tuple[PredictionInput, Path]]:
    """Pair each case with its label file: ``output`` itself for one case given a volume file
    name, else ``output/<case><extension>``."""
    single_file = output.name.lower().endswith(WRITE_SUFFIXES) and split_volume_name(output.name) is not None
    if single_file and len(inputs) > 1:
        raise ConfigError(f"-o {output} is a file name but the input holds {len(inputs)} cases; give a folder")
    if single_file:
        return [(inputs[0], output)]
    if output.is_file():
        raise ConfigError(f"-o {output} is an existing file; give a folder for the outputs")
    return [(case, output / f"{case.case_id}{output_extension(case, options.extension)}") for case in inputs]


def segment(
    predictor: Predictor,
    input_path: str | Path,
    output: str | Path,
    options: OutputOptions | None = None,
    *,
    on_case: Callable[[CaseOutcome, int, int], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> list[CaseOutcome]:
    """Segment every case under ``input_path`` into ``output`` (a file for one case, or a folder).

    Into a folder, cases whose label file (and the file of each of ``formats``) exists are
    skipped unless ``overwrite``, however many there are; a single output file named by
    ``output`` that exists is an error unless ``overwrite``. ``shard=(I, N)`` segments only
    shard I of N of a folder's cases (:mod:`volseg.inference.sharding`).
    """
    options = options or OutputOptions()
    check_formats(options.formats)
    inputs = find_inputs(input_path, channel_names=predictor.channel_names)
    pairs = plan_outputs(inputs, Path(output), options)
    if shard is not None:
        from volseg.inference.sharding import select_shard

        if len(inputs) == 1 and pairs[0][1] == Path(output):
            raise ConfigError(f"--shard splits a folder of cases; {input_path} is one case")
        chosen = {case.case_id for case in select_shard(inputs, shard)}
        pairs = [(case, path) for case, path in pairs if case.case_id in chosen]
    named = len(pairs) == 1 and pairs[0][1] == Path(output)  # one output file named by the user
    if named and pairs[0][1].exists() and not options.overwrite:
        raise OutputExistsError(f"{pairs[0][1]} exists; pass --overwrite to replace it")
    if "dicom-seg" in options.formats:  # before any case is predicted
        label_outputs.check_dicom_sources([case for case, _ in pairs], options.reference_dicom)
    outcomes = []
    for index, (case, labels_path) in enumerate(pairs):
        finished = label_outputs.is_finished(labels_path, output_paths(labels_path), options.formats)
        if finished and not options.overwrite:
            outcome = CaseOutcome(case.case_id, labels_path, skipped=True)
        else:
            try:
                outcome = segment_case(predictor, case, labels_path, options)
            except VolsegError as error:  # reported (the run report lists it), then the run stops
                if on_case is not None:
                    failed = CaseOutcome(case.case_id, labels_path, skipped=False, error=str(error))
                    on_case(failed, index + 1, len(pairs))
                raise
        outcomes.append(outcome)
        if on_case is not None:
            on_case(outcome, index + 1, len(pairs))
    return outcomes


def segment_case(predictor: Predictor, case: PredictionInput, labels_path: Path, options: OutputOptions) -> CaseOutcome:
    """Segment one case and write its outputs (the label file last)."""
    started = time.perf_counter()
    ct = predictor.config.preprocessing.intensity == "ct"
    channels, nonfinite = read_channels(case, strict=options.strict, ct=ct)
    read_seconds = time.perf_counter() - started
    source = None  # the DICOM series, read and checked against the input's grid before predicting
    if "dicom-seg" in options.formats:
        source = label_outputs.load_dicom_source(case, channels[0], options.reference_dicom)
    prediction = predictor.predict_volumes(
        channels,
        case_id=case.case_id,
        probabilities=options.probabilities,
        uncertainty=options.uncertainty,
        strict=options.strict,
    )
    writing = time.perf_counter()
    space = predictor.label_space
    labels = postprocess(prediction.labels, prediction, options, space.regions)
    labels = space.to_convention(labels, case.brats_convention)
    reference, side = prediction.reference, output_paths(labels_path)
    # Side outputs may be left from an interrupted run of this (unfinished) case: replace them,
    # and delete the temporary files a kill left while writing them.
    written = [labels_path, *side.values()]
    for path in written + [p.with_suffix(".img") for p in written if p.suffix.lower() == ".hdr"]:  # pairs
        remove_stale_temporaries(path)
    if prediction.probabilities is not None:
        write_volume(side["probabilities"], prediction.probabilities, reference, overwrite=True)
    if prediction.uncertainty is not None:
        write_volume(side["uncertainty"], prediction.uncertainty, reference, overwrite=True)
    statistics = None
    if options.stats:
        names = space.names_in(case.brats_convention)
        statistics = label_statistics(labels, spacing=reference.spacing, label_names=names)
        if nonfinite is not None:  # the replacement, recorded with the statistics
            statistics = [{**row, "input_nonfinite": nonfinite} for row in statistics]
        if prediction.warnings:  # how the input differs from the training scans, likewise
            statistics = [{**row, "input_warnings": prediction.warnings} for row in statistics]
        write_statistics(statistics, side["stats"], overwrite=True)
    previews = [side["preview"]] if options.preview else []
    if options.report_previews is not None and not options.preview:
        previews.append(options.report_previews / f"{case.case_id}.png")
    drawing = time.perf_counter()
    if previews:
        image, label_view, spacing = ras_views(reference.channels_first()[0], labels, reference.affine)
        for path in previews:
            render_preview(
                image,
                label_view,
                spacing=spacing,
                path=path,
                label_names=space.names_in(case.brats_convention),
                title=case.case_id,
                overwrite=True,
            )
    preview_seconds = time.perf_counter() - drawing
    segments = label_outputs.segments_of(space, case.brats_convention, predictor.config.data.label_codes)
    with label_outputs.written_beside(
        labels, reference, side, segments, options.formats, source=source, model_name=options.model_name
    ):
        write_volume(labels_path, labels, reference, overwrite=True)  # last: it marks a finished case
    logger.debug("%s: %.2f s", case.case_id, prediction.seconds)
    finished = time.perf_counter()
    return CaseOutcome(
        case.case_id,
        labels_path,
        skipped=False,
        seconds=finished - started,
        statistics=statistics,
        warnings=prediction.warnings,
        timings={
            "read": read_seconds,
            "predict": prediction.seconds,
            "write": finished - writing - preview_seconds,
            "preview": preview_seconds,
        },
        volumes_ml=label_volumes(labels, reference.spacing, space.names_in(case.brats_convention)),
        report_preview=previews[-1] if previews else None,
    )


_STRICT_HINT = "refused by --strict; without it they are replaced by 0 (CT: the image minimum)"


def read_channels(case: PredictionInput, *, strict: bool = False, ct: bool = False) -> tuple[list[Volume], dict | None]:
    """Read the channel files (or DICOM folder) of ``case``, several in parallel threads.

    NaN/Inf voxels are replaced by 0, or by each file's smallest finite value when ``ct`` (0 is
    tissue in CT), with one warning giving the count; ``strict`` refuses them instead. Returns
    the volumes and, when voxels were replaced, ``{"voxels", "replaced_by", "values"}`` for the
    run's statistics (else None).
    """
    read = functools.partial(read_volume, allow_nonfinite=not strict, nonfinite_hint=_STRICT_HINT)
    if len(case.images) < 2:
        volumes = [read(path) for path in case.images]
    else:  # decompressing .nii.gz releases the GIL
        with ThreadPoolExecutor(max_workers=min(len(case.images), os.cpu_count() or 1)) as pool:
            volumes = list(pool.map(read, case.images))
    if strict:
        return volumes, None
    replaced = [fill_nonfinite(volume, "min" if ct else "zero") for volume in volumes]
    count = sum(n for n, _ in replaced)
    if not count:
        return volumes, None
    rule = "the image minimum (CT model)" if ct else "0"
    logger.warning(
        "%s: %d NaN/Inf voxel(s) replaced by %s (%s); --strict refuses such inputs instead",
        case.case_id,
        count,
        rule,
        ", ".join(f"{v.path.name if v.path else '?'}: {n}" for v, (n, _) in zip(volumes, replaced) if n),
    )
    return volumes, {
        "voxels": count,
        "replaced_by": "image minimum" if ct else "zero",
        "values": [value for _, value in replaced],
    }


def postprocess(
    labels: np.ndarray, prediction: Prediction, options: OutputOptions, regions: dict[str, list[int]] | None = None
) -> np.ndarray:
    """Largest connected component and/or removal of components under ``min_size_ml``, per
    label value, or per region on a region model (``regions``: name -> label values)."""
    if options.largest_component:
        labels = keep_largest_component(labels, regions=regions)
    if options.min_size_ml:
        labels = remove_small_components(
            labels, min_size_ml=options.min_size_ml, spacing=prediction.reference.spacing, regions=regions
        )
    return labels


def ras_views(image: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``image`` and ``labels`` (*S) reoriented to RAS axis order, with the matching spacing."""
    orientation = nib.orientations.io_orientation(affine)
    image = nib.orientations.apply_orientation(image, orientation)
    labels = nib.orientations.apply_orientation(labels, orientation)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    spacing = tuple(float(spacing[int(np.flatnonzero(orientation[:, 0] == axis)[0])]) for axis in range(3))
    return image, labels, spacing


def iter_outputs(outcomes: list[CaseOutcome]) -> Iterator[Path]:
    """Every file a run wrote or kept, label files first."""
    for outcome in outcomes:
        yield outcome.labels_path
        yield from (p for p in output_paths(outcome.labels_path).values() if p.exists())
