"""Post-processing of label maps: connected components, small-blob removal, statistics.

A label map is an integer array ``(*S)``, 2D or 3D, with 0 as background (bool arrays and
float arrays holding whole numbers are accepted too). A *component* of label value ``v`` is
a connected set of voxels equal to ``v``: face neighbours by default (6 in 3D, 4 in 2D),
also edge and corner neighbours (26 / 8) with ``fully_connected=True``. Voxels of another
label never connect two blobs of ``v``.

On a region model (``regions``, e.g. BraTS WT = {1, 2, 4}, TC = {1, 4}, ET = {4}) the
component filters act on each region's mask instead, outer regions first, and the map is
rebuilt by :func:`volseg.data.labels.regions_to_labels`: a region nested in another only
keeps what lies in the outer one's kept part (dropping a WT blob drops the TC and ET inside
it; the largest TC is chosen inside the kept WT), and a dropped inner component takes the
label of the regions that still hold it (a small ET island in oedema becomes oedema, not a
hole in WT).

Every function returns a new array with the dtype and shape of its input and never changes
the input. The work is done by SimpleITK (``LabelShapeStatisticsImageFilter`` finds each
label's bounding box, ``ConnectedComponent`` + ``RelabelComponent`` label and sort its
blobs inside that box), so a 240x240x155 BraTS map takes a few tens of milliseconds.

:func:`label_statistics` is the instance view of a semantic map: per label its volume in mL,
number of components (e.g. lesions) and their volumes; :func:`format_statistics` prints it
as a table and :func:`write_statistics` saves it as JSON or CSV.
"""

from __future__ import annotations

import csv
import io as _stringio
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.errors import ConfigError, OutputExistsError, ShapeError
from volseg.io.atomic import write_text
from volseg.lazy import sitk  # SimpleITK, imported on first use

logger = logging.getLogger(__name__)

#: Keys of one :func:`label_statistics` entry, in CSV column order.
STATISTICS_KEYS = ("label", "name", "voxels", "volume_ml", "components", "largest_ml", "component_volumes_ml")
STATISTICS_SUFFIXES = (".json", ".csv")


# ----------------------------------------------------------------------------- helpers


def to_numpy(array: Any) -> np.ndarray:
    """A numpy array (a torch tensor is copied to the CPU)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def as_label_array(labels: Any, what: str = "label map") -> np.ndarray:
    """``labels`` as a 2D/3D integer numpy array (a view or copy; never written to)."""
    array = to_numpy(labels)
    if array.ndim not in (2, 3):
        raise ShapeError(f"a {what} must be 2D or 3D, got shape {tuple(array.shape)}")
    if array.dtype == bool:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating):
        integral = array.astype(np.int64)
        if not np.array_equal(integral, array):
            raise ConfigError(
                f"a {what} must hold whole numbers; got {array.dtype} values "
                "with fractions (probabilities? threshold or argmax them first)"
            )
        return integral
    raise ConfigError(f"a {what} must be an integer array, got dtype {array.dtype}")


def check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Voxel sizes in mm, one per axis (``None``: 1 mm)."""
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ShapeError(f"spacing {values} has {len(values)} values for a {ndim}D label map")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"spacing must be finite and positive (mm), got {values}")
    return values


def _voxel_ml(spacing: Sequence[float]) -> float:
    return float(np.prod(spacing)) / 1000.0


