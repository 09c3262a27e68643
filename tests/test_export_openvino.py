"""``volseg export --format openvino``: IR that OpenVINO alone runs, with PyTorch's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from volseg.checkpoint import build_checkpoint, save_checkpoint
from volseg.cli import main
from volseg.config import config_from_dict
from volseg.errors import CheckpointError, OutputExistsError, ShapeError
from volseg.export import export_model
from volseg.export import openvino as export_module
from volseg.nn import create_model

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'volseg[openvino]')")


def make_checkpoint(name="unet", **options):
    torch.manual_seed(0)
    model = create_model(name, 3, 2, 3, features=[4, 8], **options).eval()
    config = config_from_dict(
        {
            "data": {"channels": ["t1", "flair"], "labels": {0: "background", 1: "liver", 2: "tumour"}},
            "sampling": {"patch_size": [16, 16, 16]},
            "inference": {"roi_size": [16, 24, 16]},
        }
    )
    return model, build_checkpoint(model, config)


def test_openvino_alone_runs_the_export_and_matches_pytorch(tmp_path):
    model, checkpoint = make_checkpoint(deep_supervision=True)
    written = export_model(checkpoint, tmp_path, fmt="openvino")
    assert [p.name for p in written] == ["model.xml", "model.bin", "model.json"]
    compiled = ov.Core().compile_model(
        ov.Core().read_model(tmp_path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    windows = torch.randn(3, 2, 16, 24, 16)  # the exported window, a batch of three (the batch axis is dynamic)
    with torch.no_grad():
        expected = model(windows)
    actual = compiled(windows.numpy())[0]
    assert actual.shape == (3, 3, 16, 24, 16)
    assert np.abs(actual - expected.numpy()).max() <= 1e-4 * max(1.0, float(expected.abs().max()))
    description = json.loads((tmp_path / "model.json").read_text())
    assert description["model"]["file"] == "model.xml" and description["model"]["weights_file"] == "model.bin"
    assert description["model"]["input_shape"] == ["batch", 2, 16, 24, 16]
    assert description["model"]["dtype"] == "float32" and description["input_channels"] == ["t1", "flair"]


def test_the_weights_stay_float32(tmp_path):
    _, checkpoint = make_checkpoint()
    export_model(checkpoint, tmp_path, fmt="openvino")
    model = ov.Core().read_model(tmp_path / "model.xml")
    constants = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]
    assert not any(op.get_output_element_type(0) == ov.Type.f16 for op in constants)


def test_existing_files_are_kept_and_a_bad_window_is_refused(tmp_path):
    _, checkpoint = make_checkpoint()
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="model.json' exists"):
        export_model(checkpoint, tmp_path, fmt="openvino")
    with pytest.raises(ShapeError, match="roi_size"):
        export_model(checkpoint, tmp_path / "other", fmt="openvino", roi_size=[15, 16, 16])
    assert (tmp_path / "model.json").read_text() == "{}" and not (tmp_path / "model.xml").exists()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.bin").write_bytes(b"kept")  # the weights file counts too
    with pytest.raises(OutputExistsError, match="model.bin' exists"):
        export_model(checkpoint, tmp_path / "weights", fmt="openvino")
    assert (tmp_path / "weights" / "model.bin").read_bytes() == b"kept"
    export_model(checkpoint, tmp_path / "fresh", fmt="openvino")
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["model.bin", "model.json", "model.xml"]


def test_an_ir_that_does_not_match_pytorch_is_not_written(tmp_path, monkeypatch):
    _, checkpoint = make_checkpoint()
    monkeypatch.setattr(export_module, "outputs_match", lambda actual, expected: False)
    with pytest.raises(CheckpointError, match="does not reproduce the PyTorch output"):
        export_model(checkpoint, tmp_path, fmt="openvino")
    assert not list(tmp_path.iterdir())


def test_cli_export_openvino(tmp_path, capsys):
    _, checkpoint = make_checkpoint()
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    assert main(["export", str(tmp_path / "model.pt"), "--format", "openvino", "-o", str(tmp_path / "ir")]) == 0
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "ir" / n) for n in ("model.xml", "model.bin", "model.json")
    ]
