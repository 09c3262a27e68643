"""Training on tiny generated data: learning, exact resume, run folders, CLI, 2D and regions."""

from __future__ import annotations

import csv
import logging

import pytest
import torch

from volseg.checkpoint import load_checkpoint, model_from_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict, dump_config
from volseg.errors import OutputExistsError
from volseg.training import resolve_precision, train

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
