"""Segmentation metrics per case and over a dataset: Dice, IoU, HD95, surface Dice, volumes.

A *structure* is a set of label values: ``labels=[1, 2]`` gives one structure per value
(named ``"1"``, ``"2"``), ``regions={"WT": [1, 2, 4], ...}`` one per named set (BraTS
regions). Dice, IoU, HD95 and surface Dice come from :mod:`monai.metrics`
(``compute_dice``, ``compute_iou``, ``compute_hausdorff_distance(percentile=95)``,
``compute_surface_dice``), with distances in mm on the voxel ``spacing`` (anisotropic
spacing is honoured). HD95 is MONAI's: the larger of the two directed 95th percentiles of
the distances between the boundary voxels. Surface Dice counts boundary voxels within
``tolerance_mm`` of the other boundary (MONAI's default, not subvoxel surface areas).

Empty structures (one convention, used everywhere):

==========================  =====  =====  =====  ============
case                        dice   iou    hd95   surface_dice
==========================  =====  =====  =====  ============
both empty                  1.0    1.0    0.0    1.0
exactly one side empty      0.0    0.0    NaN    0.0
==========================  =====  =====  =====  ============

HD95 is undefined when one side is empty, so it is NaN; :func:`summarise` leaves NaNs out
of the statistics and counts them as ``n_nan``. Volumes are voxel count x voxel volume in
mL; ``tp``/``fp``/``fn`` are voxel counts.
"""

from __future__ import annotations

import csv
import io as _stringio
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, compute_surface_dice

from volseg.data.label_space import (  # noqa: F401 (defined there; old import paths)
    BRATS_REGIONS_2021,
    BRATS_REGIONS_2023,
    brats_regions,
)
from volseg.errors import ConfigError, InputFileError, OutputExistsError, ShapeError
from volseg.inference.postprocess import check_spacing
from volseg.io import Volume, read_volume, same_grid
from volseg.io.atomic import write_text
from volseg.io.naming import case_id, is_side_volume

logger = logging.getLogger(__name__)

#: Every metric of a structure, in report order.
METRICS = ("dice", "iou", "hd95", "surface_dice", "volume_pred_ml", "volume_ref_ml", "tp", "fp", "fn")
#: Statistics :func:`summarise` gives per structure and metric.
SUMMARY_STATS = ("mean", "std", "median", "ci95_low", "ci95_high", "n", "n_nan")

Array = np.ndarray | torch.Tensor


@dataclass
class CaseResult:
    """Metrics of one case: ``metrics[structure][metric]`` (see :data:`METRICS`)."""

    case: str
    metrics: dict[str, dict[str, float]]
    prediction: Path | None = None
    reference: Path | None = None


def label_structures(labels: Iterable[int]) -> dict[str, list[int]]:
    """``[1, 2]`` -> ``{"1": [1], "2": [2]}``: one structure per label value."""
    return {str(int(v)): [int(v)] for v in labels}


