"""A config is checked whole before any data is read: each mistake is named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_training import tiny_config

from volseg.config import load_config
from volseg.errors import ConfigError
from volseg.training import Trainer
from volseg.training.crossval import train_all_folds
from volseg.training.preflight import check_training_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_passes(path):
    check_training_config(load_config(path))


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"sampling": {"patch_size": [17, 16, 16]}}, r"sampling.patch_size=\[17, 16, 16\] cannot pass"),
        ({"inference": {"roi_size": [16, 16, 17]}}, r"inference.roi_size=\[16, 16, 17\] cannot pass"),
        ({"network": {"options": {"features": [8, 16], "no_such_option": 1}}}, "no_such_option"),
        ({"preprocessing": {"intensity": "ct"}}, "preprocessing.intensity='ct' needs"),
        ({"loss": {"name": "ce", "class_weights": [1.0, 2.0]}}, "loss.class_weights has 2 values"),
        ({"augmentation": {"gamma": {"prob": 0.5, "range": [0.0, 1.0]}}}, "augmentation.gamma.range"),
    ],
)
def test_mistakes_are_named_before_the_data_is_read(tmp_path, sections, message):
    config = tiny_config(tmp_path / "no-data-here", **sections)  # data.root does not exist
    with pytest.raises(ConfigError, match=message):
        check_training_config(config)
    with pytest.raises(ConfigError, match=message):  # the Trainer checks first, then reads
        Trainer(config, tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        train_all_folds(config, tmp_path / "cv")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cv").exists()
