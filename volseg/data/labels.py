"""Label conventions as MONAI map transforms: dataset label values -> consecutive class indices,
and label values -> overlapping regions (BraTS WT/TC/ET). The numpy rules (and their inverses)
live in :mod:`volseg.data.label_space`; they are re-exported here."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from volseg.data.label_space import (
    class_indices,
    class_indices_to_labels,
    label_spec,
    labels_to_regions,
    region_masks,
    regions_to_labels,
)
from volseg.errors import ShapeError

__all__ = [
    "IMAGE",
    "LABEL",
    "LabelsToRegionsd",
    "MapLabelsd",
    "case_name",
    "class_indices_to_labels",
    "label_spec",
    "labels_to_regions",
    "regions_to_labels",
]

IMAGE, LABEL = "image", "label"


def case_name(d: Mapping[Hashable, Any]) -> str:
    """The case id of a data item, for messages."""
    return str(d.get("case_id") or d.get(IMAGE, "?"))


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
            raw = label.as_tensor() if isinstance(label, MetaTensor) else label
            out = class_indices(raw, self.values, f"case {case_name(d)}: ")
            d[key] = (
                MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations)
                if isinstance(label, MetaTensor)
                else out
            )
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
                raise ShapeError(
                    f"case {case_name(d)}: regions need a one-channel label, got shape {tuple(label.shape)}"
                )
            raw = label.as_tensor() if isinstance(label, MetaTensor) else torch.as_tensor(label)
            out = region_masks(raw[0], self.regions)
            d[key] = (
                MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations)
                if isinstance(label, MetaTensor)
                else out
            )
        return d
