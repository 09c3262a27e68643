"""MONAI dictionary-transform pipelines built from the config, the same at training and inference.

Items are dicts ``{"image": [channel paths] or one 4D path, "label": path (optional), "case_id": str}``.
Preprocessing (:func:`preprocessing_transforms`) reads the files with :mod:`volseg.io`, reorients,
crops to the non-zero box, resamples and normalises; it yields ``image`` ``(C, *S)`` float32 and
``label`` ``(1, *S)`` uint8 class indices or ``(R, *S)`` uint8 region masks, as MetaTensors that record
their spatial transforms, so :func:`invert_to_input` can put a prediction back on the input grid.
:func:`training_transforms` adds patch sampling and augmentation (:mod:`volseg.data.augment`).
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
from monai.transforms import (
    Compose,
    CropForeground,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientation,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    SpatialResample,
    SqueezeDimd,
    Transform,
)
from monai.transforms.utils import convert_applied_interp_mode
from monai.utils import TraceKeys

from volseg import io as vio
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
from volseg.data.weights import border_weight_map, instances_from_labels
from volseg.errors import ConfigError, InputFileError, ShapeError, VolsegError

__all__ = [
    "LabelsToRegionsd",
    "LoadVolumed",
    "MapLabelsd",
    "Pipeline",
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
_CACHE_VERSION = 1  # part of the disk-cache key: bump when preprocessing code changes its output


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


class LoadVolumed(MapTransform):
    """Read ``image`` (channel files, stacked, or one 4D file) and ``label`` with :func:`volseg.io.read_volume`.

    Gives MetaTensors ``image`` ``(C, *S)`` float32 and ``label`` ``(1, *S)`` float32 on the image's
    grid (voxel -> RAS mm affine). Channel files and the label must share the image's grid
    (:class:`ShapeError` otherwise); bad files raise :class:`InputFileError`.
    """

    def __init__(self, keys: Sequence[str] = (IMAGE, LABEL), atol: float = 1e-3) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = case_name(d)
        paths = d[IMAGE]
        paths = [paths] if isinstance(paths, (str, os.PathLike, vio.Volume)) else list(paths)
        if not paths:
            raise InputFileError(f"case {case}: no image files")
        # Volumes already read (e.g. by the predictor, which keeps their headers) are used as they are.
        volumes = [p if isinstance(p, vio.Volume) else vio.read_volume(p) for p in paths]
        paths = [v.path if v.path is not None else f"{case} channel {i}" for i, v in enumerate(volumes)]
        first = volumes[0]
        for volume in volumes:
            if volume.spatial_dims != 3:
                raise ShapeError(
                    f"case {case}: {volume.path} is {volume.spatial_dims}D; volseg pipelines need 3D "
                    "volumes (2D networks take slices of them)"
                )
            if volume is not first and not vio.same_grid(first, volume, atol=self.atol):
                raise ShapeError(
                    f"case {case}: channel files {first.path} and {volume.path} have different grids "
                    f"(shapes {first.spatial_shape} vs {volume.spatial_shape} or affines differ)"
                )
        arrays = [v.channels_first() for v in volumes]  # float32
        for volume, array in zip(volumes, arrays):
            if not np.isfinite(array).all():  # finite in the file (float64, scaled) but not in float32
                raise InputFileError(
                    f"case {case}: {volume.path} has values beyond the float32 range "
                    f"(magnitude over {np.finfo(np.float32).max:.3g}); rescale the file"
                )
        image = np.concatenate(arrays)
        meta = {
            "affine": torch.as_tensor(first.affine, dtype=torch.float64),
            "original_affine": first.affine.copy(),
            "spatial_shape": np.asarray(first.spatial_shape),
            "space": "RAS",
            "filename_or_obj": str(paths[0]),
        }
        d[IMAGE] = MetaTensor(torch.from_numpy(image), meta=meta)
        if LABEL in self.keys and d.get(LABEL) is not None:
            label = vio.read_volume(d[LABEL])
            vio.check_same_grid(first, label, atol=self.atol)
            if label.num_channels != 1:
                raise ShapeError(f"case {case}: label {label.path} has {label.num_channels} channels; allowed: 1")
            meta = {**meta, "filename_or_obj": str(d[LABEL])}
            d[LABEL] = MetaTensor(torch.from_numpy(label.channels_first()), meta=copy.deepcopy(meta))
        return d


def _nonzero(image: torch.Tensor) -> torch.Tensor:
    """The crop mask: non-zero voxels; everything when the image is all zeros (MONAI would crop to nothing)."""
    mask = image != 0
    return mask if bool(mask.any()) else torch.ones_like(mask)


def _check_preprocessing(pre: PreprocessingConfig) -> None:
    code = pre.orientation.upper()
    if len(code) != 3 or any(sum(c in pair for c in code) != 1 for pair in ("LR", "AP", "IS")):
        raise ConfigError(
            f"preprocessing.orientation={pre.orientation!r} is not valid; give one letter of L/R, "
            "A/P and I/S each, e.g. 'RAS' or 'LPS'"
        )
    if pre.intensity == "ct":
        missing = [f"preprocessing.{k}" for k in ("clip", "mean", "std") if getattr(pre, k) is None]
        if missing:
            raise ConfigError(
                f"preprocessing.intensity='ct' needs {', '.join(missing)} (dataset statistics; "
                "`volseg plan` writes them)"
            )
        if len(pre.clip) != 2 or pre.clip[0] >= pre.clip[1] or pre.std <= 0:
            raise ConfigError(
                f"preprocessing.clip={pre.clip} / std={pre.std} are not valid; "
                "give clip [low, high] with low < high and std > 0"
            )
    elif pre.intensity not in ("mri", "none"):
        raise ConfigError(f"preprocessing.intensity={pre.intensity!r} is not valid; allowed: 'mri', 'ct', 'none'")


def _preprocessing_steps(
    pre: PreprocessingConfig, *, with_label: bool, values: list[int] | None, regions: dict[str, list[int]] | None
) -> list[Transform]:
    _check_preprocessing(pre)
    keys = [IMAGE, LABEL] if with_label else [IMAGE]
    modes = ["bilinear", "nearest"][: len(keys)]
    steps: list[Transform] = [LoadVolumed(keys), Orientationd(keys, axcodes=pre.orientation.upper(), labels=None)]
    if pre.crop_foreground:  # before resampling: cheaper, and the crop is exact on the input grid
        steps.append(
            CropForegroundd(
                keys, source_key=IMAGE, select_fn=_nonzero, allow_smaller=True, start_coord_key=None, end_coord_key=None
            )
        )
    if pre.spacing is not None:
        steps.append(Spacingd(keys, pixdim=[float(s) for s in pre.spacing], mode=modes, dtype=torch.float32))
    if pre.intensity == "mri":
        steps.append(NormalizeIntensityd(IMAGE, nonzero=True, channel_wise=True))
    elif pre.intensity == "ct":  # clip to [lo, hi], then (x - mean) / std: one linear map
        (lo, hi), mean, std = pre.clip, pre.mean, pre.std
        steps.append(
            ScaleIntensityRanged(IMAGE, a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True)
        )
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


def inference_transforms(preprocessing: PreprocessingConfig) -> Pipeline:
    """Preprocessing of the image alone; pair with :func:`invert_to_input` for the predictions."""
    return preprocessing_transforms(preprocessing, with_label=False)


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


def _free_ids(item: Any) -> Any:
    """Let any instance invert a recorded op: MONAI checks ``id(transform)`` unless the id is NONE."""
    if isinstance(item, dict):
        if TraceKeys.ID in item:
            item[TraceKeys.ID] = TraceKeys.NONE
        for value in item.values():
            _free_ids(value)
    elif isinstance(item, list):
        for value in item:
            _free_ids(value)
    return item


#: Array transforms that undo the ops the preprocessing records, by their recorded class name.
_INVERTERS = {
    "Orientation": lambda: Orientation(axcodes="RAS", labels=None),
    "CropForeground": CropForeground,
    "SpatialResample": SpatialResample,
}


def invert_to_input(
    prediction: torch.Tensor | np.ndarray,
    data: Mapping[Hashable, Any],
    *,
    key: str = IMAGE,
    mode: Literal["nearest", "bilinear"] = "nearest",
) -> MetaTensor:
    """Put a prediction on the preprocessed grid back on the input file's grid.

    ``prediction``: ``(C, *S)`` or ``(*S)`` with ``S`` the spatial shape of ``data[key]`` (the output of
    :func:`inference_transforms`). MONAI's inverses of the recorded spatial ops (resampling with
    ``mode``: ``nearest`` for labels, ``bilinear`` for probabilities; crop -> zero padding; orientation)
    are applied in reverse. Returns a MetaTensor ``(C, *S_in)`` (or ``(*S_in)``) whose ``affine`` is the
    input's; integer predictions keep their dtype.
    """
    reference = data[key]
    if not isinstance(reference, MetaTensor) or not reference.applied_operations:
        raise ShapeError(f"data[{key!r}] records no spatial transforms; pass the output of inference_transforms")
    if mode not in ("nearest", "bilinear"):
        raise ConfigError(f"mode={mode!r} is not valid; allowed: 'nearest', 'bilinear'")
    pred = torch.as_tensor(prediction.as_tensor() if isinstance(prediction, MetaTensor) else prediction)
    spatial = tuple(reference.shape[1:])
    squeeze = pred.ndim == len(spatial)
    pred = pred[None] if squeeze else pred
    if tuple(pred.shape[1:]) != spatial:
        raise ShapeError(
            f"prediction shape {tuple(pred.shape)} does not match the preprocessed image "
            f"(C, {', '.join(map(str, spatial))})"
        )
    ops = _free_ids(copy.deepcopy(list(reference.applied_operations)))
    if mode == "nearest":
        ops = convert_applied_interp_mode(ops, mode="nearest", align_corners=None)
    integral = not (pred.is_floating_point() or pred.is_complex())
    out = MetaTensor(pred.float() if integral else pred, meta=copy.deepcopy(reference.meta), applied_operations=ops)
    for op in reversed(ops):
        inverter = _INVERTERS.get(op[TraceKeys.CLASS_NAME])
        if inverter is None:
            raise ShapeError(f"cannot invert the recorded transform {op[TraceKeys.CLASS_NAME]!r}")
        out = inverter().inverse(out)
    if integral:
        out = out.round().to(pred.dtype)
    return out[0] if squeeze else out


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
