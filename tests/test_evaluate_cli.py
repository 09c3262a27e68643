"""`volseg evaluate` from the command line: files, folders, BraTS regions, CSV report."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np

from volseg.cli import main


def write_labels(path, array, spacing=(1.0, 1.0, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def blocks(shift=0, enhancing=4):
    labels = np.zeros((20, 20, 10), np.uint8)
    labels[4 + shift : 14 + shift, 4:14, 2:8] = 2
    labels[6 + shift : 12 + shift, 6:12, 3:7] = 1
    labels[8 + shift : 10 + shift, 8:10, 4:6] = enhancing
    return labels


def test_files_with_labels_and_a_csv_report(tmp_path, capsys):
    write_labels(tmp_path / "pred.nii.gz", blocks(shift=1))
    write_labels(tmp_path / "ref.nii.gz", blocks())
    report = tmp_path / "report.csv"
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "pred.nii.gz"),
                str(tmp_path / "ref.nii.gz"),
                "--labels",
                "1,2",
                "-o",
                str(report),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Dice" in out and out.count("±") >= 8
    rows = list(csv.DictReader(report.open()))
    assert {row["structure"] for row in rows if row.get("structure")} >= {"1", "2"}
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii.gz"), "-o", str(report)]) == 2


def test_perfect_prediction_scores_one(tmp_path, capsys):
    write_labels(tmp_path / "p" / "case1.nii.gz", blocks())
    write_labels(tmp_path / "r" / "case1.nii.gz", blocks())
    assert main(["evaluate", str(tmp_path / "p"), str(tmp_path / "r"), "--regions", "brats", "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("WT", "TC", "ET"))]
    assert len(lines) == 3 and all("1.0000 ± 0.0000" in line for line in lines)


def test_brats_conventions_score_alike(tmp_path, capsys):
    tables = []
    for convention, value in (("2021", 4), ("2023", 3)):
        write_labels(tmp_path / convention / "p.nii.gz", blocks(shift=1, enhancing=value))
        write_labels(tmp_path / convention / "r.nii.gz", blocks(enhancing=value))
        assert (
            main(
                [
                    "evaluate",
                    str(tmp_path / convention / "p.nii.gz"),
                    str(tmp_path / convention / "r.nii.gz"),
                    "--regions",
                    "brats",
                    "--quiet",
                ]
            )
            == 0
        )
        tables.append(capsys.readouterr().out.strip().splitlines())
    assert tables[0] == tables[1] and len(tables[0]) == 5  # header lines + WT, TC, ET


def test_bad_arguments(tmp_path, capsys):
    write_labels(tmp_path / "a.nii.gz", blocks())
    assert main(["evaluate", str(tmp_path / "a.nii.gz"), str(tmp_path), "--quiet"]) == 2
    assert main(["evaluate", str(tmp_path / "a.nii.gz"), str(tmp_path / "a.nii.gz"), "--labels", "x"]) == 2
    assert "--labels 'x' is not valid" in capsys.readouterr().err


def test_a_prediction_folders_side_outputs_are_not_cases(tmp_path, capsys):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[1:4, 1:4, 1:4] = 1
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(ref / "a_seg.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(pred / "a.nii.gz"))
    for side in ("a_probabilities.nii.gz", "a_uncertainty.nii.gz"):  # what --save-probabilities/--uncertainty add
        nib.save(nib.Nifti1Image(np.zeros((6, 6, 6, 2), np.float32), np.eye(4)), str(pred / side))
    assert main(["evaluate", str(pred), str(ref), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 case(s)") and "1.0000 ± 0.0000" in out
