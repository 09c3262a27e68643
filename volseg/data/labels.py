"""Label conventions: dataset label values <-> consecutive class indices, and overlapping
regions (BraTS WT/TC/ET) <-> label values, as MONAI map transforms and numpy functions."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from volseg.errors import ConfigError, InputFileError, ShapeError

IMAGE, LABEL = "image", "label"
_MAX_REGIONS = 16  # regions_to_labels builds a 2**R lookup table


def case_name(d: Mapping[Hashable, Any]) -> str:
    """The case id of a data item, for messages."""
    return str(d.get("case_id") or d.get(IMAGE, "?"))


def _format(values: Iterable[float]) -> str:
    return ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in values)


class MapLabelsd(MapTransform):
    """Map raw label values to class indices ``0..K-1`` (``values`` sorted): ``(1, *S)`` -> ``(1, *S)`` uint8/int32.

    A voxel value not in ``values`` raises :class:`InputFileError` naming the case and the values.
    """

    def __init__(self, keys: str | Sequence[str], values: Sequence[float]) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.values = sorted(float(v) for v in values)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = torch.as_tensor(d[key])
            table = torch.tensor(self.values, dtype=torch.float64)
            raw = label.as_tensor() if isinstance(label, MetaTensor) else label
            raw = raw.to(torch.float64)
            index = torch.bucketize(raw, table).clamp_(max=len(self.values) - 1)
            unknown = table[index] != raw
            if bool(unknown.any()):
                bad = torch.unique(raw[unknown]).tolist()
                raise InputFileError(f"case {case_name(d)}: label values {_format(bad[:10])} are not in data.labels "
                                     f"(allowed: {_format(self.values)})")
            out = index.to(torch.uint8 if len(self.values) <= 256 else torch.int32)
            d[key] = MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations) \
                if isinstance(label, MetaTensor) else out
        return d


class LabelsToRegionsd(MapTransform):
    """One binary channel per region: ``(1, *S)`` label values -> ``(R, *S)`` uint8 (channel r: value in region r)."""

    def __init__(self, keys: str | Sequence[str], regions: Mapping[str, Sequence[int]]) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.regions = {str(name): [int(v) for v in values] for name, values in regions.items()}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if label.shape[0] != 1:
                raise ShapeError(f"case {case_name(d)}: regions need a one-channel label, "
                                 f"got shape {tuple(label.shape)}")
            raw = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
            raw = raw[0]
            if raw.is_floating_point() or raw.numel() == 0 or int(raw.min()) < 0:
                out = torch.stack([torch.isin(raw, torch.tensor(v, dtype=raw.dtype, device=raw.device))
                                   for v in self.regions.values()]).to(torch.uint8)
            else:  # class indices: one table lookup, several times faster than torch.isin on CPU
                top = max([int(raw.max())] + [v for values in self.regions.values() for v in values])
                table = torch.zeros((len(self.regions), top + 1), dtype=torch.uint8, device=raw.device)
                for row, values in zip(table, self.regions.values()):
                    row[[v for v in values if v >= 0]] = 1
                out = table[:, raw.long()]
            d[key] = MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations) \
                if isinstance(label, MetaTensor) else out
        return d


def _compact_dtype(values: Sequence[int]) -> np.dtype:
    return np.promote_types(np.min_scalar_type(min(values)), np.min_scalar_type(max(values)))


def class_indices_to_labels(array: np.ndarray, labels: Mapping[int, str] | Sequence[int]) -> np.ndarray:
    """Class indices ``0..K-1`` (any shape) -> the label values of ``labels`` (sorted), smallest integer dtype."""
    values = sorted(int(v) for v in labels)
    array = np.asarray(array)
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= len(values)):
        found = f"values {array.min()}..{array.max()} ({array.dtype})"
        raise ShapeError(f"class indices must be integers 0..{len(values) - 1} for labels {_format(values)}; "
                         f"got {found}")
    return np.asarray(values, dtype=_compact_dtype(values))[array]


def _region_table(regions: Mapping[str, Sequence[int]], background: int) -> np.ndarray:
    """Lookup table: region-membership code (bit r = region r) -> label value."""
    sets = [set(int(v) for v in values) for values in regions.values()]
    if not 0 < len(sets) <= _MAX_REGIONS:
        raise ConfigError(f"data.regions needs 1 to {_MAX_REGIONS} regions, got {len(sets)}")
    values = sorted(set().union(*sets))
    pattern = {v: sum(1 << r for r, s in enumerate(sets) if v in s) for v in values}
    exact: dict[int, int] = {}
    for v in values:  # ascending, so the smallest value wins a pattern shared by several values
        exact.setdefault(pattern[v], v)
    # The value painted by a region: its member in the fewest regions (BraTS: WT -> 2, TC -> 1, ET -> 4).
    paint = [min(s, key=lambda v: (bin(pattern[v]).count("1"), v)) if s else background for s in sets]
    table = np.full(1 << len(sets), background, dtype=_compact_dtype([background, *values]))
    for code in range(1, 1 << len(sets)):
        if code in exact:
            table[code] = exact[code]
        else:  # no value has this pattern: the smallest active region wins (later one on ties)
            active = [r for r in range(len(sets)) if code >> r & 1]
            table[code] = paint[min(active, key=lambda r: (len(sets[r]), -r))]
    return table


def regions_to_labels(binary_regions: np.ndarray, regions: Mapping[str, Sequence[int]], *,
                      background: int = 0) -> np.ndarray:
    """Region masks ``(R, *S)`` (bool, 0/1 or probabilities, > 0.5 is in) -> label values ``(*S)``.

    Each voxel gets the label whose region-membership pattern it has; a pattern no label has
    (e.g. ET outside TC) goes to the smallest active region's own label. Inverse of :class:`LabelsToRegionsd`.
    """
    masks = np.asarray(binary_regions)
    if masks.ndim < 2 or masks.shape[0] != len(regions):
        raise ShapeError(f"region masks need shape (R, *S) with R = {len(regions)} ({', '.join(regions)}), "
                         f"got {masks.shape}")
    masks = masks if masks.dtype == bool else masks > 0.5
    table = _region_table(regions, background)
    code = np.zeros(masks.shape[1:], dtype=np.int32)
    for r in range(masks.shape[0]):
        code |= masks[r].astype(np.int32) << r
    return table[code]


def labels_to_regions(labels: np.ndarray, regions: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Label values ``(*S)`` -> region masks ``(R, *S)`` bool, by :class:`LabelsToRegionsd`'s rule;
    :func:`regions_to_labels` is the inverse."""
    raw = torch.from_numpy(np.asarray(labels, dtype=np.int64))[None]
    return LabelsToRegionsd(LABEL, regions)({LABEL: raw})[LABEL].numpy().astype(bool)


def label_spec(labels: Mapping[int, str] | None, regions: Mapping[str, Sequence[int]] | None
                ) -> tuple[list[int] | None, dict[str, list[int]] | None]:
    """Sorted raw label values (None: keep raw values) and the regions as class indices."""
    if labels is not None and not labels:
        raise ConfigError("data.labels is empty; give label value -> name, e.g. {0: background, 1: tumour}")
    if regions is None:
        return (sorted(int(v) for v in labels) if labels is not None else None), None
    if not regions:
        raise ConfigError("data.regions is empty; give name -> label values, or null for one class per label")
    union = sorted({int(v) for values in regions.values() for v in values})
    values = sorted(int(v) for v in labels) if labels is not None else sorted({0, *union})
    for name, members in regions.items():
        missing = [v for v in members if v not in values]
        if not members or 0 in members or missing:
            problem = "is empty" if not members else "contains 0 (background)" if 0 in members else \
                f"has values {_format(missing)} that data.labels does not list"
            raise ConfigError(f"data.regions[{name!r}]={list(members)} {problem}; allowed values: "
                              f"{_format(v for v in values if v != 0)}")
    index = {v: i for i, v in enumerate(values)}
    return values, {str(name): [index[int(v)] for v in members] for name, members in regions.items()}
