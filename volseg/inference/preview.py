"""A PNG preview of a segmentation: orthogonal slices of the image with the labels on top.

The caller passes RAS-oriented arrays: axis 0 runs left -> right, axis 1 posterior ->
anterior, axis 2 inferior -> superior (e.g. ``nibabel.as_closest_canonical`` of the
volume). The panels are then labelled correctly and drawn in neurological convention
(the patient's left on the left of the picture):

==========  ==============  ============================  =========================
panel       fixed axis      horizontal (left -> right)    vertical (bottom -> top)
==========  ==============  ============================  =========================
axial       2 (I-S)         axis 0 (L -> R)               axis 1 (P -> A)
coronal     1 (P-A)         axis 0 (L -> R)               axis 2 (I -> S)
sagittal    0 (L-R)         axis 1 (P -> A)               axis 2 (I -> S)
==========  ==============  ============================  =========================

A 2D array gives one panel: axis 0 horizontal, axis 1 upwards. The slices pass through the
centre of mass of the largest connected structure (all non-zero labels together; the image
centre when there are none): see :func:`preview_slices`. Voxels are drawn with their true
shape for anisotropic spacing: see :func:`preview_aspects`.

Drawing uses matplotlib's Agg canvas on a private ``Figure``: pyplot and the global backend
are never touched, so this is safe in notebooks, threads and headless servers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from volseg.data.label_space import OKABE_ITO, label_colour  # noqa: F401 (OKABE_ITO: old import path)
from volseg.errors import ConfigError, OutputExistsError, ShapeError
from volseg.inference.postprocess import as_label_array, check_spacing, connected_components, to_numpy
from volseg.io.atomic import atomic_target

logger = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.45
MAX_LEGEND_ENTRIES = 24

# (name, fixed axis, horizontal axis, vertical axis, (left, right, bottom, top) letters)
_VIEWS_3D = (
    ("axial", 2, 0, 1, ("L", "R", "P", "A")),
    ("coronal", 1, 0, 2, ("L", "R", "I", "S")),
    ("sagittal", 0, 1, 2, ("P", "A", "I", "S")),
)


def preview_slices(labels: np.ndarray) -> tuple[int, ...]:
    """Voxel indices ``(i, j[, k])`` of the centre of mass of the largest connected
    structure of the non-zero voxels of ``labels`` ``(*S)`` (face connectivity), rounded
    half up; the centre ``S // 2`` when all voxels are 0."""
    array = as_label_array(labels)
    instances, sizes = connected_components(array)
    if not sizes:
        return tuple(int(n) // 2 for n in array.shape)
    centre = [float(np.mean(index)) for index in np.nonzero(instances == 1)]
    return tuple(int(np.floor(c + 0.5)) for c in centre)


def preview_aspects(spacing: Sequence[float]) -> tuple[float, ...]:
    """matplotlib ``imshow`` aspect (height / width of one voxel) per panel: axial,
    coronal, sagittal for 3D ``spacing`` (mm per axis), the one panel for 2D."""
    spacing = tuple(spacing)
    s = check_spacing(spacing, len(spacing))
    if len(s) == 2:
        return (s[1] / s[0],)
    if len(s) != 3:
        raise ShapeError(f"spacing needs 2 or 3 values, got {s}")
    return tuple(s[vertical] / s[horizontal] for _, _, horizontal, vertical, _ in _VIEWS_3D)


def _grey_window(image: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentiles of the finite voxels (a unit range if they are equal)."""
    values = image[np.isfinite(image)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    return (low, high) if high > low else (low, low + 1.0)


def _overlay(plane: np.ndarray) -> np.ndarray:
    """RGBA ``(*P, 4)`` float32 of a label plane ``(*P)``: label colours, 0 transparent."""
    rgba = np.zeros((*plane.shape, 4), np.float32)
    for value in np.unique(plane):
        if value != 0:
            rgba[plane == value] = (*label_colour(int(value)), OVERLAY_ALPHA)
    return rgba


def _planes(array: np.ndarray, centre: tuple[int, ...]) -> list[tuple[str, np.ndarray, tuple[str, ...] | None]]:
    """``(title, plane (rows = vertical axis, cols = horizontal axis), edge letters)``."""
    if array.ndim == 2:
        return [("", array.T, None)]
    planes = []
    for name, fixed, _horizontal, _vertical, letters in _VIEWS_3D:
        index = [slice(None)] * 3
        index[fixed] = centre[fixed]
        plane = array[tuple(index)]  # the two axes left keep their order: (horizontal, vertical)
        planes.append((f"{name} ({'ijk'[fixed]}={centre[fixed]})", plane.T, letters))
    return planes


def _prepare(image: Any, labels: Any, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, tuple]:
    label_array = as_label_array(labels)
    image_array = to_numpy(image)
    if image_array.ndim == label_array.ndim + 1:
        image_array = image_array[0]  # (C, *S): the first channel
    if image_array.shape != label_array.shape:
        raise ShapeError(
            f"image shape {tuple(to_numpy(image).shape)} does not match the label map "
            f"shape {label_array.shape}; expected (*S) or (C, *S)"
        )
    return image_array.astype(np.float32, copy=False), label_array, check_spacing(spacing, label_array.ndim)


def render_preview(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    spacing: Sequence[float],
    path: str | os.PathLike,
    label_names: Mapping[int, str] | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a PNG preview of ``labels`` ``(*S)`` over ``image`` ``(*S)`` or ``(C, *S)``
    (channel 0 is shown), both RAS-oriented (see the module docs), 2D or 3D.

    Three orthogonal panels (one for 2D) through :func:`preview_slices`; the image in grey
    windowed to its 1st-99th percentiles, labels as semi-transparent colours
    (:func:`label_colour`), a legend naming the labels visible in the panels
    (``label_names[v]``, else ``v``), voxels drawn to scale for ``spacing`` (mm per axis).
    Written atomically to ``path`` (must end in ``.png``); returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"a preview is a PNG file; '{out}' does not end in .png")
    if out.is_dir():
        raise OutputExistsError(f"cannot write '{out}': it is a folder")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"'{out}' exists; pass overwrite=True to replace it")
    image_array, label_array, spacing = _prepare(image, labels, spacing)
    centre = preview_slices(label_array)
    low, high = _grey_window(image_array)
    names = {int(k): str(v) for k, v in (label_names or {}).items()}

    image_planes, label_planes = _planes(image_array, centre), _planes(label_array, centre)
    figure = Figure(figsize=(4.2 * len(image_planes), 5.0), facecolor="black", layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(image_planes), squeeze=False)[0]
    visible: set[int] = set()
    for axis, aspect, (name, grey, letters), (_, plane, _) in zip(
        axes, preview_aspects(spacing), image_planes, label_planes
    ):
        axis.imshow(grey, cmap="gray", vmin=low, vmax=high, origin="lower", aspect=aspect, interpolation="nearest")
        axis.imshow(_overlay(plane), origin="lower", aspect=aspect, interpolation="nearest")
        visible.update(int(v) for v in np.unique(plane) if v != 0)
        axis.set_title(name, color="white", fontsize=10)
        axis.set_axis_off()
        if letters is not None:
            for text, x, y in zip(letters, (0.02, 0.98, 0.5, 0.5), (0.5, 0.5, 0.02, 0.98)):
                axis.text(x, y, text, transform=axis.transAxes, color="yellow", fontsize=9, ha="center", va="center")
    handles = [
        Patch(facecolor=label_colour(v), label=f"{v}: {names[v]}" if v in names else str(v))
        for v in sorted(visible)[:MAX_LEGEND_ENTRIES]
    ]
    if len(visible) > MAX_LEGEND_ENTRIES:
        handles.append(Patch(facecolor="none", label=f"+{len(visible) - MAX_LEGEND_ENTRIES} more"))
    if handles:
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 6),
            facecolor="black",
            edgecolor="grey",
            labelcolor="white",
            fontsize=9,
        )
    if title:
        figure.suptitle(title, color="white")
    with atomic_target(out) as temporary:
        figure.savefig(temporary, format="png", dpi=100, facecolor="black")
    logger.info("wrote preview %s (slices %s)", out, centre)
    return out
