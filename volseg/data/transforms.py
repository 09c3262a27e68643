"""MONAI dictionary-transform pipelines built from the config, the same at training and inference.

Items are dicts ``{"image": [channel paths] or one 4D path, "label": path (optional), "case_id": str}``.
Preprocessing (:func:`preprocessing_transforms`) reads the files with :mod:`volseg.io`, reorients,
crops to the non-zero box, resamples and normalises, all by :mod:`volseg.data.preprocess` (which
inference uses without MONAI); it yields ``image`` ``(C, *S)`` float32 and ``label`` ``(1, *S)`` uint8
class indices or ``(R, *S)`` uint8 region masks, as MetaTensors carrying the preprocessed grid's
affine. :func:`training_transforms` adds patch sampling and augmentation (:mod:`volseg.data.augment`).
``inference_transforms`` and ``invert_to_input`` are re-exported from :mod:`volseg.data.preprocess`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.transforms import Compose, EnsureTyped, MapTransform, SpatialPadd, SqueezeDimd, Transform

from volseg.config import Config, PreprocessingConfig
from volseg.data.augment import augmentation_transforms, describe, patch_sampler
from volseg.data.label_space import LabelSpace
from volseg.data.labels import (
    LabelsToRegionsd,
    MapLabelsd,
    case_name,
    class_indices_to_labels,
    regions_to_labels,
)
from volseg.data.preprocess import check_preprocessing, inference_transforms, invert_to_input, preprocess, read_case
from volseg.data.weights import border_weight_map, instances_from_labels
from volseg.errors import ConfigError, VolsegError

__all__ = [
    "LabelsToRegionsd",
    "MapLabelsd",
    "Pipeline",
    "PreprocessCased",
    "class_indices_to_labels",
    "inference_transforms",
    "invert_to_input",
    "items_from_cases",
    "make_dataset",
    "preprocessing_transforms",
    "regions_to_labels",
    "training_transforms",
    "validation_transforms",
]

logger = logging.getLogger(__name__)

IMAGE, LABEL, WEIGHT = "image", "label", "weight"
_CACHE_VERSION = 2  # part of the disk-cache key: bump when preprocessing code changes its output


class Pipeline(Compose):
    """A :class:`monai.transforms.Compose` that raises volseg errors as themselves and returns one dict.

    MONAI wraps every exception of a transform in ``RuntimeError("applying transform ...")``; a
    :class:`VolsegError` inside is re-raised unwrapped. A one-sample list (patch samplers with
    ``num_samples=1``) is returned as its dict. ``cache_key`` names the deterministic part, for disk caches.
    """

    cache_key: str = ""

    def __call__(
        self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy: bool | None = None
    ) -> Any:
        try:
            out = super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as error:
            cause: BaseException | None = error
            while cause is not None and not isinstance(cause, VolsegError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None
        return out[0] if isinstance(out, list) and len(out) == 1 else out


class PreprocessCased(MapTransform):
    """Read a case's files (:func:`volseg.data.preprocess.read_case`) and preprocess them
    (:func:`volseg.data.preprocess.preprocess`).

    Gives MetaTensors ``image`` ``(C, *S)`` float32 and ``label`` ``(1, *S)`` float32 (raw label
    values, nearest-resampled) on the preprocessed grid, whose voxel -> RAS ``affine`` they carry.
    """

    def __init__(self, preprocessing: PreprocessingConfig, keys: Sequence[str] = (IMAGE, LABEL)) -> None:
        super().__init__(keys, allow_missing_keys=True)
        check_preprocessing(preprocessing)
        self.preprocessing = preprocessing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = case_name(d)
        label = d.get(LABEL) if LABEL in self.keys else None
        image, affine, label_array = read_case(d[IMAGE], label, case_id=case)
        prepared = preprocess(image, affine, self.preprocessing, label=label_array, case_id=case)
        meta = {"affine": torch.as_tensor(prepared.affine, dtype=torch.float64), "space": "RAS"}
        d[IMAGE] = MetaTensor(prepared.image, meta=meta)
        if prepared.label is not None:
            d[LABEL] = MetaTensor(prepared.label, meta=copy.deepcopy(meta))
        return d


def _preprocessing_steps(
    pre: PreprocessingConfig, *, with_label: bool, values: list[int] | None, regions: dict[str, list[int]] | None
) -> list[Transform]:
    keys = [IMAGE, LABEL] if with_label else [IMAGE]
    steps: list[Transform] = [PreprocessCased(pre, keys)]
    if with_label and values is not None:
        steps.append(MapLabelsd(LABEL, values))
    if with_label and regions is not None:
        steps.append(LabelsToRegionsd(LABEL, regions))
    return steps


def _pipeline(steps: list[Transform], key_parts: dict[str, Any]) -> Pipeline:
    pipeline = Pipeline(steps)
    text = json.dumps({**key_parts, "version": _CACHE_VERSION}, sort_keys=True, default=str)
    pipeline.cache_key = hashlib.sha256(text.encode()).hexdigest()[:16]
    logger.debug("transforms: %s", describe(steps))
    return pipeline


def preprocessing_transforms(
    preprocessing: PreprocessingConfig,
    *,
    with_label: bool,
    label_space: LabelSpace | None = None,
) -> Pipeline:
    """Read, reorient, crop to the non-zero box, resample, normalise; map labels (classes or regions).

    Output: ``image`` ``(C, *S)`` float32 MetaTensor; with ``with_label``, ``label`` ``(1, *S)`` uint8 class
    indices (the label space's values in order; raw values without a label space) or ``(R, *S)``
    uint8 masks of its regions.
    """
    values, region_index = None, None
    if with_label and label_space is not None:
        values, region_index = label_space.values, label_space.class_regions
    steps = _preprocessing_steps(preprocessing, with_label=with_label, values=values, regions=region_index)
    return _pipeline(
        steps, {"pre": vars(preprocessing), "label": with_label, "values": values, "regions": region_index}
    )


def validation_transforms(config: Config) -> Pipeline:
    """Whole preprocessed volumes with their labels (the trainer windows over them)."""
    return preprocessing_transforms(config.preprocessing, with_label=True, label_space=LabelSpace.from_config(config))


def training_transforms(config: Config) -> Pipeline:
    """Preprocessing, padding to the patch, one sampled patch, augmentation.

    Output: ``image`` ``(C, *P)`` float32 and ``label`` ``(1, *P)`` int64 class indices or ``(R, *P)``
    float32 region masks (plain tensors), ``P = sampling.patch_size``. 2D networks get axial slices:
    patches ``[H, W, 1]`` of the 3D volume with the last axis squeezed. Region masks are made after
    sampling, so class-balanced sampling draws from the label values and the cache holds one uint8 channel.
    """
    dims = config.network.spatial_dims
    if dims not in (2, 3):
        raise ConfigError(f"network.spatial_dims={dims} is not valid; allowed: 2, 3")
    patch = [int(p) for p in config.sampling.patch_size]
    if len(patch) != dims or min(patch) < 1:
        raise ConfigError(f"sampling.patch_size={patch} is not valid; give {dims} positive values")
    space = LabelSpace.from_config(config)
    values, regions = space.values, space.class_regions
    roi = patch + [1] if dims == 2 else patch
    steps = _preprocessing_steps(config.preprocessing, with_label=True, values=values, regions=None)
    weighted = config.loss.name == "weighted_ce"
    if weighted:  # the U-Net paper's border weights, computed once per case (cached) on the whole volume
        if regions is not None:
            raise ConfigError("loss.name='weighted_ce' is a softmax loss over classes; it cannot train data.regions")
        steps.append(BorderWeightd(LABEL, WEIGHT, w0=config.loss.border_w0, sigma=config.loss.border_sigma))
    keys = [IMAGE, WEIGHT, LABEL] if weighted else [IMAGE, LABEL]  # the label last: the sampler reads it
    steps += [SpatialPadd(keys, spatial_size=roi), patch_sampler(config.sampling, roi, len(values), keys=keys)]
    if dims == 2:
        steps.append(SqueezeDimd(keys, dim=3))  # (C, H, W, 1) -> (C, H, W); the affine loses its third axis
    if regions is not None:
        steps.append(LabelsToRegionsd(LABEL, regions))
    steps += augmentation_transforms(
        config.augmentation, spatial_dims=dims, patch_size=patch, extra_keys=[WEIGHT] if weighted else []
    )
    label_dtype = torch.float32 if regions is not None else torch.int64
    dtypes = {IMAGE: torch.float32, WEIGHT: torch.float32, LABEL: label_dtype}
    steps.append(EnsureTyped(keys, dtype=[dtypes[k] for k in keys], track_meta=False))
    key_parts = {"pre": vars(config.preprocessing), "values": values, "roi": roi}
    if weighted:
        key_parts["border"] = [config.loss.border_w0, config.loss.border_sigma]
    return _pipeline(steps, key_parts)


class BorderWeightd(MapTransform):
    """The U-Net paper's weight map of a class-index label ``(1, *S)`` as ``weight`` ``(1, *S)`` float32:
    class balance plus ``w0`` on the narrow gaps between touching objects (see
    :func:`volseg.data.weights.border_weight_map`)."""

    def __init__(self, label_key: str, weight_key: str, *, w0: float, sigma: float) -> None:
        super().__init__([label_key])
        self.label_key, self.weight_key, self.w0, self.sigma = label_key, weight_key, w0, sigma

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = np.asarray(torch.as_tensor(d[self.label_key])[0].cpu().numpy()).astype(np.int32)
        instances = instances_from_labels(label)
        weights = border_weight_map(instances, w0=self.w0, sigma=self.sigma, labels=label)
        reference = d[self.label_key]
        tensor = torch.from_numpy(weights[None])
        if isinstance(reference, MetaTensor):
            tensor = MetaTensor(tensor, meta=copy.deepcopy(reference.meta))
        d[self.weight_key] = tensor
        return d


def items_from_cases(cases: Iterable[Any]) -> list[dict[str, Any]]:
    """Transform items from :class:`volseg.data.datasets.Case` objects (``case_id``, ``images``, ``label``)."""
    items = []
    for case in cases:
        item: dict[str, Any] = {"case_id": case.case_id, IMAGE: [str(p) for p in case.images]}
        if case.label is not None:
            item[LABEL] = str(case.label)
        items.append(item)
    return items


def make_dataset(
    items: Sequence[Mapping[str, Any]],
    transforms: Compose,
    cache: Literal["memory", "disk", "none"] = "memory",
    cache_dir: str | os.PathLike[str] | None = None,
    num_workers: int = 1,
) -> Dataset:
    """A MONAI dataset whose deterministic prefix of ``transforms`` (up to the first random one) runs once.

    ``memory``: :class:`CacheDataset` filled up front with ``num_workers`` threads; ``disk``:
    :class:`PersistentDataset` under ``cache_dir/<hash of the preprocessing>`` (plain tensors, no
    metadata); ``none``: every access re-reads the files.
    """
    items = [dict(item) for item in items]
    if cache == "memory":
        return CacheDataset(items, transforms, num_workers=max(1, num_workers), progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise ConfigError("data.cache='disk' needs data.cache_dir (a folder for the preprocessed cases)")
        folder = Path(cache_dir) / (getattr(transforms, "cache_key", "") or "preprocessed")
        folder.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(items, transforms, cache_dir=folder)
    if cache == "none":
        return Dataset(items, transforms)
    raise ConfigError(f"data.cache={cache!r} is not valid; allowed: 'memory', 'disk', 'none'")
