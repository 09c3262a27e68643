"""The run report of folder runs (report.json, the QC page) and prediction under torchrun."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volseg.cli import main
from volseg.inference.report import OUTLIER_Z, flag_outliers
from volseg.io.atomic import file_sha256

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _folder(tmp_path: Path, count: int = 6) -> Path:
    """``count`` MRI-like crops of 30x40x30 voxels."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(count):
        array = rng.normal(100.0, 30.0, (30, 40, 30)).astype(np.float32)
        nib.save(nib.Nifti1Image(array, np.eye(4)), folder / f"c{i}.nii.gz")
    return folder


def _predict(folder: Path, output: Path, *extra: str) -> int:
    return main(["predict", "-m", "hippocampus", "-i", str(folder), "-o", str(output), "--quiet", *extra])


def test_a_folder_run_writes_a_report_with_versions_options_and_checksums(tmp_path):
    folder, out = _folder(tmp_path, 3), tmp_path / "out"
    assert _predict(folder, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "volseg-run-report"
    assert report["versions"]["volseg"] and report["versions"]["torch"] and report["versions"]["monai"]
    assert report["model"]["name"] == "hippocampus" and len(report["model"]["sha256"]) == 64
    options = report["options"]
    assert options["device"] == "cpu" and options["backend"] in ("torch", "openvino")
    assert options["mirroring_axes"] == [] and isinstance(options["window_batch"], int)
    assert report["summary"]["done"] == 3
    for row in report["cases"]:
        assert set(row["timings"]) == {"read", "predict", "write", "preview"}
        assert set(row["volumes_ml"]) == {"Anterior", "Posterior"}
        labels = out / f"{row['case_id']}.nii.gz"
        assert row["outputs"][str(labels)] == file_sha256(labels)
        voxels = np.asarray(nib.load(labels).dataobj)
        assert row["volumes_ml"]["Anterior"] == pytest.approx((voxels == 1).sum() / 1000.0)
        assert Path(row["preview"]).is_file()


def test_a_rerun_keeps_the_rows_of_the_cases_it_skips(tmp_path):
    folder, out = _folder(tmp_path, 3), tmp_path / "out"
    assert _predict(folder, out) == 0
    first = json.loads((out / "report.json").read_text())
    (out / "c1.nii.gz").unlink()
    assert _predict(folder, out) == 0
    second = json.loads((out / "report.json").read_text())
    statuses = {row["case_id"]: row["status"] for row in second["cases"]}
    assert statuses == {"c0": "done earlier", "c1": "done", "c2": "done earlier"}
    assert second["cases"][0]["volumes_ml"] == first["cases"][0]["volumes_ml"]


def test_a_failed_case_is_in_the_report(tmp_path, capsys):
    folder, out = _folder(tmp_path, 2), tmp_path / "out"
    (folder / "c9.nii.gz").write_bytes(b"not a volume")
    assert _predict(folder, out) == 2
    rows = {row["case_id"]: row for row in json.loads((out / "report.json").read_text())["cases"]}
    assert rows["c9"]["status"] == "failed" and "c9.nii.gz" in rows["c9"]["error"]
    assert rows["c0"]["status"] == "done"


def test_no_report_for_one_named_file_or_with_no_report(tmp_path):
    folder = _folder(tmp_path, 1)
    assert _predict(folder / "c0.nii.gz", tmp_path / "one.nii.gz") == 0
    assert not (tmp_path / "report.json").exists()
    assert _predict(folder, tmp_path / "out", "--no-report") == 0
    assert not (tmp_path / "out" / "report.json").exists()


def test_outliers_by_robust_z_score():
    volumes = [10.0, 11.0, 9.0, 10.5, 9.5, 30.0, 0.0]
    cases = [{"case_id": str(i), "status": "done", "volumes_ml": {"a": v}} for i, v in enumerate(volumes)]
    flag_outliers(cases)
    # median 10, MAD 0.5 (|v - 10|: 0, 1, 1, 0.5, 0.5, 20, 10) -> scale 0.7413; 30 and 0 are far beyond OUTLIER_Z
    assert abs(30.0 - 10.0) / (1.4826 * 0.5) > OUTLIER_Z > abs(11.0 - 10.0) / (1.4826 * 0.5)
    assert [c["outliers"] for c in cases] == [[], [], [], [], [], ["a"], ["a", "empty"]]
    few = [
        {"case_id": "x", "status": "done", "volumes_ml": {"a": 1.0}},
        {"case_id": "y", "status": "done", "volumes_ml": {"a": 99.0}},
    ]
    flag_outliers(few)
    assert all(c["outliers"] == [] for c in few)  # too few cases to call anything an outlier


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package for the QC page test")
def test_the_qc_page_loads_in_chromium_without_console_errors_and_shows_every_case(tmp_path):
    folder, out = _folder(tmp_path, 5), tmp_path / "out"
    assert _predict(folder, out) == 0
    page = out / "report.html"
    for source in re.findall(r'<img src="([^"]+)"', page.read_text()):
        assert (out / source).is_file(), source
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--enable-logging=stderr", "--v=0", "--log-level=0",
        "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CONSOLE" not in result.stderr, [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    for i in range(5):
        assert f'id="case-c{i}"' in result.stdout
    assert result.stdout.count("<img ") == 5


def _torchrun(folder: Path, out: Path, ranks: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    command += ["-m", "volseg", "predict", "-m", "hippocampus", "-i", str(folder), "-o", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: np.asarray(nib.load(p).dataobj).tobytes() for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.slow
def test_two_torchrun_ranks_write_what_one_process_writes(tmp_path):
    folder = _folder(tmp_path, 8)
    assert _predict(folder, tmp_path / "one") == 0
    (tmp_path / "two").mkdir()
    for rank in (1, 2):  # parts an earlier, failed job left: not this job's
        stale = {"header": {}, "cases": [{"case_id": f"stale{rank}", "status": "failed", "error": "old"}]}
        (tmp_path / "two" / f"report.part-{rank}.json").write_text(json.dumps(stale))
    run = _torchrun(folder, tmp_path / "two", 2)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert _outputs(tmp_path / "two") == _outputs(tmp_path / "one") and len(_outputs(tmp_path / "one")) == 8
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["options"]["processes"] == 2 and report["summary"]["done"] == 8
    assert [row["case_id"] for row in report["cases"]] == [f"c{i}" for i in range(8)]
    assert not list((tmp_path / "two").glob("report.part-*.json"))


@pytest.mark.slow
def test_a_killed_rank_leaves_no_partial_file_and_a_rerun_completes(tmp_path):
    folder, out = _folder(tmp_path, 8), tmp_path / "out"
    run = _torchrun(folder, out, 2)
    deadline = time.monotonic() + 240
    while len(list(out.glob("*.nii.gz"))) < 2 and time.monotonic() < deadline:  # both ranks are working
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", "-P", str(run.pid), "volseg"], capture_output=True, text=True)
    pids = [int(p) for p in workers.stdout.split()]
    assert pids, "no torchrun worker found"
    os.kill(pids[-1], signal.SIGKILL)
    run.communicate(timeout=300)
    assert run.returncode != 0  # torchrun reports the killed rank and stops the other
    for path in out.glob("*.nii.gz"):  # whatever exists is complete
        assert np.asarray(nib.load(path).dataobj).shape == (30, 40, 30)
    assert _predict(folder, out) == 0
    assert len(_outputs(out)) == 8 and not list(out.glob(".tmp-*"))
