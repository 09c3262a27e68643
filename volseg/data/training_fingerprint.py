"""What a model's training scans looked like, stored in its checkpoint to compare new inputs with.

:func:`measure_scan` measures one scan (training case or new input, the same code for both):
voxel spacing and field of view in the model's orientation, the orientation it was stored in,
and per channel the intensity range, the fraction of voxels darker than CT air's threshold and
percentiles of the non-zero voxels. :class:`TrainingFingerprint` keeps the range (smallest and
largest value over the training cases) of each, a few hundred bytes: no per-case samples.
:mod:`volseg.inference.input_checks` compares an input with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from volseg.config import Config
from volseg.data.datasets import _modality, find_cases
from volseg.data.fingerprint import nonzero_bounding_shape, reorient_shape_and_spacing
from volseg.data.splits import load_folds, split_for_fold
from volseg.errors import ConfigError
from volseg.io import Volume, read_volume

#: Version of the stored dictionary; a reader skips fingerprints of a newer version.
FINGERPRINT_VERSION = 1
#: Hounsfield units below which a voxel is air or lung: no MRI intensity goes there.
AIR_HU = -500.0
#: A scan "looks like CT" when at least this fraction of its voxels is at or below AIR_HU.
CT_AIR_FRACTION = 0.01
#: At most this many voxels are used for percentiles and the air fraction (a regular subgrid).
SUBSAMPLE_VOXELS = 2_000_000

Range = list[float]  # [smallest, largest] over the training cases


@dataclass
class ChannelFeatures:
    """Intensities of one channel of one scan (percentiles over its non-zero voxels)."""

    minimum: float
    maximum: float
    air_fraction: float  # of all voxels, at or below AIR_HU
    percentile_00_5: float
    median: float
    percentile_99_5: float


@dataclass
class ScanFeatures:
    """One scan measured; axes in the target orientation (voxel order for 2D volumes)."""

    spacing: list[float]
    field_of_view: list[float]  # mm, of the non-zero bounding box (what cropping to the foreground keeps)
    orientation: str  # axis codes of the stored voxel order, e.g. "LPS"
    channels: list[ChannelFeatures]


def measure_scan(channels: Sequence[Volume], orientation: str = "RAS") -> ScanFeatures:
    """Measure one case given as one :class:`Volume` per channel file (or one multi-channel volume)."""
    first = channels[0]
    arrays = [_channel_arrays(volume) for volume in channels]
    inside = np.zeros(first.spatial_shape, dtype=bool)
    for channel in (array for group in arrays for array in group):
        if channel.shape == inside.shape:  # channels on other grids are refused later, by the transforms
            inside |= channel != 0
    extent = nonzero_bounding_shape(inside)
    spacing = list(first.spacing)
    if first.spatial_dims == 3:
        _, spacing, permutation = reorient_shape_and_spacing(first.spatial_shape, spacing, first.affine, orientation)
        extent = [extent[axis] for axis in permutation]
    return ScanFeatures(
        spacing=[float(s) for s in spacing],
        field_of_view=[float(n * s) for n, s in zip(extent, spacing)],
        orientation="".join(first.orientation),
        channels=[_channel_features(array) for group in arrays for array in group],
    )


def _channel_arrays(volume: Volume) -> list[np.ndarray]:
    """Views (*S) of each channel of ``volume``."""
    array = volume.array
    if array.ndim == volume.spatial_dims:
        return [array]
    return [array[..., c] for c in range(array.shape[-1])]


def _channel_features(channel: np.ndarray) -> ChannelFeatures:
    step = max(1, math.ceil((channel.size / SUBSAMPLE_VOXELS) ** (1 / channel.ndim)))
    sample = np.asarray(channel[(slice(None, None, step),) * channel.ndim], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return ChannelFeatures(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    minimum, maximum = float(sample.min()), float(sample.max())
    if np.issubdtype(channel.dtype, np.integer) or bool(np.isfinite(channel).all()):  # exact, when it can be
        minimum, maximum = float(channel.min()), float(channel.max())
    nonzero = sample[sample != 0]
    low, median, high = np.percentile(nonzero if nonzero.size else sample, [0.5, 50.0, 99.5])
    return ChannelFeatures(
        minimum=minimum,
        maximum=maximum,
        air_fraction=float(np.mean(sample <= AIR_HU)),
        percentile_00_5=float(low),
        median=float(median),
        percentile_99_5=float(high),
    )


@dataclass
class ChannelFingerprint:
    """One input channel over the training cases: its modality and the range of each feature."""

    name: str
    modality: str | None  # "CT", "MRI" or None (unknown)
    minimum: Range
    maximum: Range
    air_fraction: Range
    percentile_00_5: Range
    median: Range
    percentile_99_5: Range


@dataclass
class TrainingFingerprint:
    """The training cases of a model, summed up as ranges (see the module docstring)."""

    cases: int
    orientation: str  # the target orientation: the axes of spacing and field_of_view
    orientations: list[str]  # the orientations the training files were stored in
    spacing: list[Range]  # per axis, mm
    field_of_view: list[Range]  # per axis, mm
    channels: list[ChannelFingerprint]
    version: int = FINGERPRINT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, as stored in a checkpoint under ``fingerprint``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingFingerprint:
        """Undo :meth:`to_dict`; ``ValueError`` for a malformed dictionary or a newer version."""
        try:
            version = values["version"]
            if not isinstance(version, int) or version > FINGERPRINT_VERSION:
                raise ValueError(f"fingerprint version {version!r}; this volseg reads up to {FINGERPRINT_VERSION}")
            channels = [ChannelFingerprint(**channel) for channel in values["channels"]]
            fingerprint = cls(**{**values, "channels": channels})
            ranges = [*fingerprint.spacing, *fingerprint.field_of_view]
            ranges += [getattr(c, key.name) for c in channels for key in fields(ChannelFeatures)]
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed training fingerprint: {error!r}") from None
        if len(fingerprint.spacing) != len(fingerprint.field_of_view) or not all(map(_is_range, ranges)):
            raise ValueError("malformed training fingerprint: its ranges are not [low, high] pairs of numbers")
        return fingerprint


def _is_range(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)


def _range(values: Iterable[float]) -> Range:
    values = list(values)
    return [float(min(values)), float(max(values))]


def summarise_scans(
    scans: Sequence[ScanFeatures], channel_names: Sequence[str] = (), orientation: str = "RAS"
) -> TrainingFingerprint:
    """The fingerprint of training cases measured by :func:`measure_scan`.

    A channel's modality is what its name says (MSD/nnU-Net modality or BraTS sequence names);
    for other names, CT when every case looks like CT (:data:`CT_AIR_FRACTION`), else unknown.
    """
    if not scans:
        raise ValueError("a training fingerprint needs at least one case")
    axes = range(len(scans[0].spacing))
    channels = []
    for index in range(len(scans[0].channels)):
        features = [scan.channels[index] for scan in scans]
        name = channel_names[index] if index < len(channel_names) else f"channel {index}"
        ranges = {key.name: _range(getattr(one, key.name) for one in features) for key in fields(ChannelFeatures)}
        modality = _modality([name]) if name.strip() else None
        if modality not in ("CT", "MRI"):
            modality = "CT" if ranges["air_fraction"][0] >= CT_AIR_FRACTION else None
        channels.append(ChannelFingerprint(name=name, modality=modality, **ranges))
    return TrainingFingerprint(
        cases=len(scans),
        orientation=orientation.upper(),
        orientations=sorted({scan.orientation for scan in scans}),
        spacing=[_range(scan.spacing[a] for scan in scans) for a in axes],
        field_of_view=[_range(scan.field_of_view[a] for scan in scans) for a in axes],
        channels=channels,
    )


def fingerprint_images(
    cases: Sequence[Sequence[str | Path]],
    config: Config,
    *,
    max_cases: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingFingerprint:
    """Read and measure the training cases of a model trained with ``config`` (its channel names
    and orientation), each case given as its channel files; with ``max_cases``, only that many,
    spread evenly over the list (the ranges then come from a sample of the cases)."""
    if max_cases is not None and len(cases) > max_cases:
        picks = np.linspace(0, len(cases) - 1, max_cases).round().astype(int)
        cases = [cases[i] for i in sorted(set(picks.tolist()))]
    orientation = config.preprocessing.orientation
    scans = []
    for done, images in enumerate(cases, start=1):
        scans.append(measure_scan([read_volume(path, allow_nonfinite=True) for path in images], orientation))
        if progress is not None:
            progress(done, len(cases))
    return summarise_scans(scans, config.data.channels, orientation)


def fingerprint_training_cases(
    config: Config,
    *,
    root: str | Path | None = None,
    splits: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainingFingerprint:
    """The fingerprint of the cases a model trained with ``config`` learnt from, read from
    ``root`` (default ``config.data.root``): with a ``splits`` file the training cases of the
    config's fold, less its validation cases; without one, every labelled case."""
    dataset = find_cases(root or config.data.root, layout=config.data.layout)
    cases = dataset.cases
    if splits is not None and config.data.fold >= 0:
        folds = load_folds(splits)
        train_ids, _ = split_for_fold(folds, config.data.fold)
        chosen = set(train_ids) - set(folds[config.data.fold].get("validation", []))
        cases = [case for case in cases if case.case_id in chosen]
    if not cases:
        raise ConfigError(f"{dataset.root} holds none of the training cases of fold {config.data.fold} in {splits}")
    return fingerprint_images([case.images for case in cases], config, progress=progress)
