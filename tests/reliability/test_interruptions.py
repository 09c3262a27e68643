"""Runs killed with SIGKILL at random points, then started again, lose nothing.

* ``volseg train``: stopped before its first checkpoint, then SIGKILLed at seeded random
  moments (soon after a start, after a checkpoint exists, later) and during a checkpoint write,
  each time ``--resume``d, until it finishes: the final ``last.pt`` and ``best.pt`` hold the
  same weights as an uninterrupted run (deterministic CPU mode), and after every kill the run
  folder's ``last.pt`` loads.
* ``volseg train --resume RUN_DIR`` on a run stopped before its first checkpoint (a
  ``config.yaml``, no ``last.pt``) starts the run from epoch 1.
* A kill between the writes of ``best.pt`` and ``last.pt`` leaves them consistent once resumed.
* ``volseg predict`` on a folder killed while it writes: every output then present reads
  back on its input's grid; the rerun skips the finished cases, does the rest and removes the
  temporary files the kill left.

Subprocesses run with one thread each (deterministic and gentle on a shared machine).
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny_runs import tiny_data

from volseg.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict, dump_config
from volseg.io import read_volume
from volseg.nn import create_model
from volseg.training import trainer as training

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
AUGMENTED = {"flip": {"prob": 0.5}, "noise": {"prob": 0.5}, "gamma": {"prob": 0.5}}
NO_AUGMENTATION = {
    name: {"prob": 0.0}
    for name in ("rotate90", "affine", "elastic", "blur", "brightness", "contrast", "low_resolution")
}


def tiny_config(root: Path, epochs: int = 4):
    return config_from_dict(
        {
            "data": tiny_data(root, cache="memory"),
            "network": {"options": {"features": [4, 8]}},
            "sampling": {"patch_size": [16, 16, 16], "batch_size": 2, "foreground_ratio": 0.5},
            "augmentation": {**NO_AUGMENTATION, **AUGMENTED},
            "loss": {"deep_supervision": False},
            "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": epochs, "iterations_per_epoch": 2, "deterministic": True, "device": "cpu"},
        }
    )


def volseg(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "volseg", *args, "--quiet"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


#: ``volseg`` whose checkpoint writes take 0.2 s longer (a sleep before the fsync of the
#: temporary file), so that a kill "during a checkpoint write" lands there on any machine.
SLOW_WRITES = """
import sys, time
import volseg.io.atomic as atomic
fsync = atomic._fsync
def slow(path):
    if path.name.endswith(".pt"):
        time.sleep(0.2)
    fsync(path)
