"""A voxel array with its geometry (:class:`Volume`), and the checks every reader makes.

The base of :mod:`volseg.io` (reading and writing) and :mod:`volseg.io.formats` (the readers and
writers of each format), so that neither imports the other's caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from volseg.errors import InputFileError, ShapeError


@dataclass
class Volume:
    """A voxel array with its geometry.

    ``array``: ``(*S)`` scalar or ``(*S, C)`` multi-channel, ``S`` in the file's voxel order
    ``(i, j, k)`` (``(i, j)`` in 2D). ``affine``: 4x4 float64, voxel index -> RAS+ mm.
    ``header``: the NIfTI header (nibabel reads only), whose qform/sform codes, units and
    description writes on this grid copy. ``spatial_dims``: 2 or 3, default 2 for 2D arrays.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: Any = None
    spatial_dims: int | None = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ShapeError(f"a volume affine must be 4x4, got shape {self.affine.shape}")
        if self.spatial_dims is None:
            self.spatial_dims = 2 if self.array.ndim == 2 else 3
        sd = self.spatial_dims
        if sd not in (2, 3) or self.array.ndim not in (sd, sd + 1):
            raise ShapeError(
                f"a {sd}D volume array needs {sd} or {sd + 1} (channels last) axes, got shape {self.array.shape}"
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``S``: the first 3 (or 2) axes of ``array``."""
        return tuple(int(n) for n in self.array.shape[: self.spatial_dims])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel sizes in mm along each spatial axis (norms of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, : self.spatial_dims], axis=0))

    @property
    def num_channels(self) -> int:
        """``C``: 1 for a scalar volume."""
        return 1 if self.array.ndim == self.spatial_dims else int(self.array.shape[-1])

    @property
    def orientation(self) -> tuple[str, ...]:
        """Axis codes of the voxel axes, e.g. ``("L", "P", "S")``."""
        return tuple(c or "?" for c in nib.orientations.aff2axcodes(self.affine))

    def channels_first(self) -> np.ndarray:
        """The array as ``(C, *S)`` float32 (``C = 1`` for a scalar volume)."""
        arr = self.array if self.array.ndim > self.spatial_dims else self.array[..., None]
        with np.errstate(over="ignore"):  # values beyond float32 become inf, which callers reject as non-finite
            return np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float32)


def _fail(path: object, problem: object) -> InputFileError:
    """An ``InputFileError`` with a one-line message naming ``path``."""
    return InputFileError(f"cannot read '{path}': {' '.join(str(problem).split())}")


def _check_shape(path: Path, shape: tuple[int, ...], itemsize: int, max_bytes: int) -> tuple:
    """Check a header shape before loading; drop singleton axes past the third:
    ``(X, Y, Z, 1, C)`` (as some tools write) -> ``(X, Y, Z, C)``; ``(X, Y, Z, 1)`` -> 3D."""
    shape = tuple(int(n) for n in shape)
    if any(n <= 0 for n in shape):
        raise _fail(path, f"has a zero-sized dimension (shape {shape})")
    if len(shape) < 2:
        raise _fail(path, f"has {len(shape)} dimension(s) (shape {shape}); volseg reads 2D and 3D volumes")
    squeezed = shape[:3] + tuple(n for n in shape[3:] if n != 1)
    if len(squeezed) > 4:
        raise _fail(
            path,
            f"has {len(squeezed)} non-singleton dimensions (shape {shape}); "
            "volseg reads 2D/3D volumes with at most one channel axis",
        )
    nbytes = int(np.prod(squeezed, dtype=np.float64)) * itemsize
    if nbytes > max_bytes:
        raise _fail(
            path,
            f"header claims shape {shape} ({nbytes / 1024**3:.1f} GiB in memory), "
            f"over the {max_bytes / 1024**3:.1f} GiB limit (max_bytes); corrupt header?",
        )
    return squeezed


def _check_affine(path: Path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise _fail(path, f"has a non-invertible voxel-to-world affine {affine[:3].tolist()}")
