"""scripts/gpu_check.py's plumbing on the CPU: a row never aborts the table, and the cheap rows run in dry mode."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # as an import would; the rows come from gpu_check_rows beside it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


@pytest.fixture
def check(gpu_check, tmp_path):
    return gpu_check.Check(gpu_check.DRY, tmp_path)


@pytest.mark.slow
def test_a_failing_row_is_one_fail_line_and_the_table_goes_on(gpu_check, check, capsys):
    def broken(_check):
        raise ValueError("no good\nsecond line")

    def skipped(_check):
        raise gpu_check.Skip("not here")

    def slow(_check):
        time.sleep(5)
        return "never"

    table = [("broken", "syncs", broken), ("skipped", "syncs", skipped), ("fine", "syncs", lambda _check: "42 | ok")]
    assert gpu_check.run_table(check, table) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "| check | result | details | s |" and len(lines) == 2 + 1 + 3 + 1
    assert lines[3].startswith("| broken | FAIL | ValueError: no good |")
    assert lines[4].startswith("| skipped | SKIP | not here |") and lines[5].startswith("| fine | PASS | 42 / ok |")
    status, text, seconds = gpu_check.run_row(check, slow, limit=1)
    assert status == "FAIL" and "RowTimeout: over its 1 s limit" in text and seconds < 3


def test_rows_after_the_budget_are_skipped(gpu_check, check, capsys):
    assert gpu_check.run_table(check, [("late", "syncs", lambda _check: "ran")], budget=0) == 0
    assert "| late | SKIP | out of time" in capsys.readouterr().out


@pytest.mark.slow
def test_dry_rows_train_slide_and_predict_on_the_cpu(gpu_check, check):
    assert "steps/s" in gpu_check.row_steps(check, "fp32")
    assert "masks agree" in gpu_check.row_window(check, None)
    assert "on the CPU" in gpu_check.row_peak_memory(check)
    with pytest.raises(gpu_check.Skip, match="CUDA only"):
        gpu_check.row_syncs(check)
    names = [name for name, _, _ in gpu_check.rows(gpu_check.GPU)]
    assert names[-1] == "pytest -m gpu" and "data wait, 8 workers" in names and len(names) == 12
