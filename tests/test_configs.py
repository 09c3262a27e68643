"""Every shipped config loads, and its network takes its own patch and window."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from volseg.config import load_config
from volseg.nn import create_model
from volseg.training import output_channels

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_documented_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"brats.yaml", "hippocampus.yaml", "ct_spleen.yaml", "tiny_cpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_a_network_that_takes_its_patch(path):
    config = load_config(path)
    assert path.read_text().startswith("#")  # commented: says what it is for and how it was made
    with torch.device("meta"):
        model = create_model(
            config.network.name,
            config.network.spatial_dims,
            max(len(config.data.channels), 1),
            output_channels(config),
            **config.network.options,
        )
    assert model.is_valid_input_shape(config.sampling.patch_size)
    assert model.is_valid_input_shape(config.inference.roi_size or config.sampling.patch_size)
    assert config.inference.mask_nonzero == (config.preprocessing.intensity == "mri")  # as `volseg plan` writes


def test_brats_config_trains_regions():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "brats.yaml")
    assert config.data.regions == {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    assert config.data.channels == ["flair", "t1", "t1ce", "t2"]
