"""Multi-node training as far as one machine shows it: the c10d rendezvous command line of a
2-node job, run as one node of two gloo processes; a rank killed mid-run, then the run resumed
by hand or by torchrun's own restart; workers that must not continue another run; ranks that see
different run folders."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_distributed import _free_port
from test_training import read_csv, tiny_config

from volseg.checkpoint import load_checkpoint
from volseg.config import Config, dump_config
from volseg.errors import OutputExistsError, TrainingError
from volseg.training import Trainer, train
from volseg.training.distributed import JOB_MARKER, init_distributed

EPOCHS = 4


@pytest.fixture
def dataset(tmp_path, make_msd):
    return make_msd(tmp_path / "msd", cases=4, shape=(24, 24, 20))


def _config(dataset: Path, **training) -> Config:
    return tiny_config(
        dataset,
        network={"options": {"features": [4, 8]}},
        sampling={"batch_size": 1},
        training={"epochs": EPOCHS, "iterations_per_epoch": 6, **training},
    )


def _torchrun(log: Path, *arguments: str, restarts: int = 0) -> subprocess.Popen:
    """``volseg train ARGUMENTS`` as node 0 of a c10d job of one node with two processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{_free_port()}", "--rdzv-id", "test-job"]
    command += ["--max-restarts", str(restarts), "-m", "volseg", "train", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as stream:  # a file, not a pipe: a full pipe would stall the job
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, text=True, env=env)


def _kill_rank_after_first_checkpoint(job: subprocess.Popen, run_dir: Path, rank: int) -> None:
    """SIGKILL the worker of ``rank`` (a child of torchrun) once ``run_dir`` holds last.pt."""
    deadline = time.monotonic() + 120
    while not (run_dir / "last.pt").exists():
        assert job.poll() is None and time.monotonic() < deadline, "the job wrote no checkpoint"
        time.sleep(0.02)
    children = subprocess.run(["pgrep", "-P", str(job.pid), "-f", "volseg"], capture_output=True, text=True)
    for pid in map(int, children.stdout.split()):
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environment:
            os.kill(pid, signal.SIGKILL)
            return
    raise AssertionError(f"no worker of rank {rank} among torchrun's children {children.stdout.split()}")


def _finished(job: subprocess.Popen, log: Path) -> str:
    assert job.wait(timeout=240) == 0, log.read_text()[-3000:]
    return log.read_text()


def _check_complete_run(run_dir: Path) -> None:
    """Every epoch once in metrics.csv, complete checkpoints of the last epoch, no temporaries."""
    assert [int(row["epoch"]) for row in read_csv(run_dir / "metrics.csv")] == list(range(1, EPOCHS + 1))
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == EPOCHS and last["training"]["epoch"] == EPOCHS - 1
    assert [row["epoch"] for row in last["training"]["history"]] == list(range(1, EPOCHS + 1))
    assert "state_dict" in load_checkpoint(run_dir / "best.pt")
    assert not list(run_dir.glob(".tmp-*"))


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_and_resume_continues_from_the_saved_epoch(tmp_path, dataset):
    config_file, run_dir = tmp_path / "tiny.yaml", tmp_path / "run"
    dump_config(_config(dataset), config_file)
    first = _torchrun(tmp_path / "first.log", str(config_file), "-o", str(run_dir))
    _kill_rank_after_first_checkpoint(first, run_dir, rank=1)
    assert first.wait(timeout=120) != 0  # torchrun stopped rank 0 and reports the failure
    saved = load_checkpoint(run_dir / "last.pt")  # complete: checkpoints are written atomically
    done = saved["training"]["epoch"] + 1
    assert 1 <= done < EPOCHS, "the run ended before the kill"

    second = _torchrun(tmp_path / "second.log", "--resume", str(run_dir))
    log = _finished(second, tmp_path / "second.log")
    assert f"resuming {run_dir} at epoch {done + 1} of {EPOCHS}" in log  # not from scratch
    _check_complete_run(run_dir)


@pytest.mark.slow
def test_workers_restarted_by_torchrun_continue_from_last_pt(tmp_path, dataset):
    config_file, run_dir = tmp_path / "tiny.yaml", tmp_path / "run"
    dump_config(_config(dataset), config_file)
    job = _torchrun(tmp_path / "job.log", str(config_file), "-o", str(run_dir), restarts=1)
    _kill_rank_after_first_checkpoint(job, run_dir, rank=0)  # the rank that writes
    log = _finished(job, tmp_path / "job.log")
    assert "Connection refused" not in log  # the restarted workers find each other (distributed._restart_store)
    assert "torchrun restarted the workers" in log
    resumed_at = {int(epoch) for epoch in re.findall(r"resuming \S+ at epoch (\d+) of", log)}
    assert len(resumed_at) == 1 and 2 <= min(resumed_at) <= EPOCHS  # both ranks, from the saved epoch
    _check_complete_run(run_dir)


def test_restarted_workers_continue_only_a_run_of_their_own_config(tmp_path, dataset, monkeypatch):
    config, run_dir = _config(dataset, epochs=2, iterations_per_epoch=1), tmp_path / "run"
    train(config, run_dir, until_epoch=1)
    with pytest.raises(OutputExistsError, match="--resume"):  # a first start never continues a run
        Trainer(config, run_dir)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(OutputExistsError, match="--resume"):  # nor a restart of a job that did not start it
        Trainer(config, run_dir)
    (run_dir / JOB_MARKER).write_text("job-1")  # as the job's first attempt records it
    with pytest.raises(OutputExistsError, match="--resume"):  # nor a restart another config's run
        Trainer(_config(dataset, epochs=3, iterations_per_epoch=1), run_dir)
    trainer = Trainer(config, run_dir)
    assert trainer.start_epoch == 1
    assert trainer.fit().epochs_run == 2
    # a restart of a job started with --overwrite continues the run, never starts it again
    assert Trainer(config, run_dir, overwrite=True).start_epoch == 2
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert Trainer(config, run_dir, overwrite=True).start_epoch == 0  # the first attempt: --overwrite starts again


def _start_in_own_folder(rank: int, port: int, config: Config, run_dirs: list[str], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    try:
        Trainer(config, run_dirs[rank], resume=True, context=init_distributed("cpu"))
        error = ""
    except TrainingError as raised:
        error = str(raised)
    Path(out_dir, f"rank{rank}.txt").write_text(error)


@pytest.mark.slow
def test_ranks_that_see_different_run_folders_stop_with_one_error(tmp_path, dataset):
    config = _config(dataset, epochs=2, iterations_per_epoch=1)
    train(config, tmp_path / "node0", until_epoch=1)  # node 0's folder holds epoch 1; node 1's is empty
    run_dirs = [str(tmp_path / "node0"), str(tmp_path / "node1")]
    mp.spawn(_start_in_own_folder, args=(_free_port(), config, run_dirs, str(tmp_path)), nprocs=2, join=True)
    for rank, run_dir in enumerate(run_dirs):  # both stop, each naming the folder it sees
        error = (tmp_path / f"rank{rank}.txt").read_text()
        assert error.startswith("the processes would start at different epochs (1 to 2)")
        assert f"same run folder {run_dir} (a shared filesystem" in error
