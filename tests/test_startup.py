"""The command line starts without torch or MONAI: --help and argument errors never import them."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCKED = """
import sys
for name in ("torch", "monai", "SimpleITK"):
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
def test_help_and_argument_errors_need_neither_torch_nor_monai(tmp_path, argv, code, text):
    result = subprocess.run([sys.executable, "-c", BLOCKED, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert text in result.stdout + result.stderr and "Traceback" not in result.stderr
