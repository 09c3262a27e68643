"""Process-wide settings: library calls leave them alone; the CLI applies them; runs record them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from volseg import runtime

PROBE = """
import json, sys, torch
from volseg import allocator, runtime
from volseg.inference import sliding_window_inference
from volseg.nn import create_model
network = create_model("unet", 3, 1, 2, features=[4, 8]).eval()
before = runtime.describe()
with torch.no_grad():
    sliding_window_inference(network, torch.rand(1, 1, 12, 12, 12), (8, 8, 8))
from volseg.training.run_log import RunLog
import tempfile
import pathlib
log = RunLog(pathlib.Path(tempfile.mkdtemp()), tensorboard=False)
log.record({"epoch": 1, "train_loss": 1.0, "val_dice_a": 0.5})  # draws curves.png
log.close()
after = runtime.describe()
print(json.dumps({"before": before, "after": after, "tuning": allocator.tuning_applied(),
                  "pyplot": "matplotlib.pyplot" in sys.modules}))
"""


def _probe() -> list[dict]:
    environment = dict(os.environ, VOLSEG_MALLOC_TUNING="1", OMP_NUM_THREADS="1")
    output = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in output.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_a_sliding_window_and_a_run_log_change_no_process_setting():
    result = _probe()[0]
    assert result["tuning"] is None  # the allocator was never touched
    assert result["before"] == result["after"]
    assert not result["pyplot"]  # curves.png drawn on a private canvas; the backend was never chosen


def test_apply_sets_threads_and_describe_reports_it():
    threads = torch.get_num_threads()
    try:
        record = runtime.apply(runtime.Runtime(malloc_tuning=False, threads=1))
        assert record["torch_threads"] == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(Exception, match="threads=0 is not valid"):
        runtime.apply(runtime.Runtime(threads=0))


def test_training_flags_are_put_back():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with runtime.training_flags(deterministic=True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    with runtime.training_flags(deterministic=False):
        assert torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


def test_cli_commands_that_compute_apply_the_settings(monkeypatch):
    from volseg import cli
    from volseg.cli.parser import build_parser

    calls = []
    monkeypatch.setattr(runtime, "apply", lambda *a: calls.append("apply") or {})
    assert cli.main(["models"]) == 0 and calls == []
    parser = build_parser()
    for argv in (["predict", "-m", "x", "-i", "y", "-o", "z"], ["train", "c.yaml"], ["evaluate-run", "r"]):
        assert parser.parse_args(argv).runtime is True
    assert not getattr(parser.parse_args(["models"]), "runtime", False)
