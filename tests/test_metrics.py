"""Tests for volseg.metrics: hand-computed Dice/IoU/HD95/surface Dice/volumes, the
empty-structure convention, BraTS regions, file and folder evaluation, summary and CSV."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volseg.errors import ConfigError, InputFileError, OutputExistsError, ShapeError
from volseg.metrics import (
    BRATS_REGIONS_2021,
    BRATS_REGIONS_2023,
    METRICS,
    SUMMARY_STATS,
    CaseResult,
    brats_regions,
    case_id,
    evaluate_case,
    evaluate_files,
    evaluate_folders,
    label_structures,
    summarise,
    write_report_csv,
)

ANISO = (1.0, 1.0, 3.0)  # mm: z voxels are 3x longer
ONE = {"s": [1]}


def _box(shape: tuple[int, ...], start: tuple[int, ...], size: int = 6, value: int = 1) -> np.ndarray:
    """A ``size``-cube (square in 2D) of ``value`` at ``start`` in a zero volume."""
    out = np.zeros(shape, dtype=np.uint8)
    out[tuple(slice(s, s + size) for s in start)] = value
    return out


def _metrics(pred: np.ndarray, ref: np.ndarray, spacing=ANISO, tol: float = 1.0) -> dict:
    return evaluate_case(pred, ref, spacing=spacing, structures=ONE, tolerance_mm=tol)["s"]


# --- overlap and volume -------------------------------------------------------------------


def test_dice_iou_and_counts_by_hand() -> None:
    ref = np.zeros((4, 4), dtype=np.int16)
    ref[0, :3] = 1
    ref[1, :3] = 1  # 6 voxels
    pred = np.zeros((4, 4), dtype=np.int16)
    pred[0, :] = 1  # 4 voxels, 3 of them in ref
    m = _metrics(pred, ref, spacing=(1.0, 1.0))
    assert (m["tp"], m["fp"], m["fn"]) == (3, 1, 3)
    assert m["dice"] == pytest.approx(2 * 3 / (4 + 6), rel=1e-6)
    assert m["iou"] == pytest.approx(3 / 7, rel=1e-6)
    assert list(m) == list(METRICS)


def test_each_label_is_its_own_structure() -> None:
    ref = np.array([[1, 1, 2, 2], [0, 0, 0, 0]])
    pred = np.array([[1, 2, 2, 2], [0, 0, 0, 1]])
    out = evaluate_case(pred, ref, spacing=(1, 1), structures=label_structures([1, 2]))
    assert set(out) == {"1", "2"}
    assert out["1"]["dice"] == pytest.approx(2 * 1 / (2 + 2), rel=1e-6)  # tp 1, pred 2, ref 2
    assert out["2"]["dice"] == pytest.approx(2 * 2 / (3 + 2), rel=1e-6)  # tp 2, pred 3, ref 2


def test_volumes_in_ml_use_the_spacing() -> None:
    ref = np.zeros((5, 5, 5), dtype=np.uint8)
    ref[:2, :5, 0] = 1  # 10 voxels
    pred = np.zeros_like(ref)
    pred[0, 0, :4] = 1  # 4 voxels
    m = _metrics(pred, ref, spacing=(0.5, 2.0, 3.0))  # 3 mm^3 per voxel
    assert m["volume_ref_ml"] == pytest.approx(10 * 3.0 / 1000)
    assert m["volume_pred_ml"] == pytest.approx(4 * 3.0 / 1000)


def test_torch_input_matches_numpy_including_uint16() -> None:
    ref, pred = _box((16,) * 3, (4, 4, 4)), _box((16,) * 3, (5, 4, 6))
    from_numpy = _metrics(pred, ref)
    as_tensor = evaluate_case(
        torch.from_numpy(pred.astype(np.int32)).to(torch.uint16),
        torch.from_numpy(ref.astype(np.int64)),
        spacing=ANISO,
        structures=ONE,
    )["s"]
    assert as_tensor == pytest.approx(from_numpy)
    assert 0.0 < from_numpy["dice"] < 1.0


# --- distances in mm on anisotropic voxels ---------------------------------------------------


@pytest.mark.parametrize(("shift", "expected_mm"), [((0, 0, 2), 6.0), ((2, 0, 0), 2.0), ((0, 2, 0), 2.0)])
def test_hd95_of_shifted_cubes_honours_anisotropic_spacing(shift, expected_mm) -> None:
    ref = _box((20,) * 3, (5, 5, 5))
    pred = _box((20,) * 3, tuple(5 + s for s in shift))
    assert _metrics(pred, ref)["hd95"] == pytest.approx(expected_mm)


def test_hd95_of_single_voxels_is_their_distance() -> None:
    ref, pred = np.zeros((9, 9, 9), np.uint8), np.zeros((9, 9, 9), np.uint8)
    ref[2, 3, 4], pred[5, 7, 4] = 1, 1  # 3 and 4 voxels apart in x and y, spacing 2 mm
    assert _metrics(pred, ref, spacing=(2.0, 2.0, 1.0))["hd95"] == pytest.approx(10.0)


def test_hd95_in_2d() -> None:
    ref, pred = _box((12, 12), (2, 2), 4), _box((12, 12), (2, 5), 4)
    assert _metrics(pred, ref, spacing=(0.5, 1.5))["hd95"] == pytest.approx(3 * 1.5)


def test_surface_dice_tolerance_includes_or_excludes_a_shift() -> None:
    ref = _box((20,) * 3, (5, 5, 5))
    along_z, along_x = _box((20,) * 3, (5, 5, 7)), _box((20,) * 3, (7, 5, 5))
    # 2 voxels in x = 2 mm: inside a 2 mm tolerance; 2 voxels in z = 6 mm: not.
    assert _metrics(along_x, ref, tol=2.0)["surface_dice"] == pytest.approx(1.0)
    partial = _metrics(along_z, ref, tol=2.0)["surface_dice"]
    assert 0.0 < partial < 1.0
    assert _metrics(along_z, ref, tol=6.0)["surface_dice"] == pytest.approx(1.0)
    # Tolerance 0: only boundary voxels on the other boundary count. Each cube has
    # 6^3 - 4^3 = 152 boundary voxels; the 4 shared z-layers share their 20-voxel rings.
    assert _metrics(along_z, ref, tol=0.0)["surface_dice"] == pytest.approx(160 / 304, rel=1e-6)


# --- empty structures ---------------------------------------------------------------------


def test_both_empty() -> None:
    empty = np.zeros((6, 6, 6), np.uint8)
    m = _metrics(empty, empty.copy())
    assert (m["dice"], m["iou"], m["hd95"], m["surface_dice"]) == (1.0, 1.0, 0.0, 1.0)
    assert (m["tp"], m["fp"], m["fn"], m["volume_pred_ml"], m["volume_ref_ml"]) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize("empty_side", ["prediction", "reference"])
def test_exactly_one_side_empty(empty_side: str) -> None:
    full, empty = _box((10,) * 3, (2, 2, 2), 3), np.zeros((10,) * 3, np.uint8)
    pred, ref = (empty, full) if empty_side == "prediction" else (full, empty)
    m = _metrics(pred, ref)
    assert (m["dice"], m["iou"], m["surface_dice"]) == (0.0, 0.0, 0.0)
    assert math.isnan(m["hd95"])
    assert (m["fp"], m["fn"]) == ((0, 27) if empty_side == "prediction" else (27, 0))


# --- BraTS regions ------------------------------------------------------------------------


def test_brats_regions_pick_the_convention() -> None:
    assert brats_regions([0, 1, 2, 4]) == BRATS_REGIONS_2021
    assert brats_regions(np.array([0, 1, 2, 3])) == BRATS_REGIONS_2023
    assert brats_regions([0, 1, 2]) == BRATS_REGIONS_2021  # ambiguous
    assert brats_regions([1, 3, 4]) == BRATS_REGIONS_2021  # both: ambiguous


def test_brats_2021_and_2023_labels_give_the_same_numbers() -> None:
    rng = np.random.default_rng(0)
    ref = rng.choice([0, 1, 2, 4], size=(12, 12, 8), p=[0.5, 0.2, 0.2, 0.1]).astype(np.uint8)
    pred = np.where(rng.random(ref.shape) < 0.2, rng.choice([0, 1, 2, 4], size=ref.shape), ref)
    pred = pred.astype(np.uint8)
    to_2023 = lambda a: np.where(a == 4, 3, a)  # noqa: E731
    old = evaluate_case(pred, ref, spacing=ANISO, structures=brats_regions(np.unique(ref)))
    new = evaluate_case(to_2023(pred), to_2023(ref), spacing=ANISO, structures=brats_regions(np.unique(to_2023(ref))))
    assert list(old) == ["WT", "TC", "ET"]
    assert list(new) == list(old)
    for name in old:
        assert new[name] == pytest.approx(old[name], nan_ok=True)
    assert old["WT"]["volume_ref_ml"] > old["TC"]["volume_ref_ml"] > old["ET"]["volume_ref_ml"] > 0


# --- bad input ----------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ShapeError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        evaluate_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), spacing=ANISO, structures=ONE)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"spacing": (1.0, 1.0)}, ShapeError, "2 values for a 3D"),
        ({"spacing": (1.0, 0.0, 1.0)}, ConfigError, "positive"),
        ({"structures": {}}, ConfigError, "no structures"),
        ({"structures": {"x": []}}, ConfigError, "'x'"),
        ({"structures": {"x": [1.5]}}, ConfigError, "integer"),
        ({"tolerance_mm": -1.0}, ConfigError, "tolerance_mm"),
    ],
)
def test_bad_arguments(kwargs, error, match) -> None:
    args = {"spacing": ANISO, "structures": ONE, **kwargs}
    with pytest.raises(error, match=match):
        evaluate_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), **args)


# --- files and folders --------------------------------------------------------------------

AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))
    return path


def test_evaluate_files_uses_the_reference_spacing_and_finds_labels(tmp_path: Path) -> None:
    ref = _box((16,) * 3, (4, 4, 4), 5)
    pred = _box((16,) * 3, (4, 4, 6), 5)  # 2 voxels = 6 mm along z
    pred[0, 0, 0] = 3  # a label only in the prediction: a false positive structure
    out = evaluate_files(_save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "r.nii.gz", ref))
    assert list(out) == ["1", "3"]
    assert out["1"]["hd95"] == pytest.approx(6.0)
    assert out["1"]["volume_ref_ml"] == pytest.approx(125 * 3.0 / 1000)
    assert out["3"]["dice"] == 0.0 and math.isnan(out["3"]["hd95"])


def test_evaluate_files_regions_and_labels(tmp_path: Path) -> None:
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[1:4, 1:4, 1:4], ref[2, 2, 2] = 2, 4
    p, r = _save(tmp_path / "p.nii", ref), _save(tmp_path / "r.nii", ref)
    assert set(evaluate_files(p, r, regions=BRATS_REGIONS_2021)) == {"WT", "TC", "ET"}
    assert evaluate_files(p, r, labels=[2])["2"]["tp"] == 26
    with pytest.raises(ConfigError, match="not both"):
        evaluate_files(p, r, labels=[1], regions=BRATS_REGIONS_2021)


@pytest.mark.parametrize("kind", ["shape", "affine"])
def test_evaluate_files_grid_mismatch_names_both_files(tmp_path: Path, kind: str) -> None:
    ref = _save(tmp_path / "ref.nii.gz", _box((8,) * 3, (1, 1, 1), 3))
    pred_array = _box((8, 8, 9) if kind == "shape" else (8,) * 3, (1, 1, 1), 3)
    pred_affine = AFFINE if kind == "shape" else np.diag([1.0, 1.0, 2.0, 1.0])
    pred = _save(tmp_path / "pred.nii.gz", pred_array, pred_affine)
    with pytest.raises(ShapeError, match=r"pred\.nii\.gz.*ref\.nii\.gz"):
        evaluate_files(pred, ref)


def test_case_id() -> None:
    assert case_id("a/case_001.nii.gz") == "case_001"
    assert case_id("BraTS-GLI-00001-000-seg.nii.gz") == "BraTS-GLI-00001-000"
    assert case_id("BraTS2021_00001_seg.nii.gz") == "BraTS2021_00001"
    assert case_id("x.mha") == "x"
    assert case_id("plans.json") is None and case_id(".tmp-1-x.nii.gz") is None


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir()
    refs.mkdir()
    shape = (10, 10, 10)
    _save(refs / "a_seg.nii.gz", _box(shape, (2, 2, 2), 4, value=1) + _box(shape, (0, 0, 0), 1, 2))
    _save(preds / "a.nii.gz", _box(shape, (2, 2, 3), 4, value=1))
    _save(refs / "b.nii.gz", _box(shape, (3, 3, 3), 3))  # no label 2 in b on either side
    _save(preds / "b.nii.gz", _box(shape, (3, 3, 3), 3))
    (preds / "summary.json").write_text("{}")  # not a volume: ignored
    return preds, refs


def test_evaluate_folders_pairs_cases_and_fills_absent_labels(tmp_path: Path) -> None:
    preds, refs = _folders(tmp_path)
    rows = evaluate_folders(preds, refs)
    assert [r.case for r in rows] == ["a", "b"]
    assert rows[0].prediction == preds / "a.nii.gz" and rows[0].reference == refs / "a_seg.nii.gz"
    assert rows[0].metrics["1"]["hd95"] == pytest.approx(3.0)  # one z voxel of 3 mm
    assert rows[1].metrics["1"]["dice"] == pytest.approx(1.0)
    # label 2 is in case a's reference only: missed there, both-empty in case b
    assert rows[0].metrics["2"]["dice"] == 0.0
    empty = evaluate_case(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), spacing=ANISO, structures=ONE)
    assert rows[1].metrics["2"] == empty["s"]


def test_evaluate_folders_names_missing_cases(tmp_path: Path, caplog) -> None:
    preds, refs = _folders(tmp_path)
    _save(refs / "c.nii.gz", _box((10,) * 3, (1, 1, 1), 2))
    _save(preds / "d.nii.gz", _box((10,) * 3, (1, 1, 1), 2))
    with pytest.raises(InputFileError, match=r"no prediction.*: c;.*no reference.*: d"):
        evaluate_folders(preds, refs, labels=[1])
    with caplog.at_level(logging.WARNING, logger="volseg.metrics"):
        rows = evaluate_folders(preds, refs, labels=[1], allow_missing=True)
    assert [r.case for r in rows] == ["a", "b"]
    assert "skipping unpaired cases" in caplog.text and ": c" in caplog.text


def test_evaluate_folders_without_pairs(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    with pytest.raises(InputFileError, match="no case to evaluate"):
        evaluate_folders(tmp_path / "p", tmp_path / "r")
    with pytest.raises(InputFileError, match="not a folder"):
        evaluate_folders(tmp_path / "nowhere", tmp_path / "r")


# --- summary and report -------------------------------------------------------------------


def _rows() -> list[CaseResult]:
    def metrics(dice: float, hd95: float) -> dict:
        return {"s": {m: 0 for m in METRICS} | {"dice": dice, "hd95": hd95}}

    return [
        CaseResult("a", metrics(0.5, 2.0)),
        CaseResult("b", metrics(1.0, math.nan)),
        CaseResult("c", metrics(0.0, 4.0)),
    ]


def test_summary_ignores_and_counts_nan() -> None:
    summary = summarise(_rows())["s"]
    assert summary["hd95"]["mean"] == pytest.approx(3.0)
    assert summary["hd95"]["std"] == pytest.approx(1.0)
    assert (summary["hd95"]["n"], summary["hd95"]["n_nan"]) == (2, 1)
    assert summary["dice"]["median"] == pytest.approx(0.5)
    assert (summary["dice"]["n"], summary["dice"]["n_nan"]) == (3, 0)
    all_nan = summarise([{"s": {"hd95": math.nan}}])["s"]["hd95"]
    assert math.isnan(all_nan["mean"]) and all_nan["n_nan"] == 1


def test_csv_round_trips(tmp_path: Path) -> None:
    rows = _rows()
    path = write_report_csv(rows, summarise(rows), tmp_path / "out" / "metrics.csv")
    with path.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["case", "structure", *METRICS]
    assert [r["case"] for r in table] == ["a", "b", "c", "mean", "std", "median", "ci95_low", "ci95_high", "n", "n_nan"]
    assert float(table[0]["dice"]) == 0.5 and math.isnan(float(table[1]["hd95"]))
    assert table[0]["tp"] == "0"
    mean = next(r for r in table if r["case"] == "mean")
    assert float(mean["hd95"]) == pytest.approx(3.0)
    assert next(r for r in table if r["case"] == "n_nan")["hd95"] == "1"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(OutputExistsError):
        write_report_csv(rows, summarise(rows), path)
    write_report_csv(rows[:1], summarise(rows[:1]), path, overwrite=True)
    assert len(path.read_text().splitlines()) == 1 + 1 + len(SUMMARY_STATS)
