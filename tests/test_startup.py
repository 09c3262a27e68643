"""The command line starts without torch, MONAI, numpy or nibabel: --help and argument errors never import them,
and prediction never imports MONAI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BLOCKED = """
import sys
for name in ("torch", "monai", "SimpleITK", "nibabel", "numpy"):
    sys.modules[name] = None  # importing any of them now raises ImportError
import volseg
from volseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (["--help"], 0, "predict"),
        (["predict", "--help"], 0, "--model"),
        (["train", "x.yaml", "--fold", "abc"], 2, "--fold 'abc' is not valid"),
        (["predict", "-m", "hippocampus", "-i", "no-such-file.nii.gz", "-o", "out.nii.gz"], 2, "no such file"),
        (["predict", "-m", "hippocampus", "-i", ".", "-o", "out", "--overlap", "2"], 2, "--overlap 2.0 is not valid"),
    ],
)
def test_help_and_argument_errors_import_no_torch_monai_numpy_or_nibabel(tmp_path, argv, code, text):
    result = subprocess.run([sys.executable, "-c", BLOCKED, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert text in result.stdout + result.stderr and "Traceback" not in result.stderr


SAMPLE = Path(__file__).resolve().parents[1] / "volseg" / "models" / "hippocampus_sample" / "hippocampus_166.nii.gz"
WITHOUT_MONAI = BLOCKED.replace('("torch", "monai", "SimpleITK", "nibabel", "numpy")', '("monai",)')


def test_predict_runs_without_monai(tmp_path):
    """MONAI's package import costs seconds: segmenting a file must not need it (nor import it)."""
    argv = ["predict", "-m", "hippocampus", "-i", str(SAMPLE), "-o", "seg.nii.gz", "--backend", "torch"]
    result = subprocess.run([sys.executable, "-c", WITHOUT_MONAI, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seg.nii.gz").is_file()
