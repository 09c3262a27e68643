"""What the bad-input corpus is built from (rows in the ``corpus_*`` modules, run by test_bad_inputs.py).

``Fails`` and ``Works`` say what a row expects, ``Ctx`` is what its builder gets, and the
builders here write the inputs several topics share: an image, a label map, NIfTI files (also
byte by byte, with header fields nibabel's writer would refuse) and the argv of each command.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (20, 18, 12)
BRATS = ["flair", "t1", "t1ce", "t2"]


# ----------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Fails:
    """A user error whose one-line message contains ``text``; ``kept``: finished outputs that
    stay (a folder run stops at a bad case and keeps the cases done before it)."""

    text: str
    kept: tuple[str, ...] = ()


@dataclass(frozen=True)
class Works:
    """Exit 0. ``grid``: the predict output lies on the grid of this input (relative to ``d``)."""

    grid: str | None = None
    output: str = "out/seg.nii.gz"
    stdout: str | None = None
    stderr: str | None = None
    check: Callable[[Path], None] | None = field(default=None, compare=False)


# ----------------------------------------------------------------------------- command lines


PREDICT = ["predict", "-m", "{ckpt}", "-i", "{d}/in.nii.gz", "-o", "{d}/out/seg.nii.gz", "--quiet"]
PREDICT4 = ["predict", "-m", "{ckpt4}", "-i", "{d}/in.nii.gz", "-o", "{d}/out/seg.nii.gz", "--quiet"]
EVALUATE = ["evaluate", "{d}/pred.nii.gz", "{d}/ref.nii.gz", "--quiet"]
TRAIN = ["train", "{d}/cfg.yaml", "-o", "{d}/run", "--quiet"]
PLAN = ["plan", "{d}/data", "-o", "{d}/plan.yaml", "--device", "cpu", "--workers", "1", "--quiet"]


def predict(input_name: str = "in.nii.gz", *extra: str, model: str = "{ckpt}", output: str = "{d}/out/seg.nii.gz"):
    return ["predict", "-m", model, "-i", f"{{d}}/{input_name}", "-o", output, "--quiet", *extra]


# ----------------------------------------------------------------------------- builders


@dataclass
class Ctx:
    """What a builder may use: its folder, the checkpoints, pytest's monkeypatch and the
    ``write_dicom_series`` fixture (tests/conftest.py)."""

    d: Path
    ckpt: Path
    ckpt4: Path
    monkeypatch: pytest.MonkeyPatch
    write_dicom_series: Callable[..., object] | None = None


def image(shape=SHAPE, dtype=np.float32, seed=0) -> np.ndarray:
    """A body of random values with a bright box inside, zero at the borders."""
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, dtype=np.float64)
    inner = tuple(slice(1, max(n - 1, 1)) for n in shape[:3])
    arr[inner] = rng.normal(50, 5, size=arr[inner].shape)
    arr[tuple(slice(n // 4, max(n // 2, n // 4 + 1)) for n in shape[:3])] = 100
    return arr.astype(dtype)


def nifti(path: Path, arr: np.ndarray, affine=None, **codes) -> Path:
    img = nib.Nifti1Image(arr, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine)
    for kind in ("sform", "qform"):
        if kind in codes:
            matrix, code = codes[kind]
            getattr(img, f"set_{kind}")(matrix, code=code)
    nib.save(img, str(path))
    return path


def label_map(shape=SHAPE, values=(1, 2)) -> np.ndarray:
    arr = np.zeros(shape, np.uint8)
    arr[4:9, 4:9, 3:7] = values[0]
    if len(values) > 1:
        arr[5:7, 5:7, 4:5] = values[1]
    return arr


def rotation(degrees: float, axis: int = 2) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def affine_of(linear: np.ndarray, origin=(3.0, -7.0, 11.0)) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, origin
    return out


#: A rotated, anisotropic grid (predict inputs, and label maps on a grid other than their image's).
OBLIQUE = affine_of(rotation(25, 2) @ rotation(-10, 0) @ np.diag([0.9, 1.1, 2.0]))


def input_nifti(arr: np.ndarray, affine=None, **codes) -> Callable[[Ctx], None]:
    return lambda c: nifti(c.d / "in.nii.gz", arr, affine, **codes)


def raw_bytes(name: str, data: bytes) -> Callable[[Ctx], None]:
    return lambda c: (c.d / name).write_bytes(data)


def both(*builders: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        for b in builders:
            b(c)

    return build


def raw_nifti(path: Path, arr: np.ndarray, edit: Callable[[nib.Nifti1Header], None]) -> Path:
    """Write a NIfTI byte by byte, with header fields nibabel's writer would refuse (``edit``)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(arr.dtype)
    header.set_data_shape(arr.shape)
    header["vox_offset"] = 352
    header.set_sform(np.eye(4), code=1)
    edit(header)
    data = header.binaryblock + b"\0" * 4 + np.asfortranarray(arr).tobytes(order="F")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def raw_input(arr: np.ndarray, edit: Callable[[nib.Nifti1Header], None]) -> Callable[[Ctx], None]:
    return lambda c: raw_nifti(c.d / "in.nii.gz", arr, edit)


def set_fields(**fields) -> Callable[[nib.Nifti1Header], None]:
    def edit(header: nib.Nifti1Header) -> None:
        for key, value in fields.items():
            header[key] = value

    return edit
