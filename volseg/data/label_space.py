"""What the network's outputs mean, in one place: :class:`LabelSpace`.

A model predicts either one softmax channel per label value (``labels``) or one sigmoid channel
per overlapping region (``regions``, e.g. BraTS WT/TC/ET, name -> label values). The label space
knows the activation, the number of outputs and their names, how label maps are encoded as
training targets and how outputs are decoded into label maps, the metric structures, the BraTS
label conventions (enhancing tumour 4 in 2018-2021, 3 in 2023+) and the preview colours. It is
built once from the config (:meth:`LabelSpace.from_config`) and stored in the checkpoint.

The rules (label values <-> class indices, label values <-> region masks, the config check) live
here; :mod:`volseg.data.labels` wraps them as MONAI transforms and re-exports them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from volseg.errors import ConfigError, InputFileError, ShapeError

if TYPE_CHECKING:
    from volseg.config import Config

logger = logging.getLogger(__name__)

_MAX_REGIONS = 16  # regions_to_labels builds a 2**R lookup table

BRATS_REGIONS_2021: dict[str, list[int]] = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
BRATS_REGIONS_2023: dict[str, list[int]] = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
#: The regions of each BraTS label convention.
BRATS_REGIONS: dict[str, dict[str, list[int]]] = {"brats2021": BRATS_REGIONS_2021, "brats2023": BRATS_REGIONS_2023}
#: The enhancing-tumour value of each BraTS label convention.
BRATS_ENHANCING = {"brats2021": 4, "brats2023": 3}

#: Okabe & Ito's colour-blind-safe colours (without black); label ``v`` gets
#: ``PALETTE[(v - 1) % len(PALETTE)]``; past them, matplotlib's tab20 continues the cycle.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
#: The "tab20" categorical palette (as matplotlib defines it), after the colour-blind-safe seven.
TAB20 = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd", "#c5b0d5",
    "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)  # fmt: skip


def _format(values: Iterable[float]) -> str:
    return ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in values)


def _compact_dtype(values: Sequence[int]) -> np.dtype:
    return np.promote_types(np.min_scalar_type(min(values)), np.min_scalar_type(max(values)))


def class_indices_to_labels(array: np.ndarray, labels: Mapping[int, str] | Sequence[int]) -> np.ndarray:
    """Class indices ``0..K-1`` (any shape) -> the label values of ``labels`` (sorted), smallest integer dtype."""
    values = sorted(int(v) for v in labels)
    array = np.asarray(array)
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= len(values)):
        found = f"values {array.min()}..{array.max()} ({array.dtype})"
        raise ShapeError(
            f"class indices must be integers 0..{len(values) - 1} for labels {_format(values)}; got {found}"
        )
    return np.asarray(values, dtype=_compact_dtype(values))[array]


def class_indices(raw: torch.Tensor, values: Sequence[float], where: str = "") -> torch.Tensor:
    """Label values (any shape) -> class indices ``0..K-1`` of ``values`` (sorted), uint8 (int32 past 256).

    A value not in ``values`` raises :class:`InputFileError` (``where`` prefixes the message)."""
    values = sorted(float(v) for v in values)
    table = torch.tensor(values, dtype=torch.float64)
    raw = torch.as_tensor(raw).to(torch.float64)
    index = torch.bucketize(raw, table).clamp_(max=len(values) - 1)
    unknown = table[index] != raw
    if bool(unknown.any()):
        bad = torch.unique(raw[unknown]).tolist()
        raise InputFileError(
            f"{where}label values {_format(bad[:10])} are not in data.labels (allowed: {_format(values)})"
        )
    return index.to(torch.uint8 if len(values) <= 256 else torch.int32)


def region_masks(raw: torch.Tensor, regions: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """Label values ``(*S)`` -> region masks ``(R, *S)`` uint8 (channel r: value in region r)."""
    raw = torch.as_tensor(raw)
    if raw.is_floating_point() or raw.numel() == 0 or int(raw.min()) < 0:
        return torch.stack(
            [torch.isin(raw, torch.tensor(list(v), dtype=raw.dtype, device=raw.device)) for v in regions.values()]
        ).to(torch.uint8)
    # class indices / non-negative values: one table lookup, several times faster than torch.isin on CPU
    top = max([int(raw.max())] + [int(v) for values in regions.values() for v in values])
    table = torch.zeros((len(regions), top + 1), dtype=torch.uint8, device=raw.device)
    for row, values in zip(table, regions.values()):
        row[[int(v) for v in values if v >= 0]] = 1
    return table[:, raw.long()]


def labels_to_regions(labels: np.ndarray, regions: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Label values ``(*S)`` -> region masks ``(R, *S)`` bool (:func:`region_masks`);
    :func:`regions_to_labels` is the inverse."""
    return region_masks(torch.from_numpy(np.asarray(labels, dtype=np.int64)), regions).numpy().astype(bool)


