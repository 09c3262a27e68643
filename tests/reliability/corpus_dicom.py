"""Corpus rows for DICOM inputs that are not one evenly spaced stack of single-frame slices
(issue 16): missing slices and uneven spacing, a localizer in the series, a gantry tilt, enhanced
multi-frame files (the contract: test_bad_inputs.py). The folder with two series is among the
folder rows (corpus_predict_arguments.py). Builders use the ``write_dicom_series`` fixture
(``Ctx.write_dicom_series``) and tests/dicom_support.py; the multi-frame rows skip without highdicom."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from corpus_support import Ctx, Fails, Works, image, predict
from dicom_support import GANTRY_TILT, TILTED, enhanced_ct, rewrite_slice, same_grid_index

from volseg import io as vio

UID = "1.2.826.0.1.3680043.2.1125.16"
SIDEWAYS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # a sagittal-like localizer


def _slices(n: int = 6) -> np.ndarray:
    return np.ascontiguousarray(image((16, 16, n)).astype(np.int16).transpose(2, 1, 0))  # z, y, x


def series(n: int = 6, leave_out: tuple[int, ...] = (), **options) -> Callable[[Ctx], None]:
    """The series ``dicom/`` of ``n`` slices (write_dicom_series ``options``) without slices ``leave_out``."""

    def build(c: Ctx) -> None:
        c.write_dicom_series(c.d / "dicom", _slices(n), UID, **options)
        for k in leave_out:
            (c.d / "dicom" / f"slice{k:03d}.dcm").unlink()

    return build


def _rounded_positions(c: Ctx) -> None:
    """A tilted series whose positions are written to 3 decimals, as some scanners write them."""
    written = c.write_dicom_series(c.d / "dicom", _slices(8), UID, direction=TILTED, spacing=(0.7, 0.8, 1.3))
    for k in range(8):
        path = c.d / "dicom" / f"slice{k:03d}.dcm"
        rewrite_slice(path, path, {}, position=np.round(written.TransformIndexToPhysicalPoint((0, 0, k)), 3))


def _same_position(c: Ctx) -> None:
    series()(c)
    rewrite_slice(c.d / "dicom" / "slice004.dcm", c.d / "dicom" / "slice004b.dcm", {})


def _with_localizer(c: Ctx) -> None:
    """The series, a copy of it without the localizer (``clean/``), and a localizer of another
    orientation with the same series UID."""
    c.write_dicom_series(c.d / "clean", _slices(), UID)
    series()(c)
    c.write_dicom_series(c.d / "scout", _slices(1), UID, direction=SIDEWAYS)
    (c.d / "scout" / "slice000.dcm").rename(c.d / "dicom" / "scout.dcm")
    (c.d / "scout").rmdir()


def _localizers_only(c: Ctx) -> None:
    series(2)(c)
    for k in range(2):
        path = c.d / "dicom" / f"slice{k:03d}.dcm"
        rewrite_slice(path, path, {"0008|0008": "ORIGINAL\\PRIMARY\\LOCALIZER"})


def multi_frame(where: str = "mf.dcm", leave_out: tuple[str, ...] = (), no_pydicom: bool = False, **options):
    """An enhanced CT file ``where`` made from the series ``series/`` (its files in ``leave_out``
    left out); ``no_pydicom``: then pydicom is made unimportable, as if it were not installed."""

    def build(c: Ctx) -> None:
        c.write_dicom_series(c.d / "series", _slices(), UID, **options)
        enhanced_ct(c.d / "series", c.d / where, leave_out=leave_out)
        if no_pydicom:
            c.monkeypatch.setitem(sys.modules, "pydicom", None)

    return build


def _on_the_grid_of(folder: str) -> Callable[[Path], None]:
    """The output's voxel centres are those of the volume ``folder`` (beside ``out/``) reads as."""

    def check(output: Path) -> None:
        same_grid_index(vio.read_volume(output), vio.read_volume(output.parent.parent / folder), atol=1e-4)

    return check


def _sheared_by(degrees: float) -> Callable[[Path], None]:
    def check(output: Path) -> None:
        affine = vio.read_volume(output).affine[:3, :3]
        normal = np.cross(affine[:, 0], affine[:, 1])
        cosine = abs(normal @ affine[:, 2]) / np.linalg.norm(normal) / np.linalg.norm(affine[:, 2])
        np.testing.assert_allclose(np.degrees(np.arccos(cosine)), degrees, atol=0.05)

    return check


DICOM_INPUTS: list = [
    (
        "DICOM series with a missing slice",
        series(leave_out=(2,)),
        predict("dicom"),
        Fails(
            "slice gap 5 mm between slices 2 and 3 (slice001.dcm, slice003.dcm), elsewhere 2.5 mm "
            "(a missing slice?); volseg reads only evenly spaced slices"
        ),
    ),
    (
        "DICOM series with uneven spacing (2.5 mm, then 5 mm)",
        series(10, leave_out=(6, 8)),
        predict("dicom"),
        Fails("slice gap 5 mm between slices 6 and 7 (slice005.dcm, slice007.dcm), elsewhere 2.5 mm"),
    ),
    (
        "DICOM series with two slices at one position",
        _same_position,
        predict("dicom"),
        Fails("lie at the same position; volseg reads one image per position"),
    ),
    (
        "tilted DICOM series, positions rounded to 3 decimals (no false alarm)",
        _rounded_positions,
        predict("dicom"),
        Works(grid="dicom"),
    ),
    (
        "DICOM series with a gantry tilt (sheared slices)",
        series(direction=GANTRY_TILT),
        predict("dicom"),
        Works(grid="dicom", check=_sheared_by(11.31)),
    ),
    (
        "DICOM series with a localizer of another orientation (left out)",
        _with_localizer,
        predict("dicom"),
        Works(grid="dicom", stderr="left out scout.dcm (another orientation)", check=_on_the_grid_of("clean")),
    ),
    (
        "DICOM series of localizers only",
        _localizers_only,
        predict("dicom"),
        Fails("holds only localizer images (ImageType LOCALIZER: slice000.dcm, slice001.dcm); no volume to read"),
    ),
    (
        "enhanced multi-frame DICOM file",
        multi_frame(direction=TILTED),
        predict("mf.dcm"),
        Works(grid="mf.dcm", check=_on_the_grid_of("series")),
    ),
    (
        "enhanced multi-frame DICOM alone in the input folder",
        multi_frame("mf/mf.dcm", direction=TILTED),
        predict("mf"),
        Works(grid="mf", check=_on_the_grid_of("series")),
    ),
    (
        "enhanced multi-frame DICOM with a missing frame",
        multi_frame(leave_out=("slice002.dcm",)),
        predict("mf.dcm"),
        Fails("frame gap 5 mm between frames 2 and 3, elsewhere 2.5 mm (a missing frame?)"),
    ),
    (
        "enhanced multi-frame DICOM, pydicom not installed (simulated)",
        multi_frame(no_pydicom=True),
        predict("mf.dcm"),
        Fails("is a multi-frame DICOM; checking where its frames lie needs pydicom, which is not installed"),
    ),
]
