"""Honest evaluation: validation cases carved from the training cases, cross-validation, and
``volseg evaluate-run`` on the held-out cases only."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from test_training import tiny_config

from volseg.cli import main
from volseg.data.splits import carve_validation, load_folds, make_folds, save_folds, validation_count
from volseg.errors import ConfigError, InputFileError, OutputExistsError
from volseg.metrics import confidence_interval, summarise
from volseg.training import Trainer, train
from volseg.training.crossval import SPLITS_FINAL, train_all_folds
from volseg.training.evaluation import evaluate_run

IDS = [f"case_{i:03d}" for i in range(20)]


# --------------------------------------------------------------------------- the carve
@pytest.mark.parametrize(
    ("num_train", "size", "expected"),
    [
        (20, 0.1, 2),
        (20, 0.12, 2),
        (20, 0.13, 3),
        (5, 0.1, 1),
        (20, 3, 3),
        (20, 3.0, 3),
        (20, 0, 0),
        (4, 10, 3),  # at least one case is left to train on
        (1, 0.5, 0),  # a single training case is never set aside
    ],
)
def test_validation_count(num_train, size, expected):
    assert validation_count(num_train, size) == expected


@pytest.mark.parametrize("size", [-0.1, 2.5, True, "10%"])
def test_a_bad_validation_size_is_refused(size):
    with pytest.raises(ConfigError, match="data.validation_cases"):
        validation_count(10, size)


def test_bad_validation_size_is_refused_at_config_load(tmp_path):
    with pytest.raises(ConfigError, match="validation_cases=2.5"):
        tiny_config(tmp_path, data={"validation_cases": 2.5})


def test_the_carve_is_a_deterministic_subset_whatever_the_order():
    carved = carve_validation(IDS, 0.2)
    assert len(carved) == 4 and set(carved) <= set(IDS) and carved == sorted(carved)
    assert carve_validation(list(reversed(IDS)), 0.2) == carved
    assert carve_validation(IDS, 0.2, seed=1) != carved


def test_folds_keep_their_validation_cases_and_nnunet_files_still_load(tmp_path):
    folds = make_folds(IDS, 4)
    folds[0]["validation"] = carve_validation(folds[0]["train"], 2)
    save_folds(folds, tmp_path / "splits.json")
    loaded = load_folds(tmp_path / "splits.json")
    assert loaded[0]["validation"] == folds[0]["validation"] and "validation" not in loaded[1]


@pytest.mark.parametrize(
    ("validation", "message"),
    [
        (["case_999"], 'outside its "train" list'),
        (None, "leaves none to train on"),
    ],
)
def test_a_validation_list_outside_train_or_covering_it_is_refused(tmp_path, validation, message):
    folds = make_folds(IDS, 4)
    folds[0]["validation"] = validation if validation is not None else list(folds[0]["train"])
    with pytest.raises(ConfigError, match=message):
        save_folds(folds, tmp_path / "splits.json")


# --------------------------------------------------------------------------- the trainer
@pytest.fixture
def dataset(tmp_path, make_msd):
    return make_msd(tmp_path / "msd", cases=6, shape=(24, 24, 20))


def _ids(items):
    return {item["case_id"] for item in items}


def test_held_out_cases_are_neither_trained_nor_validated_on(tmp_path, dataset):
    config = tiny_config(dataset, data={"num_folds": 3, "validation_cases": 1})
    trainer = Trainer(config, tmp_path / "run")
    fold = load_folds(tmp_path / "run" / "splits.json")[0]
    train_items, validation_items = trainer._split_cases()
    assert len(fold["val"]) == 2 and len(fold["validation"]) == 1 and set(fold["validation"]) <= set(fold["train"])
    assert _ids(validation_items) == set(fold["validation"])
    assert _ids(train_items) == set(fold["train"]) - set(fold["validation"])
    assert not (_ids(train_items) | _ids(validation_items)) & set(fold["val"])


def test_without_validation_cases_best_is_the_last_epoch(tmp_path, dataset):
    config = tiny_config(dataset, data={"validation_cases": 0}, training={"epochs": 2, "iterations_per_epoch": 2})
    result = train(config, tmp_path / "run")
    assert result.best_metric is None and "val_dice_mean" not in result.history[-1]
    assert load_folds(tmp_path / "run" / "splits.json")[0]["validation"] == []


# --------------------------------------------------------------------------- cross-validation
def test_fold_all_trains_every_fold_on_one_split_and_resume_skips_finished_folds(tmp_path, dataset, caplog):
    config = tiny_config(dataset, data={"num_folds": 2}, training={"epochs": 1, "iterations_per_epoch": 2})
    results = train_all_folds(config, tmp_path / "cv")
    assert [r.run_dir.name for r in results] == ["fold_0", "fold_1"]
    shared = load_folds(tmp_path / "cv" / SPLITS_FINAL)
    for k in (0, 1):
        own = load_folds(tmp_path / "cv" / f"fold_{k}" / "splits.json")[k]
        assert (own["train"], own["val"]) == (shared[k]["train"], shared[k]["val"])
    before = (tmp_path / "cv" / "fold_1" / "last.pt").stat().st_mtime_ns
    caplog.set_level("INFO")
    assert train_all_folds(config, tmp_path / "cv", resume=True) == [None, None]
    assert (tmp_path / "cv" / "fold_1" / "last.pt").stat().st_mtime_ns == before
    assert "fold 1 has finished" in caplog.text


def test_evaluate_run_scores_each_held_out_case_once(tmp_path, dataset):
    config = tiny_config(dataset, data={"num_folds": 2}, training={"epochs": 1, "iterations_per_epoch": 2})
    train_all_folds(config, tmp_path / "cv")
    result = evaluate_run(tmp_path / "cv", mirroring=False)
    with open(result.output_dir / "cases.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    cases = sorted({row["case"] for row in rows if row["case"].startswith("case")})
    held_out = sorted(c for fold in load_folds(tmp_path / "cv" / SPLITS_FINAL) for c in fold["val"])
    assert cases == held_out == sorted(c.name.split(".")[0] for c in (dataset / "labelsTr").iterdir())
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["cases"] == 6 and set(summary["summary"]) == {"outer", "inner"}
    assert [entry["epoch"] for entry in summary["trained"].values()] == [1, 1]
    assert all(0 < entry["seconds"] < 300 for entry in summary["trained"].values())
    dice = summary["summary"]["outer"]["dice"]
    assert dice["ci95_low"] <= dice["mean"] <= dice["ci95_high"]
    predictions = sorted(p.name for p in (result.output_dir / "predictions").glob("*.nii.gz"))
    assert predictions == [f"{c}.nii.gz" for c in cases]
    with pytest.raises(OutputExistsError, match="other settings"):  # mirroring changed: not mixed in
        evaluate_run(tmp_path / "cv", mirroring=True)


def test_evaluate_run_cli_names_a_missing_run(tmp_path, capsys):
    assert main(["evaluate-run", str(tmp_path)]) == 2
    assert "not a volseg run folder" in capsys.readouterr().err


def test_evaluate_run_refuses_a_run_without_held_out_cases(tmp_path, dataset):
    config = tiny_config(dataset, data={"fold": -1}, training={"epochs": 1, "iterations_per_epoch": 1})
    train(config, tmp_path / "run")
    with pytest.raises(ConfigError, match="held no case out"):
        evaluate_run(tmp_path / "run", mirroring=False)


def test_evaluate_run_needs_the_checkpoint(tmp_path, dataset):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    with pytest.raises(InputFileError, match="no last.pt"):
        evaluate_run(tmp_path / "run", checkpoint="last.pt")


# --------------------------------------------------------------------------- the interval
def test_confidence_interval_by_hand():
    low, high = confidence_interval(np.array([1.0, 2.0, 3.0]))
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 dof) x sample std 1 / sqrt(3)
    assert low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert all(math.isnan(v) for v in confidence_interval(np.array([0.5])))


def test_summary_has_the_interval():
    summary = summarise([{"a": {"dice": 0.8}}, {"a": {"dice": 0.9}}, {"a": {"dice": math.nan}}])["a"]["dice"]
    assert summary["n"] == 2 and summary["ci95_low"] < 0.85 < summary["ci95_high"]
