"""Training on tiny generated data: learning, exact resume, run folders, CLI, 2D and regions,
and what a GPU run meets: a checkpoint loaded for another device, inf/NaN losses, DDP + compile."""

from __future__ import annotations

import csv
import logging
import math

import pytest
import torch

from volseg.checkpoint import capture_rng_state, load_checkpoint, model_from_checkpoint, restore_rng_state
from volseg.cli import main
from volseg.config import config_from_dict, dump_config
from volseg.distributed import DistributedContext
from volseg.errors import ConfigError, OutputExistsError, TrainingError
from volseg.training import Trainer, resolve_precision, train

AUGMENTATIONS = ["flip", "rotate90", "affine", "elastic", "noise", "blur", "brightness", "contrast", "gamma", "low_resolution"]
NO_AUGMENTATION = {name: {"prob": 0.0} for name in AUGMENTATIONS}


def tiny_config(root, **sections):
    values = {
        "data": {"root": str(root), "channels": ["MRI"], "labels": {0: "background", 1: "outer", 2: "inner"},
                 "num_folds": 2, "num_workers": 0},
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
    assert {"config.yaml", "splits.json", "last.pt", "best.pt", "metrics.csv", "curves.png", "tensorboard"} <= names
    assert [int(row["epoch"]) for row in read_csv(tmp_path / "run" / "metrics.csv")] == [1, 2, 3]
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert "training" not in best and best["metrics"]["val_dice_mean"] == result.best_metric
    assert model_from_checkpoint(best).num_classes == 3


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


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path, dataset):
    config = tiny_config(dataset, training={"epochs": 1, "iterations_per_epoch": 1})
    train(config, tmp_path / "run")
    with pytest.raises(OutputExistsError, match="--resume"):
        train(config, tmp_path / "run")
    assert train(config, tmp_path / "run", overwrite=True).epochs_run == 1


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
    config = tiny_config(dataset, network={"spatial_dims": 2, "options": {"features": [8, 16]}},
                         sampling={"patch_size": [16, 16]}, training={"epochs": 1, "iterations_per_epoch": 4})
    result = train(config, tmp_path / "run")
    assert 0.0 <= result.history[0]["val_dice_outer"] <= 1.0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["network"]["spatial_dims"] == 2


def test_overlapping_regions_train_with_sigmoid_outputs(tmp_path, dataset):
    config = tiny_config(dataset, data={"regions": {"whole": [1, 2], "core": [2]}}, training={"epochs": 1})
    result = train(config, tmp_path / "run")
    assert {"val_dice_whole", "val_dice_core"} <= set(result.history[0])
    assert load_checkpoint(tmp_path / "run" / "last.pt")["network"]["num_classes"] == 2


def test_border_weighted_cross_entropy_trains_with_its_weight_maps(tmp_path, dataset):
    from volseg.data.transforms import training_transforms, items_from_cases
    from volseg.data.datasets import find_cases

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
    with caplog.at_level(logging.WARNING, logger="volseg.training"):
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

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", RecordingDDP)
    two_ranks = DistributedContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    trainer = Trainer(tiny_config(dataset, training={"compile": True}), tmp_path / "run", context=two_ranks)
    assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(trainer.model._orig_mod, RecordingDDP) and trainer.model._orig_mod.module is trainer.network
