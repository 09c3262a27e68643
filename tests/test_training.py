"""Training on tiny generated data: learning, exact resume, run folders, CLI, 2D and regions,
and what a GPU run meets: a checkpoint loaded for another device, inf/NaN losses, DDP + compile."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import weakref

import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, RandomizableTransform
from tiny_runs import NO_AUGMENTATION, tiny_data

import volseg.data.loader as loader_module
import volseg.training.trainer as training_module
from volseg.checkpoint import capture_rng_state, load_checkpoint, model_from_checkpoint, restore_rng_state
from volseg.cli import main
from volseg.config import config_from_dict, dump_config
from volseg.data.loader import resolve_num_workers, seed_for, training_loader
from volseg.errors import CheckpointError, ConfigError, OutputExistsError, TrainingError
from volseg.training import Trainer, resolve_precision, train
from volseg.training.distributed import DistributedContext


def tiny_config(root, **sections):
    values = {
        "data": tiny_data(root),
        "network": {"options": {"features": [8, 16]}},
        "sampling": {"patch_size": [16, 16, 16], "batch_size": 2, "foreground_ratio": 0.5},
        "augmentation": NO_AUGMENTATION,
        "loss": {"deep_supervision": False},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 3, "iterations_per_epoch": 8, "deterministic": True},
    }
    for section, options in sections.items():
        values[section] = {**values.get(section, {}), **options}
    return config_from_dict(values)


@pytest.fixture
def dataset(tmp_path, make_msd):
    return make_msd(tmp_path / "msd", cases=4, shape=(24, 24, 20))


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_loss_falls_and_validation_dice_rises(tmp_path, dataset):
    result = train(tiny_config(dataset), tmp_path / "run")
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["val_dice_outer"] > 0.8
    assert result.best_metric == max(row["val_dice_mean"] for row in result.history)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "config.yaml",
        "splits.json",
        "last.pt",
        "best.pt",
        "metrics.csv",
        "curves.png",
        "tensorboard",
        "runtime.json",
    } <= names
    assert "cudnn_benchmark" in json.loads((tmp_path / "run" / "runtime.json").read_text())
    assert [int(row["epoch"]) for row in read_csv(tmp_path / "run" / "metrics.csv")] == [1, 2, 3]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert "training" not in best and best["metrics"]["val_dice_mean"] == result.best_metric
    assert model_from_checkpoint(best).num_classes == 3


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path, dataset):
    augmented = {name: {"prob": 0.5} for name in ("flip", "affine", "noise", "gamma")}
    options = dict(augmentation=augmented, data={"num_workers": 1}, training={"iterations_per_epoch": 3, "epochs": 4})
    config = tiny_config(dataset, **options)
    straight = train(config, tmp_path / "straight")
    assert train(config, tmp_path / "resumed", until_epoch=2).epochs_run == 2  # interrupted after epoch 2
    resumed = train(config, tmp_path / "resumed", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert [row["train_loss"] for row in straight.history] == [row["train_loss"] for row in resumed.history]
    assert len(read_csv(tmp_path / "resumed" / "metrics.csv")) == 4


def test_init_weights_start_a_run_from_another_runs_network(tmp_path, dataset):
    train(tiny_config(dataset, training={"epochs": 1, "iterations_per_epoch": 2}), tmp_path / "a")
    source_path = str(tmp_path / "a" / "last.pt")
    source = load_checkpoint(source_path)["state_dict"]
    fresh = Trainer(tiny_config(dataset), tmp_path / "fresh").network.state_dict()
    assert not all(torch.equal(fresh[key], value) for key, value in source.items())  # not the same by chance
    tuned = Trainer(tiny_config(dataset, training={"init_weights": source_path}), tmp_path / "b")
    assert all(torch.equal(tuned.network.state_dict()[key], value) for key, value in source.items())
    assert "init_weights: " + source_path in (tmp_path / "b" / "config.yaml").read_text()
    deeper = tiny_config(
        dataset, network={"options": {"features": [8, 16, 32]}}, training={"init_weights": source_path}
    )
    with pytest.raises(CheckpointError, match=r"training.init_weights='.*last.pt' does not fit this network: "):
        Trainer(deeper, tmp_path / "c")


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path, dataset):
    config = tiny_config(dataset, training={"epochs": 1, "iterations_per_epoch": 1})
    train(config, tmp_path / "run")
    with pytest.raises(OutputExistsError, match="--resume"):
        train(config, tmp_path / "run")
    assert train(config, tmp_path / "run", overwrite=True).epochs_run == 1


def test_checkpoints_record_the_training_fingerprint(tmp_path, dataset, monkeypatch):
    from volseg.inference.predictor import Predictor
    from volseg.io import read_volume

    config = tiny_config(dataset, training={"epochs": 2, "iterations_per_epoch": 1})
    train(config, tmp_path / "run", until_epoch=1)
    fingerprint = load_checkpoint(tmp_path / "run" / "best.pt")["fingerprint"]
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())[0]
    assert fingerprint["version"] == 1 and fingerprint["cases"] == len(set(splits["train"]) - set(splits["validation"]))
    assert fingerprint["field_of_view"] == [[20.0, 20.0], [20.0, 20.0], [16.0, 16.0]]  # the non-zero box, in mm
    assert fingerprint["spacing"] == [[1.0, 1.0]] * 3 and fingerprint["channels"][0]["modality"] == "MRI"

    def measured_again(*args, **kwargs):
        raise AssertionError("a resumed run takes the fingerprint from last.pt")

    monkeypatch.setattr(training_module, "fingerprint_images", measured_again)
    train(config, tmp_path / "run", resume=True)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["fingerprint"] == fingerprint
    held_out = read_volume(dataset / "imagesTr" / f"{splits['val'][0]}.nii.gz")
    prediction = Predictor.from_checkpoint(tmp_path / "run" / "best.pt").predict_volumes([held_out], strict=True)
    assert prediction.warnings == []  # a case of the same dataset fits


def test_cli_trains_and_resumes(tmp_path, dataset, capsys):
    config_path = tmp_path / "tiny.yaml"
    dump_config(tiny_config(dataset, training={"epochs": 1, "iterations_per_epoch": 2}), config_path)
    run = tmp_path / "run"
    assert main(["train", str(config_path), "-o", str(run), "--quiet"]) == 0
    assert main(["train", "--resume", str(run), "--set", "training.epochs=3", "--until-epoch", "2", "--quiet"]) == 0
    assert len(read_csv(run / "metrics.csv")) == 2
    assert main(["train", "--resume", str(run), "--set", "training.epochs=3", "--quiet"]) == 0
    assert len(read_csv(run / "metrics.csv")) == 3
    assert main(["train", str(config_path), "--set", "training.epocs=2", "--quiet"]) == 2
    assert "did you mean 'training.epochs'" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2


def test_two_dimensional_network_trains_on_slices(tmp_path, dataset):
    config = tiny_config(
        dataset,
        network={"spatial_dims": 2, "options": {"features": [8, 16]}},
        sampling={"patch_size": [16, 16]},
        training={"epochs": 1, "iterations_per_epoch": 4},
    )
    result = train(config, tmp_path / "run")
    assert 0.0 <= result.history[0]["val_dice_outer"] <= 1.0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["network"]["spatial_dims"] == 2


def test_overlapping_regions_train_with_sigmoid_outputs(tmp_path, dataset):
    config = tiny_config(dataset, data={"regions": {"whole": [1, 2], "core": [2]}}, training={"epochs": 1})
    result = train(config, tmp_path / "run")
    assert {"val_dice_whole", "val_dice_core"} <= set(result.history[0])
    assert load_checkpoint(tmp_path / "run" / "last.pt")["network"]["num_classes"] == 2


def test_border_weighted_cross_entropy_trains_with_its_weight_maps(tmp_path, dataset):
    from volseg.data.datasets import find_cases
    from volseg.data.transforms import items_from_cases, training_transforms

    config = tiny_config(dataset, loss={"name": "weighted_ce"}, training={"epochs": 1, "iterations_per_epoch": 3})
    item = training_transforms(config)(items_from_cases(find_cases(dataset).cases)[:1][0])
    assert item["weight"].shape == item["label"].shape and item["weight"].min() > 0
    assert item["weight"].max() > 1  # rarer classes and the gaps between objects weigh more
    result = train(config, tmp_path / "run")
    assert result.history[0]["train_loss"] > 0


def test_early_stopping_after_validations_without_improvement(tmp_path, dataset):
    config = tiny_config(dataset, optimizer={"name": "sgd", "lr": 1e-12}, training={"epochs": 6, "early_stopping": 1})
    assert train(config, tmp_path / "run").epochs_run == 2


def test_precision_defaults_to_fp32_on_cpu(caplog):
    assert resolve_precision("auto", torch.device("cpu")) is None
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert "slower" in caplog.text


class PoisonedLoss(torch.nn.Module):
    """``loss`` times ``bad[call]`` (inf or NaN) on the given calls (0-based): an fp16 overflow or bad batch."""

    def __init__(self, loss: torch.nn.Module, bad: dict[int, float]) -> None:
        super().__init__()
        self.loss, self.bad, self.calls = loss, dict(bad), 0

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        loss, call = self.loss(*args), self.calls
        self.calls += 1
        return loss * self.bad[call] if call in self.bad else loss


def test_the_head_the_loss_weighs_zero_is_frozen_but_kept(tmp_path, dataset):
    network = {"features": [4, 8, 16, 32], "deep_supervision": True}  # 3 outputs, the coarsest weighed 0
    config = tiny_config(dataset, network={"options": network}, loss={"deep_supervision": True})
    trainer = Trainer(config, tmp_path / "run")
    frozen = [name for name, p in trainer.network.named_parameters() if not p.requires_grad]
    assert frozen == ["heads.2.weight", "heads.2.bias"]
    assert {"heads.2.weight", "heads.2.bias"} <= set(trainer.network.state_dict())
    without = tiny_config(dataset, network={"options": {"features": [4, 8, 16, 32]}})  # heads 1 and 2 are not called
    assert sum(not p.requires_grad for p in Trainer(without, tmp_path / "other").network.parameters()) == 4


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # weights onto meta are a no-op
def test_resume_onto_another_device_restores_rng_and_keeps_adam_steps_on_the_cpu(tmp_path, dataset):
    config = tiny_config(dataset, training={"epochs": 2, "iterations_per_epoch": 2})
    train(config, tmp_path / "run", until_epoch=1)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["training"]["rng"]["torch"]
    torch.manual_seed(123)
    # The meta device stands in for a GPU: a checkpoint mapped onto it holds no CPU tensors.
    elsewhere = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("meta"))
    trainer = Trainer(config, tmp_path / "run", resume=True, context=elsewhere)
    assert trainer.start_epoch == 1
    assert torch.equal(torch.get_rng_state(), saved)
    states = list(trainer.optimizer.state.values())
    assert states and all(s["step"].device.type == "cpu" and s["exp_avg"].device.type == "meta" for s in states)


def test_restore_rng_state_takes_a_state_that_is_not_a_cpu_byte_tensor():
    state = capture_rng_state()
    expected = torch.rand(4)
    state["torch"] = state["torch"].long()
    torch.manual_seed(1)
    restore_rng_state(state)
    assert torch.equal(torch.rand(4), expected)


def test_steps_with_an_inf_or_nan_loss_are_skipped_counted_and_logged(tmp_path, dataset, caplog):
    config = tiny_config(dataset, training={"epochs": 1, "iterations_per_epoch": 3, "max_nonfinite_steps": 2})
    trainer = Trainer(config, tmp_path / "run")
    trainer.loss = PoisonedLoss(trainer.loss, {0: math.inf, 2: math.nan})  # never 2 in a row
    with caplog.at_level(logging.WARNING, logger="volseg.training.trainer"):
        result = trainer.fit()
    row = result.history[0]
    assert row["skipped_steps"] == 2 and math.isfinite(row["train_loss"])
    states = list(trainer.optimizer.state.values())
    assert states and all(s["step"].item() == 1 for s in states)  # one update, from the one finite step
    assert all(p.grad is None for p in trainer.network.parameters())  # the last, skipped step left no gradients
    assert caplog.text.count("step skipped") == 2
    assert read_csv(tmp_path / "run" / "metrics.csv")[0]["skipped_steps"] == "2"


def test_a_run_gives_up_after_max_nonfinite_steps_in_a_row(tmp_path, dataset):
    config = tiny_config(dataset, training={"epochs": 1, "iterations_per_epoch": 3, "max_nonfinite_steps": 2})
    trainer = Trainer(config, tmp_path / "run")
    trainer.loss = PoisonedLoss(trainer.loss, {0: math.nan, 1: math.inf})
    with pytest.raises(TrainingError, match=r"inf or NaN for 2 steps in a row \(training.max_nonfinite_steps=2\)"):
        trainer.fit()
    assert not trainer.optimizer.state  # no update was taken
    with pytest.raises(ConfigError, match="training.max_nonfinite_steps=0 is not valid"):
        tiny_config(dataset, training={"max_nonfinite_steps": 0})


def test_compile_wraps_the_ddp_model(tmp_path, dataset, monkeypatch):
    class RecordingDDP(torch.nn.Module):  # DDP's place in the wrapping, without a process group
        def __init__(self, module: torch.nn.Module, **options) -> None:
            super().__init__()
            self.module = module

    class Compiled(torch.nn.Module):  # torch.compile's place, without importing inductor (slow, and
        def __init__(self, module: torch.nn.Module) -> None:  # its templates need a UTF-8 locale)
            super().__init__()
            self.module = module

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", RecordingDDP)
    monkeypatch.setattr(torch, "compile", Compiled)
    monkeypatch.setattr(training_module.distributed, "check_same_start", lambda *args: None)  # no process group
    two_ranks = DistributedContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    trainer = Trainer(tiny_config(dataset, training={"compile": True}), tmp_path / "run", context=two_ranks)
    assert isinstance(trainer.model, Compiled)
    assert isinstance(trainer.model.module, RecordingDDP) and trainer.model.module.module is trainer.network


class Draw(RandomizableTransform):
    """A stand-in augmentation: draws from its own generator and torch's and NumPy's global ones."""

    def __call__(self, item):
        return {
            "index": item["index"],
            "own": float(self.R.uniform()),
            "torch": float(torch.rand(())),
            "numpy": float(np.random.rand()),
            "pid": os.getpid(),
        }


def run_epoch(loader, epoch):
    """``(batches as lists of values, the pids that made them)`` of one epoch."""
    loader.sampler.set_epoch(epoch)
    batches = list(loader)
    values = [[b[k].tolist() for k in ("index", "own", "torch", "numpy")] for b in batches]
    return values, {pid for b in batches for pid in b["pid"].tolist()}


def test_loader_workers_persist_and_patches_depend_on_seed_epoch_rank_only():
    dataset = Dataset([{"index": i} for i in range(5)], Compose([Draw(prob=1.0)]))
    options = dict(batch_size=2, steps=3, seed=7)
    in_process = training_loader(dataset, num_workers=0, **options)
    before = torch.get_rng_state()
    epoch0, _ = run_epoch(in_process, 0)
    assert torch.equal(torch.get_rng_state(), before)  # the training process's own stream is left alone
    epoch1, _ = run_epoch(in_process, 1)
    assert epoch0 != epoch1 and epoch0 != run_epoch(training_loader(dataset, num_workers=0, rank=1, **options), 0)[0]
    workers = training_loader(dataset, num_workers=2, **options)
    assert run_epoch(workers, 0)[0] == epoch0  # the same patches whichever process makes them
    values, first = run_epoch(workers, 0)
    second = run_epoch(workers, 1)
    assert second[0] == epoch1 and second[1] == first and os.getpid() not in first  # the same two workers
    resumed = training_loader(dataset, num_workers=2, **options)  # started at epoch 1, as after a resume
    assert run_epoch(resumed, 1)[0] == epoch1


def test_num_workers_auto_shares_the_cores_among_the_ranks(monkeypatch, dataset):
    for cores, ranks, expected in [(2, 1, 1), (1, 1, 0), (16, 1, 12), (64, 8, 7), (8, 8, 0)]:
        # resolve_num_workers calls it right here, within this iteration
        monkeypatch.setattr(loader_module, "available_cores", lambda cores=cores: cores)
        assert resolve_num_workers("auto", ranks) == expected
    assert resolve_num_workers(3, 8) == 3
    assert tiny_config(dataset, data={"num_workers": "auto"}).data.num_workers == "auto"
    with pytest.raises(ConfigError, match=r"data.num_workers=-1 is not valid; allowed: an integer >= 0 or 'auto'"):
        tiny_config(dataset, data={"num_workers": -1})
    with pytest.raises(ConfigError, match="data.num_workers='many' is not valid"):
        tiny_config(dataset, data={"num_workers": "many"})


def test_a_run_builds_one_loader_frees_it_and_restores_the_determinism_flags(tmp_path, dataset, monkeypatch):
    built, flags_inside = [], []
    monkeypatch.setattr(
        training_module, "training_loader", lambda *a, **k: built.append(training_loader(*a, **k)) or built[-1]
    )
    config = tiny_config(dataset, data={"num_workers": 1}, training={"epochs": 2, "iterations_per_epoch": 2})
    trainer = Trainer(config, tmp_path / "run")
    step = trainer._step
    trainer._step = lambda *a: flags_inside.append(torch.are_deterministic_algorithms_enabled()) or step(*a)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        trainer.fit()
        assert flags_inside == [True] * 4  # training.deterministic holds while it trains ...
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark  # ... only
    finally:
        torch.backends.cudnn.benchmark = benchmark
    assert len(built) == 1  # one loader (and one set of workers) for both epochs
    loader = weakref.ref(built.pop())
    assert loader() is None  # freed when fit returned: its workers have exited


def test_memory_cache_under_ddp_logs_that_each_rank_holds_a_copy(tmp_path, dataset, monkeypatch, caplog):
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, **options: module)
    monkeypatch.setattr(training_module.distributed, "check_same_start", lambda *args: None)  # no process group
    two_ranks = DistributedContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="volseg.training.trainer"):
        Trainer(tiny_config(dataset, data={"cache": "disk"}), tmp_path / "disk", context=two_ranks)
        assert "data.cache" not in caplog.text
        Trainer(tiny_config(dataset, data={"cache": "memory"}), tmp_path / "memory", context=two_ranks)
    assert "copy of the preprocessed training cases in each of the 2 processes" in caplog.text
    assert "data.cache=disk" in caplog.text


# ----------------------------------------------------------------------------- CUDA only (pytest -m gpu)


def cuda_config(root, **training):
    return tiny_config(root, training={"device": "cuda", "epochs": 3, "iterations_per_epoch": 8, **training})


@pytest.mark.gpu
def test_fp16_with_the_gradient_scaler_trains_on_cuda(tmp_path, dataset):
    trainer = Trainer(cuda_config(dataset, precision="fp16", deterministic=False), tmp_path / "run")
    assert trainer.context.device.type == "cuda" and trainer.scaler is not None
    history = trainer.fit().history
    assert all(math.isfinite(row["train_loss"]) for row in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0 < trainer.scaler.get_scale() and trainer.optimizer.state  # the scaler stepped the optimiser


@pytest.mark.gpu
def test_bf16_autocast_trains_on_cuda_without_a_scaler(tmp_path, dataset):
    trainer = Trainer(cuda_config(dataset, precision="bf16", deterministic=False), tmp_path / "run")
    assert trainer.autocast_dtype is torch.bfloat16 and trainer.scaler is None
    dtypes = []

    def record(module, args, output):  # the training steps' outputs only (validation windows aside)
        if module.training:
            dtypes.append(output.dtype)

    trainer.network.register_forward_hook(record)
    history = trainer.fit().history
    assert set(dtypes) == {torch.bfloat16}
    assert all(math.isfinite(row["train_loss"]) for row in history)


@pytest.mark.gpu
def test_resume_on_cuda_restores_the_states_and_reseeds_the_gpu_generator(tmp_path, dataset):
    config = cuda_config(dataset)
    config.network.options["dropout"] = 0.2  # draws from the GPU's generator every step
    straight = train(config, tmp_path / "straight")
    straight_cuda = torch.cuda.get_rng_state()
    train(config, tmp_path / "resumed", until_epoch=1)
    torch.cuda.manual_seed(123)
    resumed = train(config, tmp_path / "resumed", resume=True)  # CUDA RNG states in the checkpoint, read on the CPU
    assert torch.equal(torch.cuda.get_rng_state(), straight_cuda)  # reseeded per epoch: the same dropout masks
    torch.cuda.manual_seed(seed_for(config.training.seed, 2, 0))
    assert not torch.equal(torch.cuda.get_rng_state(), straight_cuda)  # epoch 3 drew from its stream
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["state_dict"]
    for key in a:  # deterministic algorithms where CUDA has them: equal up to the few that warn instead
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
    straight_losses = [r["train_loss"] for r in straight.history]
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(straight_losses, rel=1e-3)


def test_the_augmentation_benchmark_reports_ms_per_patch(tmp_path, dataset, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_augmentation.py"
    spec = importlib.util.spec_from_file_location("bench_augmentation", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = tmp_path / "config.yaml"
    dump_config(tiny_config(dataset, augmentation={"flip": {"prob": 1.0}, "affine": {"prob": 1.0}}), config)
    bench.main(["--config", str(config), "--cases", "1", "--patches", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "RandCropByPosNegLabeld" in out and "RandAffined" in out and "RandFlipd#3" in out
    assert "ms per augmented patch" in out and "worker(s)" in out