atomic._fsync = slow
from volseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def volseg_slow_writes(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITES, *args, "--quiet"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> None:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err


def kill_when(process: subprocess.Popen, ready, timeout: float = 60) -> bool:
    """SIGKILL ``process`` as soon as ``ready()`` is true; False if it exited first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)
    process.communicate()
    return False


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".tmp-*")) if folder.is_dir() else []


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_train_killed_at_random_points_resumes_to_the_same_weights(tmp_path, make_msd):
    data = make_msd(tmp_path / "msd", cases=4, shape=(20, 24, 16))
    config = tmp_path / "tiny.yaml"
    dump_config(tiny_config(data), config)
    reference, run = tmp_path / "reference", tmp_path / "run"
    straight = volseg("train", str(config), "-o", str(reference))  # runs while the interrupted one is set up
    rng = random.Random(20240611)

    def start() -> subprocess.Popen:
        if (run / "config.yaml").is_file():
            return volseg_slow_writes("train", "--resume", str(run))
        return volseg_slow_writes("train", str(config), "-o", str(run))

    kills: list[tuple[str, bool, list[str]]] = []

    def kill(what: str, process: subprocess.Popen, ready) -> None:
        killed = kill_when(process, ready)
        kills.append((what, killed, temporaries(run)))
        # After every kill the folder's last.pt, when there is one, is a complete checkpoint.
        if (run / "last.pt").exists():
            assert load_checkpoint(run / "last.pt")["training"]["epoch"] in range(4)

    # 1. Stopped before its first checkpoint: a run folder with config.yaml and no last.pt.
    finish(volseg("train", str(config), "-o", str(run), "--until-epoch", "0"))
    assert (run / "config.yaml").is_file() and not (run / "last.pt").exists()
    # 2. Killed at a random moment soon after the start (importing, loading the data, first epoch).
    began, delay = time.monotonic(), rng.uniform(0.3, 2.5)
    kill("random, early", start(), lambda: time.monotonic() - began > delay)
    # 3. Killed in the middle of writing a checkpoint (its temporary file exists).
    kill("checkpoint write", start(), lambda: any(name.endswith(("-last.pt", "-best.pt")) for name in temporaries(run)))
    # 4. Killed at a random moment after a checkpoint exists.
    after, seen = rng.uniform(0.0, 0.8), []

    def after_checkpoint() -> bool:
        if not seen and (run / "last.pt").exists():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > after

    kill("random, after a checkpoint", start(), after_checkpoint)
    # 5. Killed at a random moment, if the run has not finished by then (a fast machine may finish).
    began, delay = time.monotonic(), rng.uniform(0.5, 4.0)
    kill("random, late", start(), lambda: time.monotonic() - began > delay)
    finish(start())
    finish(straight)
    assert all(killed for _, killed, _ in kills[:3]), kills
    assert any(name.endswith(".pt") for name in kills[1][2]), f"no kill during a checkpoint write: {kills}"
    assert same_weights(run / "last.pt", reference / "last.pt")
    assert same_weights(run / "best.pt", reference / "best.pt")
    assert load_checkpoint(run / "last.pt")["training"]["epoch"] == 3
    columns = ("epoch", "train_loss", "lr", "val_dice_mean")
    assert [[row[c] for c in columns] for row in read_csv(run / "metrics.csv")] == [
        [row[c] for c in columns] for row in read_csv(reference / "metrics.csv")
    ]
    assert temporaries(run) == [], "the resumed run removes the temporary files a kill left"


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_from_epoch_1(tmp_path, make_msd, capsys):
    data = make_msd(tmp_path / "msd", cases=4, shape=(20, 24, 16))
    config = tiny_config(data, epochs=2)
    straight = training.train(config, tmp_path / "straight")
    run = tmp_path / "run"
    assert training.train(config, run, until_epoch=0).epochs_run == 0  # as a kill during the first epoch leaves it
    assert (run / "config.yaml").is_file() and not (run / "last.pt").exists()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0, capsys.readouterr().err
    assert [row["epoch"] for row in read_csv(run / "metrics.csv")] == ["1", "2"]
    assert straight.epochs_run == 2 and same_weights(run / "last.pt", tmp_path / "straight" / "last.pt")


class Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs."""


def test_a_kill_between_the_best_and_last_checkpoint_writes_is_repaired_by_resuming(tmp_path, make_msd, monkeypatch):
    data = make_msd(tmp_path / "msd", cases=4, shape=(20, 24, 16))
    config = tiny_config(data, epochs=2)
    training.train(config, tmp_path / "straight")
    run, real_save, writes = tmp_path / "run", training.save_checkpoint, []

    def save_then_die(checkpoint, path):
        real_save(checkpoint, path)
        writes.append(Path(path).name)
        if len(writes) == 3:  # epoch 2's first checkpoint file is complete, the second not begun
            raise Killed

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        training.train(config, run)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    assert sorted(writes[:2]) == ["best.pt", "last.pt"]  # epoch 1 was the best so far
    training.train(config, run, resume=True)
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert last["training"]["epoch"] == 1
    assert best["metrics"]["val_dice_mean"] == last["training"]["best_metric"]
    assert same_weights(run / "best.pt", tmp_path / "straight" / "best.pt")
    assert same_weights(run / "last.pt", tmp_path / "straight" / "last.pt")


# ----------------------------------------------------------------------------- prediction


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    network = create_model("unet", 3, 1, 3, features=[4, 8])
    config = config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "outer", 2: "inner"}, "channels": ["image"]},
            "network": {"options": {"features": [4, 8]}},
            "sampling": {"patch_size": [16, 16, 16]},
            "inference": {"overlap": 0.5, "sw_batch_size": 1},
        }
    )
    return save_checkpoint(build_checkpoint(network, config), path)


@pytest.mark.slow
def test_predict_killed_while_writing_a_folder_is_finished_by_rerunning(tmp_path):
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    names = [f"case_{i}" for i in range(8)]
    for i, name in enumerate(names):
        affine = np.diag([0.9, 1.1, 1.5 + 0.1 * i, 1.0])
        shape = (40 + i, 36, 28)
        nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine), str(inputs / f"{name}.nii.gz"))
    args = (
        "predict",
        "-m",
        str(model),
        "-i",
        str(inputs),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--save-probabilities",
        "--stats",
    )

    def labels_done() -> list[str]:
        return sorted(p.name for p in out.glob("case_*.nii.gz") if "_probabilities" not in p.name)

    # Killed when two cases are done and a file of the third is being written.
    killed = kill_when(volseg(*args), lambda: len(labels_done()) >= 2 and bool(temporaries(out)))
    assert killed
    done, left = labels_done(), temporaries(out)
    assert 2 <= len(done) < len(names) and left, (done, left)
    for name in done:  # finished outputs are complete and on their input's grid
        result, source = read_volume(out / name), read_volume(inputs / name)
        assert result.spatial_shape == source.spatial_shape
        np.testing.assert_allclose(result.affine, source.affine, atol=1e-6)
    # A stale temporary file of an unfinished case, as a kill at another moment leaves it.
    stale = out / ".tmp-0123456789ab-case_7.nii.gz"
    stale.write_bytes(b"\x1f\x8b half a file")
    rerun = subprocess.run(
        [sys.executable, "-m", "volseg", *args, "--quiet"], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    skipped = sorted(line.split(":")[0] + ".nii.gz" for line in rerun.stdout.splitlines() if "skipped" in line)
    assert skipped == done
    assert labels_done() == [f"{name}.nii.gz" for name in names]
    assert temporaries(out) == []
    for name in names:
        for path in (out / f"{name}.nii.gz", out / f"{name}_probabilities.nii.gz"):
            result, source = read_volume(path), read_volume(inputs / f"{name}.nii.gz")
            assert result.spatial_shape == source.spatial_shape
            np.testing.assert_allclose(result.affine, source.affine, atol=1e-6)
        assert (out / f"{name}_stats.json").is_file()
