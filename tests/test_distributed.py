"""Data-parallel training: gloo processes on the CPU end with identical weights, also with deep
supervision and with inf/NaN losses on one rank; the process group is left at exit."""

from __future__ import annotations

import atexit
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_training import PoisonedLoss

from volseg.config import config_from_dict
from volseg.errors import TrainingError
from volseg.training import Trainer
from volseg.training.distributed import init_distributed, resolve_device

pytestmark = pytest.mark.slow  # gloo process groups: 15-30 s a test


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_rank(rank: int, world_size: int, port: int, values: dict, run_dir: str, out_dir: str, poison: dict) -> None:
    """Train as ``rank``; save its weights, its epochs' rows, and the TrainingError it raised (or None)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    exit_file = Path(out_dir) / f"rank{rank}-in-group-at-exit.txt"
    atexit.register(lambda: exit_file.write_text(str(dist.is_initialized())))  # runs after volseg's own handler
    trainer = Trainer(config_from_dict(values), run_dir, context=init_distributed("cpu"))
    trainer.loss = PoisonedLoss(trainer.loss, poison.get(rank, {}))
    rows, train_epoch = [], trainer.train_epoch
    trainer.train_epoch = lambda epoch, bar=None: rows.append(train_epoch(epoch, bar)) or rows[-1]
    error = None
    try:
        trainer.fit()
    except TrainingError as raised:
        error = str(raised)
    history = trainer.log.history if trainer.log else []
    torch.save(
        {"state": trainer.network.state_dict(), "rows": rows, "history": history, "error": error},
        f"{out_dir}/rank{rank}.pt",
    )


def _train_two_ranks(tmp_path, make_msd, *, network: dict, training: dict, poison: dict | None = None) -> list[dict]:
    root = make_msd(tmp_path / "msd", cases=4, shape=(24, 24, 20))
    values = {
        "data": {
            "root": str(root),
            "channels": ["MRI"],
            "labels": {0: "background", 1: "outer", 2: "inner"},
            "num_folds": 2,
            "num_workers": 0,
        },
        "network": {"options": {"norm": "instance", **network}},
        "sampling": {"patch_size": [16, 16, 16], "batch_size": 1},
        "loss": {"deep_supervision": bool(network.get("deep_supervision"))},
        "training": {"device": "cpu", **training},
    }
    args = (2, _free_port(), values, str(tmp_path / "run"), str(tmp_path), poison or {})
    mp.spawn(_run_rank, args=args, nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _same_weights(first: dict, second: dict) -> bool:
    return all(torch.equal(first["state"][key], second["state"][key]) for key in first["state"])


def test_two_gloo_ranks_end_with_identical_weights(tmp_path, make_msd):
    first, second = _train_two_ranks(
        tmp_path, make_msd, network={"features": [4, 8]}, training={"epochs": 2, "iterations_per_epoch": 3}
    )
    assert _same_weights(first, second)
    # The ranks trained on different patches, so the reduced loss is what both report.
    losses = [row["train_loss"] for row in first["rows"]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses == [row["train_loss"] for row in second["rows"]] == [row["train_loss"] for row in first["history"]]
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs, written by rank 0
    assert (tmp_path / "rank0-in-group-at-exit.txt").read_text() == "False"  # left the group at exit
    assert (tmp_path / "rank1-in-group-at-exit.txt").read_text() == "False"


def test_deep_supervision_on_four_stages_and_a_nan_loss_on_one_rank(tmp_path, make_msd):
    # The coarsest of the 3 outputs weighs 0, so its head never gets a gradient; rank 1's loss
    # is NaN at its second step, which both ranks skip.
    network = {"features": [4, 8, 16, 32], "deep_supervision": True}
    first, second = _train_two_ranks(
        tmp_path,
        make_msd,
        network=network,
        poison={1: {1: math.nan}},
        training={"epochs": 1, "iterations_per_epoch": 4},
    )
    assert first["error"] is None and second["error"] is None
    assert _same_weights(first, second)
    assert [row["skipped_steps"] for row in first["rows"]] == [row["skipped_steps"] for row in second["rows"]] == [1]
    assert all(math.isfinite(row["train_loss"]) for row in first["rows"] + second["rows"])


def test_every_rank_gives_up_together_when_one_rank_keeps_failing(tmp_path, make_msd):
    first, second = _train_two_ranks(
        tmp_path,
        make_msd,
        network={"features": [4, 8]},
        poison={1: {0: math.inf, 1: math.nan}},  # rank 0's losses stay finite
        training={"epochs": 1, "iterations_per_epoch": 3, "max_nonfinite_steps": 2},
    )
    assert first["error"] == second["error"]
    assert "inf or NaN for 2 steps in a row (training.max_nonfinite_steps=2)" in first["error"]
    assert _same_weights(first, second)


def test_local_rank_beyond_the_gpu_count_wraps_around(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", 3) == torch.device("cuda", 1)
    assert resolve_device("cuda", 0) == torch.device("cuda", 0)
