"""The U-Net paper's border weight map: heavier weights in the gaps between touching objects.

Computed per case on the label map (numpy, SimpleITK distance transforms) by the data pipeline;
:class:`volseg.losses.WeightedCrossEntropyLoss` multiplies the per-voxel cross-entropy by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Optional

import numpy as np

from volseg.errors import ConfigError, ShapeError, choice_error
from volseg.lazy import sitk  # SimpleITK, imported on first use

#: Instances farther than this many sigmas from a pixel are ignored (their term is < 3.4e-4 * w0).
_TRUNCATE_SIGMAS = 4.0


def instances_from_labels(labels: np.ndarray, *, fully_connected: bool = False) -> np.ndarray:
    """Object instances of a semantic label map (2D or 3D): connected components of each label > 0.

    Returns int32 of the same shape, 0 for background and 1..K for the instances (objects of
    different labels are different instances even where they touch). ``fully_connected`` also
    joins diagonal neighbours. Uses SimpleITK's ConnectedComponent.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ShapeError(f"labels of shape {labels.shape} are not valid; expected a 2D or 3D label map")
    instances = np.zeros(labels.shape, dtype=np.int32)
    offset = 0
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = sitk.GetImageFromArray((labels == value).astype(np.uint8))
        components = sitk.GetArrayFromImage(sitk.ConnectedComponent(mask, fully_connected)).astype(np.int32)
        inside = components > 0
        instances[inside] = components[inside] + offset
        offset += int(components.max())
    return instances


def border_weight_map(
    instance_labels: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Optional[Literal["balanced"]] = "balanced",
    labels: Optional[np.ndarray] = None,
    spacing: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """The U-Net paper's weight map ``w(x) = w_c(x) + w0 exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``.

    instance_labels: (H, W) or (D, H, W) integers, 0 background, one id per object (see
    :func:`instances_from_labels`). d1, d2: Euclidean distances (SimpleITK's exact Maurer
    transform, in ``spacing`` units per numpy axis, default 1) to the nearest and second-nearest
    instance; the exp term is added on background pixels only (the gaps between objects), and is 0
    with fewer than two instances or where the second-nearest instance is beyond 4 sigma.
    class_weights: "balanced" (w_c = count(background) / count(class), from ``labels`` or
    foreground vs background) or None (w_c = 1). Returns float32 of the same shape.
    """
    instances = np.asarray(instance_labels)
    if instances.ndim not in (2, 3):
        raise ShapeError(f"instance labels of shape {instances.shape} are not valid; expected 2D or 3D")
    if class_weights not in ("balanced", None):
        raise choice_error("class_weights", class_weights, ["balanced", "None"])
    if not w0 >= 0:
        raise ConfigError(f"w0={w0} is not valid; allowed: a number >= 0")
    if not sigma > 0:
        raise ConfigError(f"sigma={sigma} is not valid; allowed: a number > 0")
    spacing = [1.0] * instances.ndim if spacing is None else [float(s) for s in spacing]
    if len(spacing) != instances.ndim or min(spacing) <= 0:
        raise ConfigError(f"spacing={spacing} is not valid; give {instances.ndim} positive values")
    if labels is not None and np.shape(labels) != instances.shape:
        raise ShapeError(f"labels {np.shape(labels)} and instance labels {instances.shape} differ in shape")

    weights = np.ones(instances.shape, dtype=np.float32)
    if class_weights == "balanced":  # w_c = N / (K count_c), scaled so background (else the commonest class) is 1
        classes = np.asarray(labels) if labels is not None else (instances > 0).astype(np.uint8)
        values, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
        reference = counts[values == 0][0] if (values == 0).any() else counts.max()
        weights = (reference / counts).astype(np.float32)[inverse.reshape(classes.shape)]

    nearest, second = np.full(instances.shape, np.inf), np.full(instances.shape, np.inf)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.GetImageFromArray(instances.astype(np.int32)))
    margin = [math.ceil(_TRUNCATE_SIGMAS * sigma / s) for s in spacing]
    for instance in stats.GetLabels():
        box = stats.GetBoundingBox(instance)  # ITK order: x, y, (z) starts, then sizes
        starts, sizes = box[: instances.ndim][::-1], box[instances.ndim :][::-1]
        region = tuple(
            slice(max(start - m, 0), min(start + size + m, extent))
            for start, size, m, extent in zip(starts, sizes, margin, instances.shape)
        )
        mask = sitk.GetImageFromArray((instances[region] == instance).astype(np.uint8))
        mask.SetSpacing(spacing[::-1])
        distance = sitk.GetArrayFromImage(
            sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
        ).clip(min=0.0)
        d1, d2 = nearest[region], second[region]
        d2[...] = np.minimum(d2, np.maximum(d1, distance))
        d1[...] = np.minimum(d1, distance)

    background = instances == 0
    border = w0 * np.exp(-((nearest[background] + second[background]) ** 2) / (2.0 * sigma**2))
    weights[background] += border.astype(np.float32)
    return weights