def _check_structures(structures: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    if not structures:
        raise ConfigError("no structures to evaluate: give label values or named regions")
    checked = {}
    for name, values in structures.items():
        vals = list(values) if isinstance(values, Iterable) else [values]
        if not vals or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            raise ConfigError(f"structure {name!r} needs a non-empty list of integer label values, got {values!r}")
        checked[str(name)] = [int(v) for v in vals]
    return checked


def _mask(volume: Array, values: list[int]) -> torch.Tensor:
    """Boolean ``(*S)`` mask of the voxels whose value is in ``values``."""
    if isinstance(volume, torch.Tensor):
        mask = torch.zeros(volume.shape, dtype=torch.bool, device=volume.device)
        for v in values:
            mask |= volume == v
        return mask
    return torch.from_numpy(np.isin(volume, values))


def _bounding_box(mask: torch.Tensor, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the box around the ``True`` voxels of ``mask``, grown by ``margin``."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = torch.nonzero(mask.any(dim=others) if others else mask).flatten()
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        box.append(slice(max(lo - margin, 0), min(hi + margin, mask.shape[axis])))
    return tuple(box)


def _structure_metrics(
    pred: torch.Tensor, ref: torch.Tensor, spacing: tuple[float, ...], tolerance_mm: float, voxel_ml: float
) -> dict[str, float]:
    """All :data:`METRICS` for boolean masks ``pred`` and ``ref`` of shape ``(*S)``."""
    n_pred, n_ref = int(pred.count_nonzero()), int(ref.count_nonzero())
    # Crop to the foreground box (one voxel when both are empty): the metrics are unchanged
    # and MONAI's float copies stay small.
    box = _bounding_box(pred | ref) if n_pred or n_ref else (slice(0, 1),) * pred.ndim
    pred, ref = pred[box].cpu(), ref[box].cpu()
    tp = int((pred & ref).count_nonzero())
    out = {
        "volume_pred_ml": n_pred * voxel_ml,
        "volume_ref_ml": n_ref * voxel_ml,
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_ref - tp,
    }
    p, r = pred[None, None].float(), ref[None, None].float()  # (B=1, C=1, *S) one-hot
    # ignore_empty=False: both empty -> 1, one side empty -> 0 (the module's convention)
    out["dice"] = float(compute_dice(p, r, include_background=True, ignore_empty=False))
    out["iou"] = float(compute_iou(p, r, include_background=True, ignore_empty=False))
    if n_pred == 0 or n_ref == 0:  # MONAI gives NaN for both; see the module docstring
        out["hd95"] = 0.0 if n_pred == n_ref else math.nan
        out["surface_dice"] = 1.0 if n_pred == n_ref else 0.0
        return {m: out[m] for m in METRICS}
    with warnings.catch_warnings():  # MONAI's own call of its deprecated argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        out["hd95"] = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing))
        out["surface_dice"] = float(
            compute_surface_dice(p, r, class_thresholds=[tolerance_mm], include_background=True, spacing=spacing)
        )
    return {m: out[m] for m in METRICS}


def evaluate_case(
    prediction: Array,
    reference: Array,
    *,
    spacing: Sequence[float],
    structures: Mapping[str, Sequence[int]],
    tolerance_mm: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Metrics of each structure: ``{structure: {metric: value}}`` (see :data:`METRICS`).

    ``prediction``, ``reference``: label maps ``(*S)`` (2D or 3D), numpy or torch, same
    shape. ``spacing``: voxel size in mm per axis of ``S``. ``tolerance_mm``: surface Dice
    tolerance. Empty structures follow the module's convention.
    """
    pred_shape, ref_shape = tuple(prediction.shape), tuple(reference.shape)
    if pred_shape != ref_shape:
        raise ShapeError(f"prediction shape {pred_shape} and reference shape {ref_shape} differ")
    if len(ref_shape) not in (2, 3):
        raise ShapeError(f"expected 2D or 3D label maps, got shape {ref_shape}")
    spacing = check_spacing(spacing, len(ref_shape))
    structures = _check_structures(structures)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ConfigError(f"tolerance_mm must be finite and >= 0, got {tolerance_mm}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    results = {}
    for name, values in structures.items():
        pred_mask, ref_mask = _mask(prediction, values), _mask(reference, values)
        results[name] = _structure_metrics(pred_mask, ref_mask, spacing, tolerance_mm, voxel_ml)
    return results


def _empty_structure() -> dict[str, float]:
    """The metrics of a structure absent from both sides."""
    return {
        "dice": 1.0,
        "iou": 1.0,
        "hd95": 0.0,
        "surface_dice": 1.0,
        "volume_pred_ml": 0.0,
        "volume_ref_ml": 0.0,
        "tp": 0,
        "fp": 0,
        "fn": 0,
    }


def _label_values(volume: Volume) -> set[int]:
    """Non-zero values of a label map (must be integers)."""
    values = np.unique(volume.array)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise ConfigError(f"'{volume.path}' is not a label map: it holds non-integer values")
    return {int(v) for v in values if v != 0}


def _resolve_structures(
    labels: Iterable[int] | None, regions: Mapping[str, Sequence[int]] | None, pred: Volume, ref: Volume
) -> dict[str, list[int]]:
    if labels is not None and regions is not None:
        raise ConfigError("give labels or regions, not both")
    if regions is not None:
        return _check_structures(regions)
    if labels is not None:
        return _check_structures(label_structures(labels))
    # Values of both sides: a label only in the prediction is a false positive to count.
    return label_structures(sorted(_label_values(ref) | _label_values(pred)))


def _read_pair(pred_path: str | os.PathLike, ref_path: str | os.PathLike) -> tuple[Volume, Volume]:
    ref, pred = read_volume(ref_path), read_volume(pred_path)
    for vol, role in ((pred, "prediction"), (ref, "reference")):
        if vol.array.ndim != vol.spatial_dims:
            raise ShapeError(f"{role} '{vol.path}' has channels (shape {vol.array.shape}); expected a label map")
    if not same_grid(pred, ref):
        diff = float(np.max(np.abs(pred.affine - ref.affine))) if pred.spatial_shape == ref.spatial_shape else math.nan
        raise ShapeError(
            f"prediction '{pred.path}' (shape {pred.spatial_shape}) and reference "
            f"'{ref.path}' (shape {ref.spatial_shape}) are on different grids"
            + ("" if math.isnan(diff) else f" (affines differ by up to {diff:.3g})")
        )
    return pred, ref


def evaluate_files(
    pred_path: str | os.PathLike,
    ref_path: str | os.PathLike,
    *,
    labels: Iterable[int] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    tolerance_mm: float = 1.0,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_case` on two label-map files on the same grid (spacing from the
    reference's affine). Without ``labels`` and ``regions``, every non-zero value present
    in either file is a structure (``{}`` when both are empty)."""
    pred, ref = _read_pair(pred_path, ref_path)
    structures = _resolve_structures(labels, regions, pred, ref)
    if not structures:
        logger.info("'%s' and '%s' hold no labels: nothing to evaluate", pred.path, ref.path)
        return {}
    return evaluate_case(pred.array, ref.array, spacing=ref.spacing, structures=structures, tolerance_mm=tolerance_mm)


def _volume_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputFileError(f"cannot read '{folder}': not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        cid = case_id(path) if path.is_file() and not is_side_volume(path.name) else None
        if cid is None:  # not a case, or a prediction's probabilities, uncertainty or Slicer file
            continue
        if cid in found:
            raise ConfigError(f"'{found[cid]}' and '{path}' in '{folder}' are both case {cid!r}")
        found[cid] = path
    return found


def _name_some(ids: Iterable[str], limit: int = 10) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def evaluate_folders(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    *,
    labels: Iterable[int] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    tolerance_mm: float = 1.0,
    allow_missing: bool = False,
) -> list[CaseResult]:
    """Evaluate every case of ``ref_dir`` against the prediction of the same case name
    (see :func:`case_id`) in ``pred_dir``; one :class:`CaseResult` per case, sorted.

    Cases on one side only raise :class:`InputFileError` naming them, unless
    ``allow_missing`` (then skipped with a warning). Without ``labels``/``regions`` the
    structures are the non-zero values of all cases; a case lacking one on both sides gets
    the both-empty values.
    """
    preds, refs = _volume_files(Path(pred_dir)), _volume_files(Path(ref_dir))
    no_pred, no_ref = sorted(set(refs) - set(preds)), sorted(set(preds) - set(refs))
    if no_pred or no_ref:
        parts = (
            [f"{len(no_pred)} reference case(s) have no prediction in '{pred_dir}': {_name_some(no_pred)}"]
            if no_pred
            else []
        )
        parts += (
            [f"{len(no_ref)} prediction(s) have no reference in '{ref_dir}': {_name_some(no_ref)}"] if no_ref else []
        )
        if not allow_missing:
            raise InputFileError("; ".join(parts) + " (pass allow_missing=True to skip them)")
        logger.warning("skipping unpaired cases: %s", "; ".join(parts))
    paired = sorted(set(refs) & set(preds))
    if not paired:
        raise InputFileError(
            f"no case to evaluate: no volume of '{ref_dir}' has a prediction of the same case name in '{pred_dir}'"
        )
    rows = []
    for i, cid in enumerate(paired, 1):
        metrics = evaluate_files(preds[cid], refs[cid], labels=labels, regions=regions, tolerance_mm=tolerance_mm)
        rows.append(CaseResult(cid, metrics, preds[cid], refs[cid]))
        logger.info("evaluated case %s (%d/%d)", cid, i, len(paired))
    if labels is None and regions is None:  # auto labels: absent on both sides = both empty
        names = sorted({n for row in rows for n in row.metrics}, key=int)
        for row in rows:
            row.metrics = {n: row.metrics.get(n) or _empty_structure() for n in names}
    return rows


def summarise(
    rows: Iterable[CaseResult | Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """``{structure: {metric: {mean, std, median, ci95_low, ci95_high, n, n_nan}}}`` over the
    cases. NaNs are left out of mean/std (population, ddof=0)/median and counted in ``n_nan``;
    ``n`` is the number of non-NaN values. ``ci95_*`` bound the 95 % confidence interval of the
    mean (Student's t, sample std; NaN with fewer than 2 values). Statistics of no values are NaN."""
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        metrics = row.metrics if isinstance(row, CaseResult) else row
        for name, per_metric in metrics.items():
            for metric, value in per_metric.items():
                values.setdefault(name, {}).setdefault(metric, []).append(float(value))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, per_metric in values.items():
        summary[name] = {}
        for metric, vals in per_metric.items():
            arr = np.asarray(vals, dtype=np.float64)
            kept = arr[~np.isnan(arr)]
            empty = kept.size == 0
            summary[name][metric] = {
                "mean": math.nan if empty else float(np.mean(kept)),
                "std": math.nan if empty else float(np.std(kept)),
                "median": math.nan if empty else float(np.median(kept)),
                **dict(zip(("ci95_low", "ci95_high"), confidence_interval(kept))),
                "n": int(kept.size),
                "n_nan": int(arr.size - kept.size),
            }
    return summary


def confidence_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean of ``values`` (no NaNs); NaNs for fewer than 2 values."""
    if values.size < 2:
        return math.nan, math.nan
    from scipy import stats  # imported here: scipy.stats takes about 0.3 s to import

    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1)) * float(np.std(values, ddof=1)) / math.sqrt(values.size)
    return float(np.mean(values)) - half, float(np.mean(values)) + half


def _cell(value: object) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return repr(float(value))  # round-trips; "nan", "inf"


def write_report_csv(
    rows: Iterable[CaseResult],
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a CSV atomically: columns ``case, structure`` and :data:`METRICS`; one row per
    case and structure, then one row per statistic of :data:`SUMMARY_STATS` and structure
    (``case`` = the statistic's name). Returns the path."""
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"'{out}' exists; pass overwrite=True to replace it")
    buffer = _stringio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "structure", *METRICS])
    for row in rows:
        for name, metrics in row.metrics.items():
            writer.writerow([row.case, name, *(_cell(metrics.get(m, math.nan)) for m in METRICS)])
    for stat in SUMMARY_STATS:
        for name, per_metric in summary.items():
            cells = [_cell(per_metric[m][stat]) if m in per_metric else "nan" for m in METRICS]
            writer.writerow([stat, name, *cells])
    write_text(out, buffer.getvalue())
    logger.info("wrote metrics report %s", out)
    return out