def _region_table(regions: Mapping[str, Sequence[int]], background: int) -> np.ndarray:
    """Lookup table ``(2**R,)``: region-membership code (bit r = region r) -> label value."""
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


def regions_to_labels(
    binary_regions: np.ndarray, regions: Mapping[str, Sequence[int]], *, background: int = 0
) -> np.ndarray:
    """Region masks ``(R, *S)`` (bool, 0/1 or probabilities, > 0.5 is in) -> label values ``(*S)``.

    Each voxel gets the label whose region-membership pattern it has; a pattern no label has
    (e.g. ET outside TC) goes to the smallest active region's own label. Inverse of
    :func:`labels_to_regions`.
    """
    masks = np.asarray(binary_regions)
    if masks.ndim < 2 or masks.shape[0] != len(regions):
        raise ShapeError(
            f"region masks need shape (R, *S) with R = {len(regions)} ({', '.join(regions)}), got {masks.shape}"
        )
    masks = masks if masks.dtype == bool else masks > 0.5
    table = _region_table(regions, background)
    code = np.zeros(masks.shape[1:], dtype=np.uint8 if masks.shape[0] <= 8 else np.int32)
    for r in range(masks.shape[0]):
        code |= masks[r].astype(code.dtype, copy=False) << r
    return np.take(table, code)


