"""Helpers of the volseg.io tests (test_io.py, test_io_validation.py): affines of each orientation,
files written with nibabel alone, and one-line error messages."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SPACING = (0.8, 1.2, 3.0)  # anisotropic


def _rotation(deg: float) -> np.ndarray:
    """Rotation by ``deg`` about an oblique axis (not aligned with any world axis)."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    t = np.deg2rad(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


AFFINE_KINDS = {
    "RAS": np.diag([1.0, 1.0, 1.0]),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    "LAS": np.diag([-1.0, 1.0, 1.0]),
    "oblique": _rotation(20.0),
}


def make_affine(kind: str, spacing=SPACING, origin=(-40.3, 12.7, 5.25)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = AFFINE_KINDS[kind] * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def nib_write(path: Path, array: np.ndarray, affine: np.ndarray, **codes) -> Path:
    """Write with nibabel directly (independent of write_volume)."""
    img = nib.Nifti1Image(array, affine)
    if codes:
        img.set_sform(affine, code=codes.get("sform", 1))
        img.set_qform(affine, code=codes.get("qform", 1))
    nib.save(img, str(path))
    return path


def image_array(shape=(6, 5, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def error_of(exc_type, func, *args, **kwargs) -> str:
    """Run ``func``, assert it raises ``exc_type`` with a one-line message; return it."""
    with pytest.raises(exc_type) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message
