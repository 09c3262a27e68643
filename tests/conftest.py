"""Shared test fixtures: seeded randomness, one thread per worker, the real-data folder."""

from __future__ import annotations

import json
import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

#: The project's real data (../shared/data beside the checkout); tests that need it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist already runs one worker per core: more threads per worker only contend.
    if hasattr(config, "workerinput"):
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when this machine has no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked gpu: needs a CUDA GPU and torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    # No flags to undo afterwards: a training run restores the determinism flags it set when it ends.
    torch.manual_seed(0)
    np.random.seed(0)


def require_data(*parts: str) -> Path:
    """The path of ``SHARED_DATA / parts``, skipping the test with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (it lives in ../shared/data beside the checkout)")
    return path


@pytest.fixture
def real_data():
    """``real_data("brats2018", case)``: that path in ../shared/data; skips the test when it is absent."""
    return require_data


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def write_msd(root: Path, *, cases=4, shape=(20, 24, 16), spacing=(1.0, 1.0, 1.0), modality="MRI", offset=0.0) -> Path:
    """A tiny MSD dataset: a bright box labelled 1 (and a smaller box 2) inside a dim body."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for index in range(cases):
        image = np.zeros(shape, np.float32) + offset
        image[2:-2, 2:-2, 2:-2] = rng.normal(50, 5, size=tuple(s - 4 for s in shape))
        label = np.zeros(shape, np.uint8)
        label[5:10, 6:12, 4:8] = 1
        label[6:8, 7:9, 5:6] = 2
        image[label > 0] = 100 + index
        name = f"case_{index:03d}.nii.gz"
        write_nifti(root / "imagesTr" / name, image, spacing)
        write_nifti(root / "labelsTr" / name, label, spacing)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "tiny",
                "modality": {"0": modality},
                "labels": {"0": "background", "1": "outer", "2": "inner"},
                "numTraining": cases,
                "training": training,
                "test": [],
            }
        )
    )
    return root


@pytest.fixture
def make_msd():
    """``make_msd(root, cases=4, shape=(20, 24, 16), spacing=..., modality="MRI", offset=0.0)`` -> root."""
    return write_msd


def _rotation_z(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])


def _write_dicom_series(
    folder: Path,
    arr_zyx: np.ndarray,
    series_uid: str,
    *,
    direction: np.ndarray | None = None,
    spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
) -> sitk.Image:
    """Write one slice file per z with position/orientation tags; return the 3D image.

    ``direction`` (3x3, LPS columns; default 15 degrees about z): a third column against the
    normal of the first two stores the slices in reverse order."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(arr_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 30.0))
    direction = _rotation_z(15.0) if direction is None else np.asarray(direction, dtype=float)
    image.SetDirection(direction.ravel().tolist())
    rows = "\\".join(f"{v:.10f}" for v in list(direction[:, 0]) + list(direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    before = locale.setlocale(locale.LC_ALL)  # GDCM's DICOM writer sets the C locale for the whole process
    try:
        _write_slices(writer, image, folder, series_uid, rows)
    finally:
        locale.setlocale(locale.LC_ALL, before)
    return image


def _write_slices(writer: sitk.ImageFileWriter, image: sitk.Image, folder: Path, series_uid: str, rows: str) -> None:
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": series_uid + ".0",
            "0020|000e": series_uid,
            "0020|0052": series_uid + ".9",  # frame of reference: DICOM-SEG needs it
            "0020|0037": rows,
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0013": str(k + 1),
        }.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)


@pytest.fixture
def write_dicom_series():
    """``write_dicom_series(folder, array_zyx, series_uid, direction=None, spacing=(0.7, 0.8, 2.5))`` -> the
    SimpleITK image (default oblique: 15 degrees about z)."""
    return _write_dicom_series
