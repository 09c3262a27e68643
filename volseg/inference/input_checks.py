"""Does a scan fit the model? Compare an input with the training fingerprint stored in the checkpoint.

A model trained on 1 mm hippocampus crops of about 40 mm will label a whole-brain MRI or an
abdominal CT all the same, and the labels mean nothing. Before the network runs, each input is
measured (:func:`volseg.data.training_fingerprint.measure_scan`) and compared with the ranges
of the training cases; each mismatch is one message naming the input's value and the training
range. The Predictor logs them as warnings, or refuses the case with ``strict``.

Tolerances, chosen so that cases of the training distribution never warn (measured: the 42
held-out hippocampus cases of fold 0 and the 4 held-out BraTS cases fall inside the ranges of
the 166 and 12 training cases of the bundled models):

- **Field of view** (the non-zero bounding box in mm, per axis in the model's orientation): a
  warning beyond :data:`FIELD_OF_VIEW_FACTOR` (1.5) times the largest training extent, or under
  the smallest divided by 1.5. The training extents themselves spread by a factor of 1.4-2
  (hippocampus crops 31-43 x 40-59 x 24-47 mm, BraTS brains 133-146 x 155-179 x 128-146 mm),
  so 1.5 beyond the range is far out of the distribution, while a whole brain (about 180 mm)
  against 40 mm crops, or a 350 mm CT against brains, is caught.
- **Voxel spacing** (per axis): a warning beyond :data:`SPACING_FACTOR` (2) times the largest
  training spacing, or under the smallest divided by 2. The preprocessing resamples to the
  model's spacing, so moderate differences are harmless; from twice as coarse on, the scan
  lacks detail the model saw (5 mm CT slices against 1 mm training), and half as fine is the
  symmetric bound.
- **Modality** (per channel). MRI intensities are arbitrary units (the hippocampus cases' median
  ranges from 49 to 294,412), so raw ranges are not compared. What is compared is CT's mark: air,
  about -1000 HU, which no MRI reaches. An input "looks like CT" when at least
  :data:`CT_AIR_FRACTION` (1 %) of its voxels are at or below -500; a single dark outlier does not
  count (one of the tiny test MRIs reaches -610 on 0.01 % of its voxels). It warns when no
  training case had that much air. The reverse, a CT model given an input without a single voxel
  below -500, warns only when every training case had CT air (a model trained on tight CT crops
  without air is not judged by it).

Not compared: orientation (every input is reoriented to the model's orientation before the
network) and MRI intensity percentiles (each case is normalised on its own); both are stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from volseg.data.training_fingerprint import (
    AIR_HU,
    CT_AIR_FRACTION,
    ChannelFeatures,
    ChannelFingerprint,
    ScanFeatures,
    TrainingFingerprint,
    measure_scan,
)
from volseg.errors import InputMismatchError
from volseg.io import Volume

logger = logging.getLogger(__name__)

FIELD_OF_VIEW_FACTOR = 1.5
SPACING_FACTOR = 2.0


def _mm(values: Sequence[float], decimals: int) -> str:
    """``350x350x300`` (spacing: ``0.78x0.78x5.00``)."""
    return "x".join(f"{v:.{decimals}f}" for v in values)


def _ranges(ranges: Sequence[Sequence[float]], decimals: int, dash: str = "-") -> str:
    """``36-43`` when every axis has that range, else ``31-43 x 40-59 x 24-47``."""
    texts = [f"{low:.{decimals}f}{dash}{high:.{decimals}f}" for low, high in ranges]
    return texts[0] if len(set(texts)) == 1 else " x ".join(texts)


def _outside(values: Sequence[float], ranges: Sequence[Sequence[float]], factor: float) -> bool:
    """Whether any value lies beyond its axis's range by more than ``factor``."""
    return any(v > high * factor or v < low / factor for v, (low, high) in zip(values, ranges))


def _modality_mismatch(channel: ChannelFeatures, trained: ChannelFingerprint) -> str | None:
    intensities = f"intensities {channel.minimum:.0f}..{channel.maximum:.0f}"
    if channel.air_fraction >= CT_AIR_FRACTION and trained.air_fraction[1] < CT_AIR_FRACTION:
        what = trained.modality if trained.modality and trained.modality != "CT" else "scans without CT air"
        return (
            f"input looks like CT ({intensities}, {channel.air_fraction:.0%} of voxels at or below {AIR_HU:.0f} HU); "
            f"the model was trained on {what}"
        )
    if channel.minimum > AIR_HU and trained.air_fraction[0] >= CT_AIR_FRACTION:
        return (
            f"input does not look like CT ({intensities}, no voxel at or below {AIR_HU:.0f} HU); the model was "
            f"trained on CT (every training case holds air: minimum {_ranges([trained.minimum], 0, '..')})"
        )
    return None


def input_mismatches(features: ScanFeatures, fingerprint: TrainingFingerprint) -> list[str]:
    """One message per way ``features`` (an input) falls outside ``fingerprint`` (see the module docstring)."""
    by_message: dict[str, list[str]] = {}  # the same mismatch on several channels is one message
    for channel, trained in zip(features.channels, fingerprint.channels):
        message = _modality_mismatch(channel, trained)
        if message:
            by_message.setdefault(message, []).append(trained.name)
    if len(fingerprint.channels) == 1:
        messages = list(by_message)
    else:
        messages = [f"channel{'s' * (len(n) > 1)} {', '.join(n)}: {m}" for m, n in by_message.items()]
    if len(features.field_of_view) == len(fingerprint.field_of_view):
        if _outside(features.field_of_view, fingerprint.field_of_view, FIELD_OF_VIEW_FACTOR):
            messages.append(
                f"field of view {_mm(features.field_of_view, 0)} mm; "
                f"training cases were {_ranges(fingerprint.field_of_view, 0)} mm"
            )
        if _outside(features.spacing, fingerprint.spacing, SPACING_FACTOR):
            messages.append(
                f"voxel spacing {_mm(features.spacing, 2)} mm; training cases {_ranges(fingerprint.spacing, 2)} mm"
            )
    return messages


def check_input(
    channels: Sequence[Volume], fingerprint: TrainingFingerprint, *, case_id: str = "case", strict: bool = False
) -> list[str]:
    """Compare one case with ``fingerprint``: log each mismatch as a warning and return them, or
    with ``strict`` raise :class:`InputMismatchError` naming them all."""
    messages = input_mismatches(measure_scan(channels, fingerprint.orientation), fingerprint)
    if messages and strict:
        raise InputMismatchError(
            f"{case_id} does not fit the model: {' | '.join(messages)}; refused by --strict "
            "(without it volseg warns and segments)"
        )
    for message in messages:
        logger.warning("%s: %s (unlike the model's training scans; --strict refuses such inputs)", case_id, message)
    return messages