def _shape_filter(array: np.ndarray) -> sitk.LabelShapeStatisticsImageFilter:
    """Run SimpleITK's label shape statistics (counts, bounding boxes) on ``array``."""
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.ComputePerimeterOff()
    shapes.ComputeFeretDiameterOff()
    shapes.ComputeOrientedBoundingBoxOff()
    shapes.SetBackgroundValue(0)
    shapes.Execute(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    return shapes


def _box(shapes: sitk.LabelShapeStatisticsImageFilter, value: int, ndim: int) -> tuple[slice, ...]:
    """Numpy slices of ``value``'s bounding box (SimpleITK gives it in reversed axis order)."""
    bounds = shapes.GetBoundingBox(value)  # (start x, y[, z], size x, y[, z])
    return tuple(
        slice(bounds[ndim - 1 - axis], bounds[ndim - 1 - axis] + bounds[2 * ndim - 1 - axis]) for axis in range(ndim)
    )


def _sorted_components(mask: np.ndarray, fully_connected: bool) -> tuple[np.ndarray, list[int]]:
    """Instances ``(*S)`` uint32 of a mask, 1..n by size descending, and their sizes."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    relabel = sitk.RelabelComponentImageFilter()
    relabel.SortByObjectSizeOn()
    instances = relabel.Execute(sitk.ConnectedComponent(image, fully_connected))
    return sitk.GetArrayFromImage(instances), [int(n) for n in relabel.GetSizeOfObjectsInPixels()]


def _per_value(
    array: np.ndarray, values: Iterable[int] | None, fully_connected: bool
) -> Iterator[tuple[int, tuple[slice, ...], np.ndarray, list[int]]]:
    """For each non-zero value present (of ``values``, default all): ``(value, box,
    instances, sizes)``; ``instances`` covers ``array[box]``, 0 where another value is."""
    shapes = _shape_filter(array)
    present = [int(v) for v in shapes.GetLabels()]
    wanted = present if values is None else sorted({int(v) for v in values} & set(present))
    for value in wanted:
        box = _box(shapes, value, array.ndim)
        instances, sizes = _sorted_components(array[box] == value, fully_connected)
        yield value, box, instances, sizes


def _check_values(label_values: Iterable[int] | None) -> list[int] | None:
    if label_values is None:
        return None
    if isinstance(label_values, (int, np.integer)):
        label_values = [label_values]
    values = [int(v) for v in label_values]
    if 0 in values:
        raise ConfigError("label_values may not contain 0 (background has no components)")
    return values


def present_labels(labels: np.ndarray) -> list[int]:
    """The non-zero values in ``labels`` ``(*S)``, ascending."""
    return sorted(int(v) for v in _shape_filter(as_label_array(labels)).GetLabels())


# ----------------------------------------------------------------------------- components


def connected_components(mask: np.ndarray, *, fully_connected: bool = False) -> tuple[np.ndarray, list[int]]:
    """Connected components of the non-zero voxels of ``mask`` ``(*S)`` (2D or 3D).

    Returns ``(instances, sizes)``: ``instances`` ``(*S)`` int32 with 0 for background and
    1..n by size descending (ties in raster order), ``sizes[i]`` the voxel count of
    instance ``i + 1``. Different non-zero values count as one foreground here.
    """
    array = as_label_array(mask, "mask")
    instances, sizes = _sorted_components(array != 0, fully_connected)
    return instances.astype(np.int32, copy=False), sizes


#: How many of a mask's components, sorted by size descending, stay: ``keep(sizes) -> count``.
KeepCount = Callable[[list[int]], int]


def _filter_components(
    labels: Any,
    keep: KeepCount,
    label_values: Iterable[int] | None,
    regions: Mapping[str, Sequence[int]] | None,
    fully_connected: bool,
) -> np.ndarray:
    """Drop the components ``keep`` does not keep, per label value or per region; ``(*S)`` -> ``(*S)``."""
    original = to_numpy(labels)
    array = as_label_array(original)
    if regions is not None:
        if label_values is not None:
            raise ConfigError(
                f"give label_values or regions, not both; got label_values={label_values!r}, regions={dict(regions)!r}"
            )
        return _filter_regions(original, array, keep, regions, fully_connected)
    out = original.copy()
    for value, box, instances, sizes in _per_value(array, _check_values(label_values), fully_connected):
        kept = keep(sizes)
        if kept < len(sizes):
            out[box][instances > kept] = 0
            logger.debug("label %d: kept %d of %d components", value, kept, len(sizes))
    return out


def _filter_regions(
    original: np.ndarray,
    array: np.ndarray,
    keep: KeepCount,
    regions: Mapping[str, Sequence[int]],
    fully_connected: bool,
) -> np.ndarray:
    """:func:`_filter_components` on each region's mask ``(R, *S)``, outer regions first: a
    region inside another (its label set a strict subset) is first cut to what the outer one
    kept, so e.g. the largest TC is chosen inside the kept WT."""
    from volseg.data.labels import labels_to_regions, regions_to_labels  # MONAI-heavy: only for region models

    masks = labels_to_regions(array, regions)
    before = masks.copy()
    names = list(regions)
    sets = [set(int(v) for v in values) for values in regions.values()]
    for r in sorted(range(len(sets)), key=lambda r: -len(sets[r])):  # a strict superset comes first
        for outer in range(len(sets)):
            if sets[r] < sets[outer]:
                masks[r] &= masks[outer]
        instances, sizes = _sorted_components(masks[r], fully_connected)
        kept = keep(sizes)
        if kept < len(sizes):
            masks[r] &= instances <= kept
            logger.debug("region %s: kept %d of %d components", names[r], kept, len(sizes))
    changed = (masks != before).any(axis=0)
    out = original.copy()
    if changed.any():
        out[changed] = regions_to_labels(masks[:, changed], regions)
    return out


def keep_largest_component(
    labels: np.ndarray,
    *,
    label_values: Iterable[int] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    fully_connected: bool = False,
) -> np.ndarray:
    """Per label value (``label_values``, default all non-zero), keep only its largest
    connected component; the other voxels of that value become 0. ``(*S)`` -> ``(*S)``,
    same dtype. Of equal-sized largest components the first in raster order stays.
    With ``regions`` (name -> label values), per region instead (see the module notes)."""
    return _filter_components(labels, lambda sizes: min(len(sizes), 1), label_values, regions, fully_connected)


def remove_small_components(
    labels: np.ndarray,
    *,
    min_size_voxels: int | None = None,
    min_size_ml: float | None = None,
    spacing: Sequence[float] | None = None,
    label_values: Iterable[int] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    fully_connected: bool = False,
) -> np.ndarray:
    """Per label value (``label_values``, default all non-zero), set to 0 its connected
    components smaller than ``min_size_voxels`` voxels or ``min_size_ml`` mL (give exactly
    one; a component of exactly the minimum stays). ``spacing``: voxel size in mm per axis
    (default 1 mm). ``(*S)`` -> ``(*S)``, same dtype. With ``regions`` (name -> label
    values), per region instead (see the module notes)."""
    array = as_label_array(to_numpy(labels))
    voxel_ml = _voxel_ml(check_spacing(spacing, array.ndim))
    if (min_size_voxels is None) == (min_size_ml is None):
        raise ConfigError(
            "give exactly one of min_size_voxels and min_size_ml, got "
            f"min_size_voxels={min_size_voxels!r}, min_size_ml={min_size_ml!r}"
        )
    if min_size_voxels is not None:
        if isinstance(min_size_voxels, bool) or not float(min_size_voxels) >= 0:
            raise ConfigError(f"min_size_voxels must be a count >= 0, got {min_size_voxels!r}")
        min_voxels = float(min_size_voxels)
    else:
        if isinstance(min_size_ml, bool) or not (math.isfinite(float(min_size_ml)) and float(min_size_ml) >= 0):
            raise ConfigError(f"min_size_ml must be a finite volume >= 0 (mL), got {min_size_ml!r}")
        # a relative tolerance: 10 voxels of 3 mm^3 are 0.03 mL, not 0.030000000000000002
        min_voxels = float(min_size_ml) / voxel_ml * (1 - 1e-9)

    def keep(sizes: list[int]) -> int:  # sizes are sorted descending
        return sum(1 for size in sizes if size >= min_voxels)

    return _filter_components(labels, keep, label_values, regions, fully_connected)


# ----------------------------------------------------------------------------- statistics


def label_volumes(labels: np.ndarray, spacing: Sequence[float], names: Mapping[int, str]) -> dict[str, float]:
    """Name -> volume in mL of each label value in ``names`` (0 where absent) in ``labels`` ``(*S)``,
    ``spacing`` in mm per axis: the run report's per-case volumes (no component analysis)."""
    array = as_label_array(labels)
    voxel_ml = _voxel_ml(check_spacing(spacing, array.ndim))
    counts = np.bincount(array.ravel().astype(np.int64, copy=False), minlength=max(names, default=0) + 1)
    return {name: round(float(counts[value]) * voxel_ml, 4) for value, name in names.items()}


def label_statistics(
    labels: np.ndarray,
    *,
    spacing: Sequence[float],
    label_names: Mapping[int, str] | None = None,
    fully_connected: bool = False,
) -> list[dict[str, Any]]:
    """Per non-zero label value present in ``labels`` ``(*S)`` and per value named in
    ``label_names`` (absent ones with zeros; a name for 0, the background, is ignored), in
    ascending order, a dict with :data:`STATISTICS_KEYS`:

    ``label`` (int), ``name`` (``label_names[label]``, else ``str(label)``), ``voxels``,
    ``volume_ml`` (voxels x voxel volume / 1000), ``components`` (count of connected
    components, e.g. lesions), ``component_volumes_ml`` (descending), ``largest_ml``.
    ``spacing``: voxel size in mm per axis.
    """
    array = as_label_array(labels)
    voxel_ml = _voxel_ml(check_spacing(spacing, array.ndim))
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    found = {value: sizes for value, _, _, sizes in _per_value(array, None, fully_connected)}
    stats = []
    for value in sorted(set(found) | (set(names) - {0})):
        sizes = found.get(value, [])
        volumes = [size * voxel_ml for size in sizes]
        stats.append(
            {
                "label": value,
                "name": names.get(value, str(value)),
                "voxels": int(sum(sizes)),
                "volume_ml": float(sum(sizes) * voxel_ml),
                "components": len(sizes),
                "largest_ml": volumes[0] if volumes else 0.0,
                "component_volumes_ml": volumes,
            }
        )
    return stats


def format_statistics(stats: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of :func:`label_statistics`: label, name, volume (mL, 2 decimals),
    components, largest component (mL); columns aligned, no trailing newline."""
    header = ("label", "name", "volume_ml", "components", "largest_ml")
    rows = [
        (str(s["label"]), str(s["name"]), f"{s['volume_ml']:.2f}", str(s["components"]), f"{s['largest_ml']:.2f}")
        for s in stats
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    left = {1}  # the name is left-aligned, numbers right-aligned

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    lines = [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
    if not rows:
        lines.append("(no labels)")
    return "\n".join(lines)


def _statistics_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in STATISTICS_SUFFIXES:
        raise ConfigError(
            f"cannot write statistics to '{path}': unknown extension {suffix!r}; "
            f"allowed: {', '.join(STATISTICS_SUFFIXES)}"
        )
    return suffix


def write_statistics(
    stats: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write :func:`label_statistics` atomically as ``.json`` (a list of objects) or ``.csv``
    (columns :data:`STATISTICS_KEYS`; ``component_volumes_ml`` as ``;``-separated numbers).
    Floats are written exactly (``repr``). Returns the path."""
    out = Path(path)
    suffix = _statistics_suffix(out)
    if out.is_dir():
        raise OutputExistsError(f"cannot write '{out}': it is a folder")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"'{out}' exists; pass overwrite=True to replace it")
    rows = [{key: entry[key] for key in STATISTICS_KEYS} for entry in stats]
    if suffix == ".json":  # keys beyond STATISTICS_KEYS (e.g. input_nonfinite) are kept in JSON
        rows = [{**row, **{k: v for k, v in entry.items() if k not in row}} for row, entry in zip(rows, stats)]
        text = json.dumps(rows, indent=2) + "\n"
    else:
        buffer = _stringio.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(STATISTICS_KEYS)
        for row in rows:
            volumes = ";".join(repr(float(v)) for v in row["component_volumes_ml"])
            writer.writerow(
                [
                    int(row["label"]),
                    row["name"],
                    int(row["voxels"]),
                    repr(float(row["volume_ml"])),
                    int(row["components"]),
                    repr(float(row["largest_ml"])),
                    volumes,
                ]
            )
        text = buffer.getvalue()
    write_text(out, text)
    logger.info("wrote label statistics %s", out)
    return out


def read_statistics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a file of :func:`write_statistics` back into :func:`label_statistics` form."""
    source = Path(path)
    suffix = _statistics_suffix(source)
    text = source.read_text()
    if suffix == ".json":
        return [dict(row) for row in json.loads(text)]
    stats = []
    for row in csv.DictReader(_stringio.StringIO(text)):
        volumes = row["component_volumes_ml"]
        stats.append(
            {
                "label": int(row["label"]),
                "name": row["name"],
                "voxels": int(row["voxels"]),
                "volume_ml": float(row["volume_ml"]),
                "components": int(row["components"]),
                "largest_ml": float(row["largest_ml"]),
                "component_volumes_ml": [float(v) for v in volumes.split(";")] if volumes else [],
            }
        )
    return stats
