"""Propose a training configuration from a dataset fingerprint (``volseg plan``).

The rules follow what nnU-Net's planner is known for, in our own form:

* target spacing: the median spacing; for anisotropic data (coarsest / finest axis > 3)
  the coarse axis takes the 10th percentile of its spacings instead, but stays the coarsest;
* network: down-sample an axis while its feature map keeps >= 4 voxels and its spacing is
  at most twice the finest current spacing (so a coarse axis waits for the others); 3x3x3
  kernels, 1 along an axis that is still much coarser; features 32, doubling, capped;
* patch: the median cropped case after resampling, shrunk along its physically longest
  axis until the estimated training memory fits the budget; then the batch grows to fill
  the budget while it covers at most 5 % of the dataset's voxels;
* intensities: CT (clip to the foreground 0.5-99.5 percentiles, z-score with dataset
  statistics) when the dataset says CT or its intensities look like Hounsfield units,
  otherwise MRI (z-score per case over non-zero voxels).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from volseg.config import Config, config_from_dict
from volseg.data.datasets import find_cases
from volseg.data.fingerprint import DatasetFingerprint, fingerprint_dataset
from volseg.data.label_space import BRATS_REGIONS
from volseg.errors import ConfigError
from volseg.nn import create_model

logger = logging.getLogger(__name__)

ANISOTROPY_RATIO = 3.0
MIN_FEATURE_MAP = 4
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
MAX_STAGES = {2: 7, 3: 6}
MIN_BATCH = 2
MAX_DATASET_FRACTION = 0.05
# Stored activations per feature voxel per stage, encoder and decoder together (two
# convolutions with norm and activation outputs, the concatenated skip and the up-sampling).
ACTIVATIONS_PER_FEATURE_VOXEL = 14


@dataclass
class Topology:
    """Per-stage features, strides and kernel sizes of a planned U-Net."""

    features: list[int]
    strides: list[list[int]]
    kernel_sizes: list[list[int]]

    @property
    def divisor(self) -> list[int]:
        return [math.prod(stage[a] for stage in self.strides) for a in range(len(self.strides[0]))]


def plan_target_spacing(fingerprint: DatasetFingerprint) -> list[float]:
    """Median spacing, with the 10th percentile on the coarse axis of anisotropic data."""
    spacing = list(fingerprint.median_spacing)
    coarse = int(np.argmax(spacing))
    if max(spacing) / min(spacing) > ANISOTROPY_RATIO:
        others = [s for a, s in enumerate(spacing) if a != coarse]
        spacing[coarse] = max(fingerprint.spacing_percentile_10[coarse], max(others) + 1e-5)
    return spacing


def plan_topology(patch_size: list[int], spacing: list[float], spatial_dims: int) -> Topology:
    """Features, strides and kernels for ``patch_size`` voxels of ``spacing`` mm."""
    size, current = [float(p) for p in patch_size], list(spacing)
    strides, kernels = [[1] * spatial_dims], [_kernel(current)]
    while len(strides) < MAX_STAGES[spatial_dims]:
        finest = min(current)
        stride = [2 if size[a] / 2 >= MIN_FEATURE_MAP and current[a] <= 2 * finest else 1 for a in range(spatial_dims)]
        if stride == [1] * spatial_dims:
            break
        size = [s / f for s, f in zip(size, stride)]
        current = [c * f for c, f in zip(current, stride)]
        strides.append(stride)
        kernels.append(_kernel(current))
    features = [min(BASE_FEATURES * 2**stage, MAX_FEATURES[spatial_dims]) for stage in range(len(strides))]
    return Topology(features, strides, kernels)


def _kernel(spacing: list[float]) -> list[int]:
    finest = min(spacing)
    return [3 if s <= 2 * finest else 1 for s in spacing]


def estimate_memory_bytes(topology: Topology, patch_size: list[int], batch_size: int, bytes_per_value: int) -> float:
    """Rough training memory: stored activations plus weights, gradients and optimiser state."""
    voxels, activations, parameters, previous = float(math.prod(patch_size)), 0.0, 0, 1
    for features, stride, kernel in zip(topology.features, topology.strides, topology.kernel_sizes):
        voxels /= math.prod(stride)
        activations += features * voxels
        parameters += 2 * features * (previous + features) * math.prod(kernel)
        previous = features
    return batch_size * ACTIVATIONS_PER_FEATURE_VOXEL * activations * bytes_per_value + 16 * parameters


def plan_patch(
    median_shape: list[float], spacing: list[float], spatial_dims: int, budget_bytes: float, bytes_per_value: int
) -> tuple[list[int], Topology]:
    """The largest patch up to the median case that fits ``budget_bytes`` at batch size 2."""
    patch = [max(int(round(s)), MIN_FEATURE_MAP) for s in median_shape]
    while True:
        topology = plan_topology(patch, spacing, spatial_dims)
        divisor = topology.divisor
        rounded = [math.ceil(p / d) * d for p, d in zip(patch, divisor)]
        if estimate_memory_bytes(topology, rounded, MIN_BATCH, bytes_per_value) <= budget_bytes:
            return rounded, topology
        extents = [p * s for p, s in zip(patch, spacing)]
        axis = int(np.argmax(extents))
        if patch[axis] <= divisor[axis] and all(p <= d for p, d in zip(patch, divisor)):
            return rounded, topology  # as small as this network allows
        patch[axis] = max(patch[axis] - divisor[axis], MIN_FEATURE_MAP)


def plan_batch_size(
    topology: Topology, patch: list[int], budget_bytes: float, bytes_per_value: int, dataset_voxels: float
) -> int:
    """Grow the batch from 2 while it fits the budget and covers <= 5 % of the dataset."""
    batch = MIN_BATCH
    cap = max(MIN_BATCH, int(MAX_DATASET_FRACTION * dataset_voxels / math.prod(patch)))
    while batch < cap and estimate_memory_bytes(topology, patch, batch + 1, bytes_per_value) <= budget_bytes:
        batch += 1
    return batch


def looks_like_ct(fingerprint: DatasetFingerprint) -> bool:
    """CT when the dataset's modality says so; without one, when the typical image reaches
    Hounsfield air (below -500; air is about -1000 HU), which MRI intensities never do."""
    if fingerprint.modality:
        return fingerprint.modality.strip().upper().startswith("CT")
    return bool(fingerprint.intensities) and fingerprint.intensities[0].image_minimum_median < -500


def plan_config(
    fingerprint: DatasetFingerprint,
    root: str,
    *,
    spatial_dims: int = 3,
    device: str = "cuda",
    memory_gb: float | None = None,
) -> Config:
    """A complete, checked :class:`Config` for training on the fingerprinted dataset.

    ``device`` sets the precision the memory estimate assumes (fp16/bf16 on CUDA, fp32 on
    CPU) and the default budget: 8 GB of GPU memory, or 4 GB of RAM on CPU.
    """
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims={spatial_dims!r} is not valid; allowed: 2 or 3")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not valid; allowed: cpu, cuda")
    budget = (memory_gb if memory_gb is not None else (8.0 if device == "cuda" else 4.0)) * 1024**3
    bytes_per_value = 2 if device == "cuda" else 4
    spacing = plan_target_spacing(fingerprint)
    resampled = [s * m / t for s, m, t in zip(fingerprint.median_cropped_shape, fingerprint.median_spacing, spacing)]
    if spatial_dims == 2:  # slices across the last (axial in RAS) axis
        resampled, plane_spacing = resampled[:2], spacing[:2]
    else:
        plane_spacing = spacing
    patch, topology = plan_patch(resampled, plane_spacing, spatial_dims, budget, bytes_per_value)
    dataset_voxels = fingerprint.num_cases * math.prod(resampled)
    batch = plan_batch_size(topology, patch, budget, bytes_per_value, dataset_voxels)
    labels, regions = _plan_labels(fingerprint)
    num_outputs = len(regions) if regions else len(labels)
    ct = looks_like_ct(fingerprint)
    values = {
        "data": {
            "root": root,
            "layout": fingerprint.layout,
            "channels": fingerprint.channel_names,
            "labels": labels,
            "regions": regions,
        },
        "preprocessing": {
            "orientation": fingerprint.orientation,
            "spacing": [round(s, 5) for s in spacing],
            "intensity": "ct" if ct else "mri",
            "crop_foreground": True,
            **(_ct_statistics(fingerprint) if ct else {}),
        },
        "network": {
            "name": "unet",
            "spatial_dims": spatial_dims,
            "options": {
                "features": topology.features,
                "strides": topology.strides,
                "kernel_sizes": topology.kernel_sizes,
                "deep_supervision": True,
            },
        },
        "sampling": {"patch_size": patch, "batch_size": batch},
        "training": {"precision": "auto", "device": "auto"},
        "inference": {
            "roi_size": patch,
            "tta_flips": list(range(spatial_dims)) if device == "cuda" else [],
            "mask_nonzero": not ct,
        },
    }
    config = config_from_dict(values)
    _check_network(config, len(fingerprint.channel_names), num_outputs)
    return config


def _plan_labels(fingerprint: DatasetFingerprint) -> tuple[dict[int, str], dict[str, list[int]] | None]:
    labels = dict(fingerprint.label_names) or {0: "background"}
    found = sorted(fingerprint.class_fractions)
    for value in found:
        if value not in labels:
            logger.info("label value %s is not named by the dataset; calling it label_%s", value, value)
            labels[value] = f"label_{value}"
    labels.setdefault(0, "background")
    regions = BRATS_REGIONS.get(fingerprint.layout)  # BraTS layouts are named by their label convention
    return dict(sorted(labels.items())), {k: list(v) for k, v in regions.items()} if regions else None


def _ct_statistics(fingerprint: DatasetFingerprint) -> dict[str, object]:
    channel = fingerprint.intensities[0]
    return {
        "clip": [round(channel.percentile_00_5, 3), round(channel.percentile_99_5, 3)],
        "mean": round(channel.mean, 4),
        "std": round(max(channel.std, 1e-8), 4),
    }


def _check_network(config: Config, in_channels: int, num_outputs: int) -> None:
    """Build the planned network on the meta device and push the patch through its size check."""
    with torch.device("meta"):
        model = create_model(
            config.network.name, config.network.spatial_dims, max(in_channels, 1), num_outputs, **config.network.options
        )
    model.output_shape(config.sampling.patch_size)


def plan_dataset(
    root: str,
    *,
    layout: str = "auto",
    spatial_dims: int = 3,
    device: str = "cuda",
    memory_gb: float | None = None,
    num_workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Config, DatasetFingerprint]:
    """Find the cases under ``root``, fingerprint them and plan a config (what ``volseg plan`` does)."""
    dataset = find_cases(root, layout=layout)
    fingerprint = fingerprint_dataset(dataset, num_workers=num_workers, progress=progress)
    config = plan_config(fingerprint, str(root), spatial_dims=spatial_dims, device=device, memory_gb=memory_gb)
    return config, fingerprint


def plan_summary(fingerprint: DatasetFingerprint, config: Config, device: str) -> str:
    """A few lines saying what the plan was made from (the header of the written YAML)."""
    dims = config.network.spatial_dims
    return "\n".join(
        [
            f"Planned by volseg plan for {device} from {config.data.root}",
            f"{fingerprint.num_cases} case{'s' if fingerprint.num_cases != 1 else ''}, layout {fingerprint.layout}, "
            f"modality {fingerprint.modality or 'unknown'}, channels {', '.join(fingerprint.channel_names) or '?'}",
            f"median spacing {_round(fingerprint.median_spacing)} mm, median shape {_round(fingerprint.median_shape)}, "
            f"cropped {_round(fingerprint.median_cropped_shape)} ({fingerprint.orientation})",
            f"target spacing {_round(config.preprocessing.spacing or [])} mm, "
            f"{dims}D patch {config.sampling.patch_size} x batch {config.sampling.batch_size}, "
            f"{len(config.network.options['features'])} stages, "
            f"{config.preprocessing.intensity.upper()} intensities",
            "Edit freely: `volseg train` checks every key.",
        ]
    )


def _round(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]
