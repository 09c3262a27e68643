"""``volseg quantize``: an int8 OpenVINO network calibrated on real windows, refused when it costs Dice."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from volseg.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict
from volseg.data.label_space import LabelSpace
from volseg.errors import AccuracyError, ConfigError
from volseg.export import describe_checkpoint, format_description
from volseg.export import quantize as quantize_module
from volseg.export.quantize import WindowSample, quantize_checkpoint
from volseg.inference.inputs import PredictionInput
from volseg.inference.openvino_runner import CHECKPOINT_KEY
from volseg.inference.predictor import Predictor
from volseg.inference.segment import read_channels
from volseg.io import read_volume
from volseg.nn import create_model

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'volseg[openvino]')")
pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'volseg[openvino]')")

SHAPE = (20, 24, 16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four tiny MSD cases (conftest.write_msd: a bright box, labels 1 and 2, in a dim body)."""
    from conftest import write_msd

    return write_msd(tmp_path_factory.mktemp("data") / "tiny", cases=4, shape=SHAPE)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A tiny U-Net fitted for a few dozen steps to the cases (their grid is the network's: 1 mm RAS,
    no intensity change), saved as a checkpoint."""
    torch.manual_seed(0)
    config = config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "outer", 2: "inner"}, "channels": ["image"]},
            "preprocessing": {"intensity": "none", "crop_foreground": False},
            "network": {"name": "unet", "options": {"features": [4, 8]}},
            "sampling": {"patch_size": [16, 16, 16]},
            "inference": {"sw_batch_size": 2},
        }
    )
    network = create_model("unet", 3, 1, 3, features=[4, 8])
    images = torch.stack([torch.from_numpy(read_volume(p).array) for p in sorted((dataset / "imagesTr").iterdir())])
    labels = torch.stack([torch.from_numpy(read_volume(p).array) for p in sorted((dataset / "labelsTr").iterdir())])
    images, labels = images[:, None].float() / 50.0, labels.long()
    optimiser = torch.optim.Adam(network.parameters(), lr=0.02)
    for _ in range(40):
        optimiser.zero_grad()
        weight = torch.tensor([0.05, 1.0, 1.0])  # the boxes are small beside the background
        torch.nn.functional.cross_entropy(network(images), labels, weight=weight).backward()
        optimiser.step()
    with torch.no_grad():  # the network saw intensities / 50: fold that into the first convolution
        first = next(m for m in network.modules() if isinstance(m, torch.nn.Conv3d))
        first.weight.div_(50.0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(build_checkpoint(network.eval(), config), path)
    return path


def test_the_window_sample_keeps_an_even_seeded_sample():
    sample = WindowSample(5)
    for start in range(0, 40, 4):
        sample(torch.arange(start, start + 4, dtype=torch.float32).reshape(4, 1))
    kept = sorted(int(w[0]) for w in sample.windows)
    assert sample.seen == 40 and len(kept) == 5 and len(set(kept)) == 5
    assert max(kept) >= 20  # not just the first windows
    again = WindowSample(5)
    for start in range(0, 40, 4):
        again(torch.arange(start, start + 4, dtype=torch.float32).reshape(4, 1))
    assert kept == sorted(int(w[0]) for w in again.windows)


def test_a_quantized_checkpoint_predicts_with_its_int8_network(trained, dataset, tmp_path):
    result = quantize_checkpoint(load_checkpoint(trained), dataset, max_drop=0.2)
    report = result.report
    assert set(report["structures"]) == {"outer", "inner"} and len(report["cases"]) == 2
    assert report["structures"]["outer"]["fp32"] > 0.5  # trained-ish: the guard compares real segmentations
    save_checkpoint(result.checkpoint, tmp_path / "int8.pt")
    stored = load_checkpoint(tmp_path / "int8.pt")
    entry = stored[CHECKPOINT_KEY]
    assert entry["precision"] == "int8" and entry["calibration"]["windows"] >= 8
    assert set(entry["calibration"]["cases"]).isdisjoint(entry["validation"]["cases"])
    assert "training" not in stored and "state_dict" in stored  # the float32 weights stay
    predictor = Predictor.from_checkpoint(tmp_path / "int8.pt", device="cpu")
    assert predictor.backend == "openvino" and predictor.runner.precision == "int8"
    case = next(c for c in sorted((dataset / "imagesTr").iterdir()))
    labels = predictor.predict_volumes(read_channels(PredictionInput("c", (case,)))[0]).labels
    reference = Predictor.from_checkpoint(trained, device="cpu", backend="torch").predict_volumes(
        read_channels(PredictionInput("c", (case,)))[0]
    )
    assert labels.shape == SHAPE and np.mean(labels == reference.labels) > 0.9
    assert "OpenVINO int8 network" in format_description(describe_checkpoint(stored))


def test_the_guard_refuses_a_drop_beyond_the_limit_and_writes_nothing(trained, dataset, tmp_path, capsys):
    output = tmp_path / "int8.pt"
    code = main(["quantize", str(trained), "--calibration", str(dataset), "-o", str(output), "--max-drop", "-1"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("volseg: error: int8 network refused") and "outer" in error
    assert not output.exists() and not list(tmp_path.iterdir())


def test_the_guard_looks_at_every_structure(trained, dataset, monkeypatch):
    real = quantize_module.score_both

    def worse_inner(*args, **kwargs):
        report = real(*args, **kwargs)
        report["structures"]["inner"]["drop"] = 0.3  # as if int8 lost 0.3 Dice on one label only
        return report

    monkeypatch.setattr(quantize_module, "score_both", worse_inner)
    with pytest.raises(AccuracyError, match=r"more than --max-drop 0.2 on inner over 2 held-out"):
        quantize_checkpoint(load_checkpoint(trained), dataset, max_drop=0.2)


def test_a_separate_validation_dataset_holds_out_all_its_cases(trained, dataset, monkeypatch):
    calibrate, check, layout = quantize_module._split_cases(dataset, dataset, 3, 16)
    assert len(calibrate) == 3 and len(check) == 4 and layout == "msd"
    with pytest.raises(ConfigError, match="too few to calibrate on 4 and hold out the rest"):
        quantize_module._split_cases(dataset, None, 4, 16)


def test_quantize_needs_nncf_and_an_int8_model_needs_openvino(trained, dataset, tmp_path, monkeypatch):
    result = quantize_checkpoint(load_checkpoint(trained), dataset, max_drop=1.0)
    save_checkpoint(result.checkpoint, tmp_path / "int8.pt")
    with pytest.raises(ConfigError, match="already holds an int8 network"):
        quantize_checkpoint(result.checkpoint, dataset)
    monkeypatch.setitem(sys.modules, "nncf", None)  # importing it now raises ImportError
    with pytest.raises(ConfigError, match=r"needs NNCF, which is not installed: pip install 'volseg\[openvino\]'"):
        quantize_checkpoint(load_checkpoint(trained), dataset)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError, match=r"int8 OpenVINO network needs OpenVINO.*pip install 'volseg\[openvino\]'"):
        Predictor.from_checkpoint(tmp_path / "int8.pt", device="cpu")
    assert Predictor.from_checkpoint(tmp_path / "int8.pt", device="cpu", backend="torch").backend == "torch"


def test_brats_cases_are_scored_in_their_own_label_convention():
    space = LabelSpace({0: "background", 1: "NCR", 2: "ED", 4: "ET"}, {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]})
    assert quantize_module.scored_structures(space, "brats2023") == (
        "brats2023",
        {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},  # a 2023 dataset's ET is 3: the predictions are written so
    )
    assert quantize_module.scored_structures(space, "brats2021") == ("brats2021", space.structures())
    assert quantize_module.scored_structures(space, "msd") == (None, space.structures())
