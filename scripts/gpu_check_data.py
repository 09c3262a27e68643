"""Synthetic BraTS-shaped data for scripts/gpu_check.py: case files on disk and a learnable batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from volseg.config import Config


def write_brats_cases(root: Path, shape: tuple[int, int, int], count: int) -> Path:
    """``count`` synthetic BraTS 2018-2021 cases under ``root`` (uncompressed NIfTI, 1 mm, written once):
    a noisy ellipsoid brain, a tumour of nested spheres (edema 2, enhancing 4, necrosis 1) brighter in
    every channel."""
    if (root / "complete").exists():
        return root
    import nibabel as nib

    rng = np.random.default_rng(0)
    axes = [np.arange(s, dtype=np.float32) for s in shape]
    middle = [(s - 1) / 2 for s in shape]
    brain = sum(((a - m) / (0.45 * s)) ** 2 for a, m, s in zip(np.meshgrid(*axes, indexing="ij"), middle, shape)) <= 1
    for index in range(count):
        case = root / f"Synth_{index:03d}"
        case.mkdir(parents=True, exist_ok=True)
        centre = [s * rng.uniform(0.4, 0.6) for s in shape]
        radius = min(shape) * rng.uniform(0.12, 0.18)
        distance = np.sqrt(sum((a - c) ** 2 for a, c in zip(np.meshgrid(*axes, indexing="ij"), centre)))
        seg = np.zeros(shape, np.uint8)
        seg[distance < radius] = 2
        seg[distance < 0.6 * radius] = 4
        seg[distance < 0.3 * radius] = 1
        seg[~brain] = 0
        for channel, name in enumerate(("flair", "t1", "t1ce", "t2")):
            image = (100 + rng.normal(0, 10, shape).astype(np.float32)) * brain
            image += 30 * (channel + 1) * (seg > 0) + 20 * (seg == 4)
            nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(case / f"{case.name}_{name}.nii"))
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(case / f"{case.name}_seg.nii"))
    (root / "complete").touch()
    return root


def synthetic_batch(
    config: Config, device: torch.device, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable batch of the config's shape: images (B, 4, *patch) with a sphere brighter in every
    channel, and its region maps (B, R, *patch) (nested spheres, in the config's region order)."""
    batch, patch = config.sampling.batch_size, config.sampling.patch_size
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in patch], indexing="ij"))
    labels = torch.zeros(batch, *patch, dtype=torch.uint8)
    for index in range(batch):
        centre = torch.tensor([s * 0.5 for s in patch]).add(torch.randn(3, generator=generator) * min(patch) * 0.05)
        distance = (grid - centre.view(3, 1, 1, 1)).square().sum(0).sqrt()
        radius = min(patch) * 0.3
        labels[index][distance < radius] = 2
        labels[index][distance < 0.6 * radius] = 4
        labels[index][distance < 0.3 * radius] = 1
    values = [torch.tensor(region, dtype=torch.uint8) for region in config.data.regions.values()]
    regions = torch.stack([torch.isin(labels, region) for region in values], 1)
    channels = len(config.data.channels)
    images = torch.randn(batch, channels, *patch, generator=generator) * 0.5 + (labels > 0)[:, None].float()
    images[:, -1] += (labels == 4).float()
    return images.to(device), regions.float().to(device)