def label_spec(
    labels: Mapping[int, str] | None, regions: Mapping[str, Sequence[int]] | None
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
            problem = (
                "is empty"
                if not members
                else "contains 0 (background)"
                if 0 in members
                else f"has values {_format(missing)} that data.labels does not list"
            )
            raise ConfigError(
                f"data.regions[{name!r}]={list(members)} {problem}; allowed values: "
                f"{_format(v for v in values if v != 0)}"
            )
    index = {v: i for i, v in enumerate(values)}
    return values, {str(name): [index[int(v)] for v in members] for name, members in regions.items()}


def brats_regions(label_values: Iterable[int]) -> dict[str, list[int]]:
    """BraTS regions (WT, TC, ET) for the label convention seen in ``label_values``:
    4 present -> :data:`BRATS_REGIONS_2021`, else 3 present -> :data:`BRATS_REGIONS_2023`,
    else (neither, ambiguous) 2021."""
    values = {int(v) for v in label_values}
    if 3 in values and 4 in values:
        logger.warning(
            "label values %s hold both 3 and 4; using the BraTS 2021 regions (enhancing tumour = 4)", sorted(values)
        )
    chosen = BRATS_REGIONS_2023 if 3 in values and 4 not in values else BRATS_REGIONS_2021
    return {name: list(vals) for name, vals in chosen.items()}


def label_colour(value: int) -> tuple[float, float, float]:
    """The RGB colour (0..1) of label ``value`` in previews and colour tables (a fixed cycle of
    :data:`OKABE_ITO` then :data:`TAB20`; 0 has none)."""
    palette = OKABE_ITO + TAB20
    code = palette[(int(value) - 1) % len(palette)]
    return tuple(int(code[i : i + 2], 16) / 255.0 for i in (1, 3, 5))


@dataclass(frozen=True)
class LabelSpace:
    """Label values -> names, and optionally overlapping regions (name -> label values).

    Without ``regions``: one softmax output per label value (sorted). With ``regions``: one
    sigmoid output per region, written back as the label values (:func:`regions_to_labels`).
    """

    labels: dict[int, str]
    regions: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", {int(v): str(n) for v, n in sorted(self.labels.items())})
        if self.regions is not None:
            regions = {str(k): [int(v) for v in values] for k, values in self.regions.items()}
            object.__setattr__(self, "regions", regions or None)

    @classmethod
    def from_config(cls, config: Config) -> LabelSpace:
        """The label space of a run config (``data.labels``, ``data.regions``)."""
        return cls(dict(config.data.labels), dict(config.data.regions) if config.data.regions else None)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (string keys) for a checkpoint or JSON; :meth:`from_dict` reads it back."""
        return {
            "labels": {str(v): n for v, n in self.labels.items()},
            "regions": {k: list(v) for k, v in self.regions.items()} if self.regions else None,
            "activation": self.activation,
            "num_outputs": self.num_outputs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSpace:
        return cls({int(v): n for v, n in data["labels"].items()}, data.get("regions") or None)

    def check(self) -> None:
        """Raise :class:`ConfigError` where labels and regions do not fit together."""
        label_spec(self.labels, self.regions)

    # ------------------------------------------------------------------ outputs
    @property
    def values(self) -> list[int]:
        """The label values, sorted (softmax output k is ``values[k]``)."""
        return list(self.labels)

    @property
    def foreground_values(self) -> list[int]:
        return [v for v in self.labels if v != 0]

    @property
    def label_names(self) -> dict[int, str]:
        """Foreground label value -> name (what a label map holds)."""
        return {v: n for v, n in self.labels.items() if v != 0}

    @property
    def activation(self) -> str:
        return "sigmoid" if self.regions else "softmax"

    @property
    def num_outputs(self) -> int:
        """Network outputs: one per region (sigmoid) or one per label (softmax)."""
        return len(self.regions) if self.regions else len(self.labels)

    @property
    def output_names(self) -> list[str]:
        return list(self.regions) if self.regions else list(self.labels.values())

    @property
    def class_regions(self) -> dict[str, list[int]] | None:
        """The regions as class indices (positions in :attr:`values`), as training targets use them."""
        return label_spec(self.labels, self.regions)[1]

    def activate(self, logits: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Logits ``(K, *S)`` (outputs along ``dim``) -> probabilities: sigmoid per region or softmax."""
        return torch.sigmoid(logits) if self.regions else torch.softmax(logits, dim=dim)

    def masks_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K, *S)`` -> binary masks ``(N, K, *S)`` float: each region's probability
        > 0.5 (logit > 0), or the one-hot argmax over the classes."""
        if self.regions:
            return (logits > 0).float()
        return torch.nn.functional.one_hot(logits.argmax(dim=1), logits.shape[1]).movedim(-1, 1).float()

    def target_masks(self, target: torch.Tensor) -> torch.Tensor:
        """Training targets -> binary masks ``(N, K, *S)`` float: region masks ``(N, R, *S)`` as
        they are, class indices ``(N, 1, *S)`` one-hot over :attr:`num_outputs` classes."""
        if self.regions:
            return (target > 0.5).float()
        return torch.nn.functional.one_hot(target[:, 0].long(), self.num_outputs).movedim(-1, 1).float()

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """A label map ``(*S)`` of label values from region masks or probabilities ``(R, *S)``,
        class probabilities ``(K, *S)`` (floating point: argmax) or class indices ``(*S)`` (integer)."""
        outputs = np.asarray(outputs)
        if self.regions:
            return regions_to_labels(outputs, self.regions)
        if np.issubdtype(outputs.dtype, np.floating):
            outputs = outputs.argmax(axis=0)
        return class_indices_to_labels(outputs, self.values)

    def encode(self, label_map: np.ndarray) -> np.ndarray:
        """Training targets from a label map ``(*S)``: region masks ``(R, *S)`` bool, or class
        indices ``(*S)`` (values not in :attr:`labels` raise :class:`InputFileError`)."""
        if self.regions:
            return labels_to_regions(label_map, self.regions)
        return class_indices(torch.from_numpy(np.asarray(label_map)), self.values).numpy()

    def region_lookup(self) -> list[int]:
        """Label value for each region-membership code 0 .. 2**R - 1 (bit r: region r present)."""
        if not self.regions:
            raise ConfigError("a label space without regions has no region lookup")
        return [int(v) for v in _region_table(self.regions, 0)]

    def structures(self) -> dict[str, list[int]]:
        """Named structures for metrics: the regions, or one per foreground label (its name)."""
        if self.regions:
            return {k: list(v) for k, v in self.regions.items()}
        return {name: [value] for value, name in self.label_names.items()}

    def colours(self) -> dict[int, tuple[float, float, float]]:
        """Foreground label value -> preview colour (RGB, 0..1)."""
        return {value: label_colour(value) for value in self.foreground_values}

    # ------------------------------------------------------------------ BraTS conventions
    def convention_map(self, convention: str | None) -> dict[int, int]:
        """The relabelling that writes a BraTS case in ``convention`` (``brats2021``: enhancing
        tumour 4, ``brats2023``: 3); empty when the labels already use it, or for other cases."""
        if convention not in BRATS_ENHANCING:
            return {}
        new = BRATS_ENHANCING[convention]
        old = BRATS_ENHANCING["brats2021" if convention == "brats2023" else "brats2023"]
        return {old: new} if old in self.labels and new not in self.labels else {}

    def to_convention(self, label_map: np.ndarray, convention: str | None) -> np.ndarray:
        """``label_map`` (*S) relabelled by :meth:`convention_map` (same dtype)."""
        for old, new in self.convention_map(convention).items():
            label_map = np.where(label_map == old, new, label_map).astype(label_map.dtype)
        return label_map

    def names_in(self, convention: str | None) -> dict[int, str]:
        """:attr:`label_names` with the values of ``convention``."""
        mapping = self.convention_map(convention)
        return {mapping.get(value, value): name for value, name in self.label_names.items()}
