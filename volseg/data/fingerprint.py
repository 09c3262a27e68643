"""Dataset fingerprint: what the planner needs to know about a dataset.

Per case: spatial shape and spacing in the target orientation, the shape of the
non-zero bounding box (what cropping to the foreground keeps), label voxel counts,
and a sample of foreground intensities per channel. Summed over the dataset:
median spacing and shape, intensity percentiles, class fractions and the modality.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from volseg.data.datasets import Case, Dataset
from volseg.io import read_volume

logger = logging.getLogger(__name__)

#: Foreground intensities kept per case and channel (nnU-Net samples 10,000 too).
SAMPLES_PER_CASE = 10_000


@dataclass
class CaseFingerprint:
    """Statistics of one case, axes in the target orientation."""

    case_id: str
    shape: list[int]
    spacing: list[float]
    cropped_shape: list[int]
    label_counts: dict[int, int]
    image_minimum: list[float]  # per channel, over the whole image (CT air is about -1000)
    intensity_samples: list[list[float]] = field(repr=False)  # per channel


@dataclass
class ChannelStatistics:
    """Foreground intensity statistics of one channel over the dataset."""

    mean: float
    std: float
    median: float
    percentile_00_5: float
    percentile_99_5: float
    min: float
    max: float
    image_minimum_median: float  # median over cases of each whole image's minimum


@dataclass
class DatasetFingerprint:
    """Dataset-level summary; ``cases`` keeps the per-case records (without intensity samples)."""

    layout: str
    modality: str | None
    channel_names: list[str]
    label_names: dict[int, str]
    orientation: str
    num_cases: int
    median_spacing: list[float]
    median_shape: list[float]
    median_cropped_shape: list[float]
    spacing_percentile_10: list[float]
    intensities: list[ChannelStatistics]
    class_fractions: dict[int, float]
    total_voxels: int
    cases: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reorient_shape_and_spacing(
    shape: Sequence[int], spacing: Sequence[float], affine: np.ndarray, orientation: str = "RAS"
) -> tuple[list[int], list[float], np.ndarray]:
    """Shape and spacing after reorienting to ``orientation``, and the axis permutation used.

    ``permutation[i]`` is the source axis that becomes target axis ``i``.
    """
    source = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(source, nib.orientations.axcodes2ornt(tuple(orientation)))
    permutation = np.empty(len(transform), dtype=int)
    for source_axis, (target_axis, _) in enumerate(transform):
        permutation[int(target_axis)] = source_axis
    return [int(shape[a]) for a in permutation], [float(spacing[a]) for a in permutation], permutation


def nonzero_bounding_shape(mask: np.ndarray) -> list[int]:
    """Extent of the non-zero voxels of ``mask`` (*S) along each axis; the full shape if empty."""
    if not mask.any():
        return list(mask.shape)
    extents = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        extents.append(int(hits[-1] - hits[0] + 1))
    return extents


def fingerprint_case(case: Case, orientation: str = "RAS", seed: int = 0) -> CaseFingerprint:
    """Read one case and measure it. Intensities are sampled inside the label's foreground
    (inside the non-zero image region when the case has no label or an empty one)."""
    channels = [read_volume(path) for path in case.images]
    image = channels[0]
    data = np.concatenate([c.channels_first() for c in channels])  # (C, *S)
    shape, spacing, permutation = reorient_shape_and_spacing(data.shape[1:], image.spacing, image.affine, orientation)
    nonzero = np.any(data != 0, axis=0)
    cropped = nonzero_bounding_shape(nonzero)
    counts: dict[int, int] = {}
    foreground = nonzero
    if case.label is not None:
        label = np.asarray(read_volume(case.label).array)
        values, value_counts = np.unique(label, return_counts=True)
        counts = {int(v): int(n) for v, n in zip(values, value_counts)}
        if (label > 0).any():
            foreground = label > 0
    rng = np.random.default_rng(seed)
    samples = []
    for channel in data:
        voxels = channel[foreground]
        if voxels.size > SAMPLES_PER_CASE:
            voxels = rng.choice(voxels, SAMPLES_PER_CASE, replace=False)
        samples.append(voxels.astype(float).tolist())
    return CaseFingerprint(
        case_id=case.case_id,
        shape=shape,
        spacing=spacing,
        cropped_shape=[cropped[a] for a in permutation],
        label_counts=counts,
        image_minimum=[float(channel.min()) for channel in data],
        intensity_samples=samples,
    )


def _channel_statistics(samples: np.ndarray, image_minima: list[float]) -> ChannelStatistics:
    minimum = float(np.median(image_minima))
    if samples.size == 0:
        return ChannelStatistics(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, minimum)
    low, median, high = np.percentile(samples, [0.5, 50.0, 99.5])
    return ChannelStatistics(
        mean=float(samples.mean()),
        std=float(samples.std()),
        median=float(median),
        percentile_00_5=float(low),
        percentile_99_5=float(high),
        min=float(samples.min()),
        max=float(samples.max()),
        image_minimum_median=minimum,
    )


def fingerprint_dataset(
    dataset: Dataset,
    *,
    orientation: str = "RAS",
    num_workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetFingerprint:
    """Fingerprint every labelled case of ``dataset`` (``num_workers`` processes)."""
    cases = dataset.cases
    if num_workers > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            futures = [pool.submit(fingerprint_case, case, orientation, index) for index, case in enumerate(cases)]
            results = []
            for done, future in enumerate(futures, start=1):
                results.append(future.result())
                if progress:
                    progress(done, len(cases))
    else:
        results = []
        for index, case in enumerate(cases):
            results.append(fingerprint_case(case, orientation, index))
            if progress:
                progress(index + 1, len(cases))
    return summarise(dataset, results, orientation)


def summarise(dataset: Dataset, results: list[CaseFingerprint], orientation: str) -> DatasetFingerprint:
    """Combine per-case fingerprints into the dataset fingerprint."""
    spacings = np.array([r.spacing for r in results])
    shapes = np.array([r.shape for r in results], dtype=float)
    cropped = np.array([r.cropped_shape for r in results], dtype=float)
    num_channels = len(results[0].intensity_samples)
    intensities = [
        _channel_statistics(
            np.concatenate([np.asarray(r.intensity_samples[c]) for r in results]), [r.image_minimum[c] for r in results]
        )
        for c in range(num_channels)
    ]
    totals: dict[int, int] = {}
    for r in results:
        for value, count in r.label_counts.items():
            totals[value] = totals.get(value, 0) + count
    total_voxels = sum(totals.values())
    records = [{k: v for k, v in asdict(r).items() if k != "intensity_samples"} for r in results]
    return DatasetFingerprint(
        layout=dataset.layout,
        modality=dataset.modality,
        channel_names=list(dataset.channel_names),
        label_names=dict(dataset.label_names),
        orientation=orientation,
        num_cases=len(results),
        median_spacing=np.median(spacings, axis=0).tolist(),
        median_shape=np.median(shapes, axis=0).tolist(),
        median_cropped_shape=np.median(cropped, axis=0).tolist(),
        spacing_percentile_10=np.percentile(spacings, 10, axis=0).tolist(),
        intensities=intensities,
        class_fractions={v: c / total_voxels for v, c in sorted(totals.items())} if total_voxels else {},
        total_voxels=int(total_voxels),
        cases=records,
    )
