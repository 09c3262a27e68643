"""Training patches: sampling (``SamplingConfig``) and augmentation (``AugmentationConfig``).

:func:`patch_sampler` crops one patch, centred on foreground with probability ``foreground_ratio``.
:func:`augmentation_transforms` returns MONAI dictionary transforms for patches that are already
sampled: image ``(C, *S)`` float, label ``(L, *S)`` (class indices or region masks). Each
augmentation is added only when its ``prob > 0``. Spatial ones move image and label together
(bilinear image, nearest label, zero padding) so labels stay integral.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.networks.layers import GaussianFilter
from monai.transforms import (
    MapTransform,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandRotate90d,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
    RandSpatialCropd,
    Resample,
    Transform,
)
from monai.transforms.utils import create_grid
from monai.utils import ensure_tuple_rep

from volseg.config import AugmentationConfig, SamplingConfig
from volseg.errors import ConfigError

__all__ = ["RandElastic2Dd", "augmentation_transforms", "patch_sampler"]


class RandElastic2Dd(RandomizableTransform, MapTransform):
    """Elastic deformation of 2D patches ``(C, H, W)``, as :class:`monai.transforms.Rand3DElasticd` in 3D.

    A displacement field drawn uniformly from ``[-1, 1]`` per pixel and axis is smoothed by a
    Gaussian of a random ``sigma`` (pixels) and scaled by a random ``magnitude``; every key is
    resampled through it with its own mode. (MONAI's ``Rand2DElasticd`` deforms a coarse control
    grid instead, whose parameters do not match the 3D ``sigma``/``magnitude`` of the config.)
    """

    def __init__(
        self,
        keys: KeysCollection,
        sigma_range: Sequence[float],
        magnitude_range: Sequence[float],
        prob: float = 0.1,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str = "zeros",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.magnitude_range = (float(magnitude_range[0]), float(magnitude_range[1]))
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = padding_mode
        self.resampler = Resample()
        self.offset: np.ndarray | None = None
        self.sigma = self.sigma_range[0]
        self.magnitude = self.magnitude_range[0]

    def randomize(self, spatial_size: Sequence[int]) -> None:  # type: ignore[override]
        super().randomize(None)
        if not self._do_transform:
            return
        self.offset = self.R.uniform(-1.0, 1.0, [2, *spatial_size]).astype(np.float32)
        self.sigma = float(self.R.uniform(*self.sigma_range))
        self.magnitude = float(self.R.uniform(*self.magnitude_range))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        size = tuple(d[first].shape[1:])
        if len(size) != 2:
            raise ConfigError(f"RandElastic2Dd needs (C, H, W) patches, got shape {tuple(d[first].shape)}")
        self.randomize(size)
        if not self._do_transform:
            return d
        device = d[first].device
        grid = create_grid(spatial_size=size, device=device, backend="torch")  # (3, H, W), pixel units
        offset = torch.as_tensor(self.offset, device=device)[None]
        grid[:2] += GaussianFilter(2, self.sigma, 3.0).to(device)(offset)[0] * self.magnitude
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.resampler(d[key], grid, mode=mode, padding_mode=self.padding_mode)
        return d


def patch_sampler(
    sampling: SamplingConfig, roi: Sequence[int], num_classes: int, *, keys: Sequence[str] = ("image", "label")
) -> Transform:
    """One patch of size ``roi`` from image and label (``keys``, label last; class indices ``0..num_classes-1``).

    With ``foreground_ratio`` r: pos/neg crop (centre on a foreground voxel with probability r, else on a
    background one), or with ``class_balanced`` the foreground classes equally often (background 1 - r);
    r == 0 (or no foreground class) samples uniformly. The patch sizes must fit (pad first).
    """
    keys, label, ratio, roi = list(keys), keys[-1], float(sampling.foreground_ratio), [int(r) for r in roi]
    if ratio <= 0 or num_classes < 2:
        return RandSpatialCropd(keys, roi_size=roi, random_size=False)
    if sampling.class_balanced:
        # 1e-6 keeps a case without any foreground samplable when foreground_ratio == 1.
        ratios = [max(1.0 - ratio, 1e-6)] + [ratio / (num_classes - 1)] * (num_classes - 1)
        return RandCropByLabelClassesd(
            keys, label_key=label, spatial_size=roi, ratios=ratios, num_classes=num_classes, num_samples=1, warn=False
        )
    return RandCropByPosNegLabeld(keys, label_key=label, spatial_size=roi, pos=ratio, neg=1.0 - ratio, num_samples=1)


def _check_axes(axes: Sequence[int], spatial_dims: int, key: str) -> list[int]:
    bad = [a for a in axes if not 0 <= a < spatial_dims]
    if bad:
        raise ConfigError(
            f"{key}={list(axes)} is not valid for {spatial_dims}D patches; allowed axes: "
            f"{', '.join(str(a) for a in range(spatial_dims))}"
        )
    return list(axes)


def _range(values: Sequence[float], key: str) -> tuple[float, float]:
    if len(values) != 2 or values[0] > values[1]:
        raise ConfigError(f"{key}={list(values)} is not valid; give [low, high] with low <= high")
    return float(values[0]), float(values[1])


def augmentation_transforms(
    augmentation: AugmentationConfig,
    *,
    spatial_dims: int,
    patch_size: Sequence[int],
    image_key: str = "image",
    label_key: str | None = "label",
    extra_keys: Sequence[str] = (),
) -> list[Transform]:
    """The random augmentations of ``augmentation`` (those with ``prob > 0``) for patches of ``patch_size``.

    Order: affine (rotation, scaling), elastic, 90-degree rotation, flips, then the intensity
    ones on the image only: noise, blur, brightness, contrast, low resolution, gamma.
    For ``spatial_dims == 2`` flips on axis 2 are dropped (3D configs list ``[0, 1, 2]``).
    ``extra_keys`` (e.g. a loss weight map) follow the spatial ones with nearest interpolation.
    """
    if spatial_dims not in (2, 3):
        raise ConfigError(f"network.spatial_dims={spatial_dims} is not valid; allowed: 2, 3")
    patch = [int(p) for p in patch_size]
    if len(patch) != spatial_dims:
        raise ConfigError(f"sampling.patch_size={patch} needs {spatial_dims} values for {spatial_dims}D patches")
    aug = augmentation
    keys = [image_key] + ([label_key] if label_key else []) + list(extra_keys)
    modes = ["bilinear"] + (["nearest"] if label_key else []) + ["nearest"] * len(extra_keys)
    steps: list[Transform] = []

    if aug.affine.prob > 0:
        angle = math.radians(aug.affine.rotation_degrees)
        low, high = _range(aug.affine.scale, "augmentation.affine.scale")
        if low <= 0:
            raise ConfigError(f"augmentation.affine.scale={aug.affine.scale} is not valid; zoom factors must be > 0")
        steps.append(
            RandAffined(
                keys,
                prob=aug.affine.prob,
                spatial_size=patch,
                cache_grid=True,
                rotate_range=[(-angle, angle)] * (3 if spatial_dims == 3 else 1),
                scale_range=[(low - 1.0, high - 1.0)] * spatial_dims,  # MONAI adds 1 to the sampled value
                mode=modes,
                padding_mode="zeros",
            )
        )
    if aug.elastic.prob > 0:
        sigma = _range(aug.elastic.sigma, "augmentation.elastic.sigma")
        magnitude = _range(aug.elastic.magnitude, "augmentation.elastic.magnitude")
        if spatial_dims == 3:
            steps.append(
                Rand3DElasticd(
                    keys,
                    sigma_range=sigma,
                    magnitude_range=magnitude,
                    prob=aug.elastic.prob,
                    spatial_size=patch,
                    mode=modes,
                    padding_mode="zeros",
                )
            )
        else:
            steps.append(RandElastic2Dd(keys, sigma, magnitude, prob=aug.elastic.prob, mode=modes))
    if aug.rotate90.prob > 0:
        axes = _check_axes(aug.rotate90.axes, spatial_dims, "augmentation.rotate90.axes")
        if len(axes) != 2 or axes[0] == axes[1]:
            raise ConfigError(f"augmentation.rotate90.axes={axes} is not valid; give two different axes (a plane)")
        if patch[axes[0]] != patch[axes[1]]:
            raise ConfigError(
                f"augmentation.rotate90.axes={axes} needs equal patch sizes on both axes "
                f"(sampling.patch_size={patch}); a 90-degree turn would change the patch shape"
            )
        steps.append(RandRotate90d(keys, prob=aug.rotate90.prob, max_k=3, spatial_axes=(axes[0], axes[1])))
    if aug.flip.prob > 0:
        axes = [a for a in aug.flip.axes if spatial_dims == 3 or a != 2]
        for axis in _check_axes(axes, spatial_dims, "augmentation.flip.axes"):
            steps.append(RandFlipd(keys, prob=aug.flip.prob, spatial_axis=axis))

    if aug.noise.prob > 0:
        steps.append(RandGaussianNoised(image_key, prob=aug.noise.prob, mean=0.0, std=aug.noise.std, sample_std=True))
    if aug.blur.prob > 0:
        sigma = _range(aug.blur.sigma, "augmentation.blur.sigma")
        steps.append(RandGaussianSmoothd(image_key, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=aug.blur.prob))
    if aug.brightness.prob > 0:
        low, high = _range(aug.brightness.range, "augmentation.brightness.range")
        steps.append(RandScaleIntensityd(image_key, factors=(low - 1.0, high - 1.0), prob=aug.brightness.prob))
    if aug.contrast.prob > 0:
        low, high = _range(aug.contrast.range, "augmentation.contrast.range")
        steps.append(
            RandScaleIntensityFixedMeand(
                image_key,
                factors=(low - 1.0, high - 1.0),
                fixed_mean=True,
                preserve_range=True,
                channel_wise=True,
                prob=aug.contrast.prob,
            )
        )
    if aug.low_resolution.prob > 0:
        low, high = _range(aug.low_resolution.range, "augmentation.low_resolution.range")
        if low <= 0 or high > 1:
            raise ConfigError(
                f"augmentation.low_resolution.range={[low, high]} is not valid; allowed: 0 < low <= high <= 1"
            )
        steps.append(
            RandSimulateLowResolutiond(
                image_key,
                prob=aug.low_resolution.prob,
                zoom_range=(low, high),
                downsample_mode="nearest",
                upsample_mode="trilinear" if spatial_dims == 3 else "bilinear",
            )
        )
    if aug.gamma.prob > 0:
        low, high = _range(aug.gamma.range, "augmentation.gamma.range")
        if low <= 0:
            raise ConfigError(f"augmentation.gamma.range={[low, high]} is not valid; gamma must be > 0")
        steps.append(RandAdjustContrastd(image_key, prob=aug.gamma.prob, gamma=(low, high), retain_stats=True))
    return steps


def describe(steps: Sequence[Any]) -> str:
    """One line naming the transforms, for logging."""
    return ", ".join(type(s).__name__ for s in steps) or "none"
