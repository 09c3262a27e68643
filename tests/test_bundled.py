"""The bundled hippocampus model: it loads, is small, and segments its held-out sample well."""

from __future__ import annotations

import json

import numpy as np
import pytest

from volseg.bundled import bundled_models, bundled_sample, resolve_model
from volseg.checkpoint import load_checkpoint
from volseg.cli import main
from volseg.errors import InputFileError
from volseg.inference.predictor import Predictor
from volseg.io import read_volume
from volseg.metrics import evaluate_case


def sample_files():
    folder = bundled_sample("hippocampus")
    meta = json.loads((folder / "sample.json").read_text())
    return folder, folder / meta["images"][0], folder / meta["label"]


def test_the_hippocampus_model_is_bundled_small_and_fp16():
    path = bundled_models()["hippocampus"]
    assert path.stat().st_size <= 10 * 1024**2
    checkpoint = load_checkpoint(path)
    assert "training" not in checkpoint
    assert {str(v.dtype) for v in checkpoint["state_dict"].values() if v.is_floating_point()} == {"torch.float16"}


def test_bundled_model_segments_its_held_out_sample():
    folder, image, label = sample_files()
    predictor = Predictor.from_checkpoint("hippocampus", device="cpu")
    prediction = predictor.predict(read_volume(image))
    reference = read_volume(label).array
    assert prediction.shape == reference.shape
    scores = evaluate_case(
        prediction, reference, spacing=read_volume(label).spacing, structures={"anterior": [1], "posterior": [2]}
    )
    assert np.mean([scores["anterior"]["dice"], scores["posterior"]["dice"]]) >= 0.85


@pytest.mark.parametrize("name", ["hippocampus-int8", "brats-int8"])
def test_the_int8_bundles_passed_the_quantization_guard(name):
    checkpoint = load_checkpoint(bundled_models()[name])
    record = checkpoint["openvino"]
    assert record["precision"] == "int8" and bundled_models()[name].stat().st_size <= 20 * 1024**2
    validation = record["validation"]
    assert len(validation["cases"]) >= 8 and max(validation["drops"].values()) <= validation["max_drop"] == 0.005
    assert not set(validation["cases"]) & set(record["calibration"]["cases"])  # never calibrated on


def test_the_int8_hippocampus_model_agrees_with_the_float_model():
    pytest.importorskip("openvino", reason="the int8 network runs on OpenVINO (pip install 'volseg[openvino]')")
    _, image, _ = sample_files()
    volume = read_volume(image)
    int8 = Predictor.from_checkpoint("hippocampus-int8", device="cpu")
    assert int8.runner.precision == "int8"
    labels = int8.predict(volume)
    assert np.mean(labels == Predictor.from_checkpoint("hippocampus", device="cpu").predict(volume)) >= 0.995


def test_the_demo_command(tmp_path, capsys):
    folder, image, _ = sample_files()
    assert (
        main(
            ["predict", "-m", "hippocampus", "-i", str(folder), "-o", str(tmp_path), "--stats", "--preview", "--quiet"]
        )
        == 0
    )
    stem = image.name.removesuffix(".nii.gz")
    tables = {f"{stem}_labels.txt", f"{stem}.ctbl"}  # label names and colours for ITK-SNAP and 3D Slicer
    assert {p.name for p in tmp_path.iterdir()} == {
        f"{stem}.nii.gz",
        f"{stem}_stats.json",
        f"{stem}_preview.png",
    } | tables
    out = capsys.readouterr().out
    assert "Anterior" in out and "Posterior" in out


def test_unknown_model_names_list_the_bundled_ones():
    with pytest.raises(InputFileError, match="did you mean 'hippocampus'.*bundled models: (.*, )?hippocampus"):
        resolve_model("hipocampus")
