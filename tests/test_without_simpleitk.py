"""Training and predicting NIfTI needs no SimpleITK (a GPU machine may lack its 50 MB wheel)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_training import tiny_config

from volseg.config import dump_config

SCRIPT = """
import sys
sys.modules["SimpleITK"] = None  # as if it were not installed: importing it raises ImportError
from volseg.cli import main
config, run, image, out = sys.argv[1:]
assert main(["train", config, "-o", run, "--quiet"]) == 0
assert main(["predict", "-m", run + "/last.pt", "-i", image, "-o", out, "--quiet"]) == 0
try:
    main(["predict", "-m", run + "/last.pt", "-i", image, "-o", out + "2", "--largest-component", "--debug"])
except ImportError as error:  # what needs SimpleITK says so when it is used
    print("needs:", error)
"""


@pytest.mark.slow
def test_train_and_predict_nifti_without_simpleitk(tmp_path, make_msd):
    data = make_msd(tmp_path / "msd", cases=4, shape=(24, 24, 20))
    config = tmp_path / "tiny.yaml"
    dump_config(tiny_config(data, training={"epochs": 1, "iterations_per_epoch": 2}), config)
    out = tmp_path / "case_000_seg.nii.gz"
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(config),
            str(tmp_path / "run"),
            str(data / "imagesTr" / "case_000.nii.gz"),
            str(out),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    assert "needs:" in result.stdout and "SimpleITK" in result.stdout
