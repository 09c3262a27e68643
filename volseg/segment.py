"""Files in, files out: what ``volseg predict`` does for each case.

For a case ``<name>`` the outputs are ``<name>.nii.gz`` (labels, on the input's grid) and,
when asked for, ``<name>_probabilities.nii.gz`` (channels last), ``<name>_uncertainty.nii.gz``,
``<name>_stats.json`` and ``<name>_preview.png``. The label file is written last and every
file atomically, so a label file that exists marks a finished case: an interrupted folder
run started again skips those and redoes the rest (removing the temporary files a kill left
for the outputs it redoes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from volseg.atomic import remove_stale_temporaries
from volseg.data.datasets import split_volume_name
from volseg.errors import ConfigError, OutputExistsError
from volseg.io import WRITE_SUFFIXES, write_volume
from volseg.postprocess import keep_largest_component, label_statistics, remove_small_components, write_statistics
from volseg.predict_inputs import PredictionInput, find_inputs
from volseg.predictor import Prediction, Predictor, read_case
from volseg.preview import render_preview

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
    extension: str = ".nii.gz"


@dataclass
class CaseOutcome:
    """One case of a run: where its labels went, whether it was skipped, its statistics."""

    case_id: str
    labels_path: Path
    skipped: bool
    seconds: float = 0.0
    statistics: list[dict[str, Any]] | None = None


def output_paths(labels_path: Path) -> dict[str, Path]:
    """The side outputs that belong to ``labels_path``."""
    stem, extension = split_volume_name(labels_path.name) or (labels_path.stem, labels_path.suffix)
    folder = labels_path.parent
    return {
        "probabilities": folder / f"{stem}_probabilities{extension}",
        "uncertainty": folder / f"{stem}_uncertainty{extension}",
        "stats": folder / f"{stem}_stats.json",
        "preview": folder / f"{stem}_preview.png",
    }


def plan_outputs(inputs: list[PredictionInput], output: Path, options: OutputOptions) -> list[tuple[PredictionInput, Path]]:
    """Pair each case with its label file: ``output`` itself for one case given a volume file
    name, else ``output/<case><extension>``."""
    single_file = split_volume_name(output.name) is not None and output.name.lower().endswith(WRITE_SUFFIXES)
    if single_file and len(inputs) > 1:
        raise ConfigError(f"-o {output} is a file name but the input holds {len(inputs)} cases; give a folder")
    if single_file:
        return [(inputs[0], output)]
    if output.is_file():
        raise ConfigError(f"-o {output} is an existing file; give a folder for the outputs")
    return [(case, output / f"{case.case_id}{options.extension}") for case in inputs]


def segment(
    predictor: Predictor,
    input_path: str | Path,
    output: str | Path,
    options: OutputOptions | None = None,
    *,
    on_case: Callable[[CaseOutcome, int, int], None] | None = None,
) -> list[CaseOutcome]:
    """Segment every case under ``input_path`` into ``output`` (a file for one case, or a folder).

    With several cases, those whose label file exists are skipped unless ``overwrite``; a
    single named output that exists is an error unless ``overwrite``.
    """
    options = options or OutputOptions()
    inputs = find_inputs(input_path, channel_names=predictor.channel_names)
    pairs = plan_outputs(inputs, Path(output), options)
    if len(pairs) == 1 and pairs[0][1].exists() and not options.overwrite:
        raise OutputExistsError(f"{pairs[0][1]} exists; pass --overwrite to replace it")
    outcomes = []
    for index, (case, labels_path) in enumerate(pairs):
        if labels_path.exists() and not options.overwrite:
            outcome = CaseOutcome(case.case_id, labels_path, skipped=True)
        else:
            outcome = segment_case(predictor, case, labels_path, options)
        outcomes.append(outcome)
        if on_case is not None:
            on_case(outcome, index + 1, len(pairs))
    return outcomes


def segment_case(predictor: Predictor, case: PredictionInput, labels_path: Path, options: OutputOptions) -> CaseOutcome:
    """Segment one case and write its outputs (the label file last)."""
    channels = read_case(case.images)
    prediction = predictor.predict_volumes(
        channels, case_id=case.case_id, probabilities=options.probabilities, uncertainty=options.uncertainty
    )
    labels = postprocess(prediction.labels, prediction, options, predictor.regions)
    labels = to_brats_convention(labels, predictor, case.brats_convention)
    reference, side = prediction.reference, output_paths(labels_path)
    # Side outputs may be left from an interrupted run of this (unfinished) case: replace them,
    # and delete the temporary files a kill left while writing them.
    for path in (labels_path, *side.values()):
        remove_stale_temporaries(path)
    if prediction.probabilities is not None:
        write_volume(side["probabilities"], prediction.probabilities, reference, overwrite=True)
    if prediction.uncertainty is not None:
        write_volume(side["uncertainty"], prediction.uncertainty, reference, overwrite=True)
    statistics = None
    if options.stats:
        names = _names_in_convention(predictor, case.brats_convention)
        statistics = label_statistics(labels, spacing=reference.spacing, label_names=names)
        write_statistics(statistics, side["stats"], overwrite=True)
    if options.preview:
        image, label_view, spacing = ras_views(reference.channels_first()[0], labels, reference.affine)
        render_preview(image, label_view, spacing=spacing, path=side["preview"],
                       label_names=_names_in_convention(predictor, case.brats_convention), title=case.case_id,
                       overwrite=True)
    write_volume(labels_path, labels, reference, overwrite=True)
    logger.debug("%s: %.2f s", case.case_id, prediction.seconds)
    return CaseOutcome(case.case_id, labels_path, skipped=False, seconds=prediction.seconds, statistics=statistics)


def postprocess(labels: np.ndarray, prediction: Prediction, options: OutputOptions,
                regions: dict[str, list[int]] | None = None) -> np.ndarray:
    """Largest connected component and/or removal of components under ``min_size_ml``, per
    label value, or per region on a region model (``regions``: name -> label values)."""
    if options.largest_component:
        labels = keep_largest_component(labels, regions=regions)
    if options.min_size_ml:
        labels = remove_small_components(labels, min_size_ml=options.min_size_ml, spacing=prediction.reference.spacing,
                                          regions=regions)
    return labels


def brats_value_map(predictor: Predictor, convention: str | None) -> dict[int, int]:
    """The relabelling that writes a BraTS case in its own convention: enhancing tumour is 4
    (2018-2021) or 3 (2023+); empty when the model already uses the case's convention."""
    values = set(predictor.labels)
    if convention == "brats2023" and 4 in values and 3 not in values:
        return {4: 3}
    if convention == "brats2021" and 3 in values and 4 not in values:
        return {3: 4}
    return {}


def to_brats_convention(labels: np.ndarray, predictor: Predictor, convention: str | None) -> np.ndarray:
    """``labels`` (*S) relabelled by :func:`brats_value_map`."""
    for old, new in brats_value_map(predictor, convention).items():
        labels = np.where(labels == old, new, labels).astype(labels.dtype)
    return labels


def _names_in_convention(predictor: Predictor, convention: str | None) -> dict[int, str]:
    mapping = brats_value_map(predictor, convention)
    return {mapping.get(value, value): name for value, name in predictor.label_names.items()}


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
