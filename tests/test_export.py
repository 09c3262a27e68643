"""Checkpoint description and ONNX / TorchScript export, checked against PyTorch."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from volseg.bundled import resolve_model
from volseg.checkpoint import build_checkpoint, inference_only, load_checkpoint
from volseg.config import config_from_dict
from volseg.errors import CheckpointError, ConfigError, OutputExistsError, ShapeError
from volseg.export import describe_checkpoint, export_model, format_description
from volseg.export import traced as export_module
from volseg.nn import SegmentationNetwork, create_model
from volseg.nn.layers import count_parameters

LABELS = {0: "background", 1: "liver", 2: "tumour"}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def onnxruntime():
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")


def make_checkpoint(name="unet", *, regions=None, training=None, **options):
    options = {"features": [4, 8], **options}
    labels = {0: "background", 1: "edema", 2: "core"} if regions else LABELS
    model = create_model(name, 3, 2, len(regions) if regions else 3, **options)
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from training
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    config = config_from_dict(
        {
            "data": {"channels": ["t1", "flair"], "labels": labels, "regions": regions},
            "preprocessing": {
                "intensity": "ct",
                "clip": [-100.0, 200.0],
                "mean": 50.0,
                "std": 25.0,
                "spacing": [1.0, 1.0, 2.0],
            },
            "network": {"name": name, "options": options},
            "sampling": {"patch_size": [16, 16, 16]},
            "inference": {"overlap": 0.25, "tta_flips": [0, 1]},
        }
    )
    return model.eval(), build_checkpoint(model, config, metrics={"dice": 0.75}, training=training)


def run_onnx(path, x):
    session = onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def test_onnx_matches_pytorch_with_dynamic_batch_and_spatial_axes(tmp_path):
    onnxruntime()
    model, checkpoint = make_checkpoint(norm="batch")
    paths = export_model(checkpoint, tmp_path / "out", fmt="onnx")
    assert [p.name for p in paths] == ["model.onnx", "model.json"] and all(p.is_file() for p in paths)
    meta = json.loads(paths[1].read_text())
    assert meta["model"]["dynamic_axes"] == ["batch", "spatial"]
    for shape in [(1, 2, 16, 16, 16), (2, 2, 16, 16, 16), (1, 2, 8, 24, 12)]:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x)
        actual = run_onnx(paths[0], x)
        assert actual.shape == expected.shape == (shape[0], 3, *shape[2:])
        assert torch.allclose(actual, expected, atol=1e-4), (actual - expected).abs().max()


def test_torchscript_round_trip(tmp_path):
    model, checkpoint = make_checkpoint(norm="batch", deep_supervision=True)
    model_path, json_path = export_model(checkpoint, tmp_path, fmt="torchscript")
    assert model_path.name == "model.ts"
    loaded = torch.jit.load(str(model_path))
    for shape in [(1, 2, 16, 16, 16), (3, 2, 8, 8, 16)]:
        x = torch.randn(shape)
        with torch.no_grad():
            output = loaded(x)
            assert isinstance(output, torch.Tensor)  # deep-supervision heads are not exported
            assert torch.allclose(output, model(x), atol=1e-5)
    assert json.loads(json_path.read_text())["model"]["format"] == "torchscript"


def test_model_json_says_how_to_use_the_network(tmp_path):
    _, checkpoint = make_checkpoint()
    export_model(checkpoint, tmp_path, fmt="torchscript", roi_size=[8, 16, 24])
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["input_channels"] == ["t1", "flair"]
    assert meta["outputs"]["activation"] == "softmax"
    assert [(c["index"], c["label"], c["name"]) for c in meta["outputs"]["channels"]] == [
        (0, 0, "background"),
        (1, 1, "liver"),
        (2, 2, "tumour"),
    ]
    assert meta["inference"]["roi_size"] == [8, 16, 24] and meta["inference"]["overlap"] == 0.25
    assert meta["inference"]["tta_flips"] == [0, 1] and meta["inference"]["blend"] == "gaussian"
    assert meta["inference"]["mask_nonzero"] is False
    assert meta["tensor_layout"] == "NCDHW" and "RAS" in meta["axis_convention"]
    intensity = meta["preprocessing"]["intensity"]
    assert intensity["preset"] == "ct" and intensity["clip"] == [-100.0, 200.0]
    assert (intensity["mean"], intensity["std"]) == (50.0, 25.0)
    assert meta["preprocessing"]["spacing"] == [1.0, 1.0, 2.0] and meta["preprocessing"]["orientation"] == "RAS"
    assert meta["model"]["input_shape"][:2] == ["batch", 2] and meta["volseg_version"]


def test_region_model_json_decodes_regions_to_labels(tmp_path):
    regions = {"WT": [1, 2], "TC": [2]}
    _, checkpoint = make_checkpoint(regions=regions)
    export_model(checkpoint, tmp_path, fmt="torchscript")
    outputs = json.loads((tmp_path / "model.json").read_text())["outputs"]
    assert outputs["activation"] == "sigmoid" and outputs["regions"] == regions
    # code bit 0 = WT, bit 1 = TC: nothing -> 0, WT only -> 1, WT and TC -> 2, TC outside WT -> TC's label 2
    assert outputs["region_lookup"] == [0, 1, 2, 2]


def test_default_roi_is_the_training_patch_size(tmp_path):
    _, checkpoint = make_checkpoint()
    export_model(checkpoint, tmp_path, fmt="torchscript")
    assert json.loads((tmp_path / "model.json").read_text())["inference"]["roi_size"] == [16, 16, 16]


def test_existing_files_are_refused_without_overwrite(tmp_path):
    _, checkpoint = make_checkpoint()
    (tmp_path / "model.json").write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"model\.json.*--overwrite"):
        export_model(checkpoint, tmp_path, fmt="torchscript")
    assert (tmp_path / "model.json").read_text() == "keep me" and not (tmp_path / "model.ts").exists()
    export_model(checkpoint, tmp_path, fmt="torchscript", overwrite=True)
    assert json.loads((tmp_path / "model.json").read_text())["model"]["file"] == "model.ts"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_window_the_network_cannot_take_is_refused(tmp_path):
    _, checkpoint = make_checkpoint()
    with pytest.raises(ShapeError, match="roi_size"):
        export_model(checkpoint, tmp_path, fmt="torchscript", roi_size=[15, 16, 16])
    assert not (tmp_path / "model.ts").exists()


class _Untraceable(SegmentationNetwork):
    def forward(self, x):
        return float(x.sum())  # a Python number: the tracer cannot record it


def test_a_network_that_cannot_be_traced_raises_checkpoint_error(tmp_path, monkeypatch):
    _, checkpoint = make_checkpoint()
    monkeypatch.setattr(export_module, "model_from_checkpoint", lambda _: _Untraceable(3, 2, 3).eval())
    for fmt in ("torchscript", "onnx"):
        with pytest.raises(CheckpointError, match="cannot be traced"):
            export_model(checkpoint, tmp_path, fmt=fmt)
    assert not list(tmp_path.iterdir())


class _FixedSize(SegmentationNetwork):
    """Bakes its input's spatial size into the trace: only the batch axis can stay dynamic."""

    def __init__(self):
        super().__init__(3, 2, 3)
        self.size_divisor = (4, 4, 4)
        self.head = torch.nn.Conv3d(2, 3, 1)

    def forward(self, x):
        return self.head(x) * torch.ones([int(s) for s in x.shape[2:]])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_spatial_axes_stay_fixed_when_the_trace_bakes_in_the_size(tmp_path, monkeypatch, fmt):
    if fmt == "onnx":
        onnxruntime()
    _, checkpoint = make_checkpoint()
    network = _FixedSize().eval()
    monkeypatch.setattr(export_module, "model_from_checkpoint", lambda _: network)
    path, json_path = export_model(checkpoint, tmp_path, fmt=fmt)
    meta = json.loads(json_path.read_text())["model"]
    assert meta["dynamic_axes"] == ["batch"] and meta["input_shape"] == ["batch", 2, 16, 16, 16]
    x = torch.randn(2, 2, 16, 16, 16)
    output = run_onnx(path, x) if fmt == "onnx" else torch.jit.load(str(path))(x)
    assert torch.allclose(output, network(x).detach(), atol=1e-5)


def test_onnx_export_without_onnxruntime_picks_axes_from_the_trace(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes "import onnxruntime" fail
    _, checkpoint = make_checkpoint()
    with caplog.at_level(logging.WARNING, logger="volseg.export.traced"):
        path, json_path = export_model(checkpoint, tmp_path, fmt="onnx")
    assert "onnxruntime is not installed" in caplog.text
    assert path.stat().st_size > 1000
    assert json.loads(json_path.read_text())["model"]["dynamic_axes"] == ["batch", "spatial"]


def test_an_onnx_file_that_disagrees_with_pytorch_is_not_kept(tmp_path, monkeypatch):
    onnxruntime()
    _, checkpoint = make_checkpoint()
    monkeypatch.setattr(export_module, "_run_session", lambda session, x: torch.zeros(1))  # never matches
    with pytest.raises(CheckpointError, match="does not reproduce the PyTorch output"):
        export_model(checkpoint, tmp_path, fmt="onnx")
    assert not list(tmp_path.iterdir())  # neither model.onnx nor a temporary file


def test_bad_format_and_opset_are_config_errors(tmp_path):
    _, checkpoint = make_checkpoint()
    with pytest.raises(ConfigError, match="opset=99"):
        export_model(checkpoint, tmp_path, fmt="onnx", opset=99)
    with pytest.raises(ConfigError, match="allowed: onnx, torchscript"):
        export_model(checkpoint, tmp_path, fmt="tflite")


def test_valid_convolution_unet_exports_with_its_smaller_output(tmp_path):
    onnxruntime()
    model, checkpoint = make_checkpoint("unet-paper", features=[4, 8])
    path, json_path = export_model(checkpoint, tmp_path, fmt="onnx", roi_size=[20, 20, 20])
    meta = json.loads(json_path.read_text())
    assert meta["inference"]["output_size"] == [4, 4, 4] and meta["inference"]["context"] == [8, 8, 8]
    shapes = [(1, 2, 20, 20, 20), (2, 2, 20, 20, 20)]
    if "spatial" in meta["model"]["dynamic_axes"]:
        shapes.append((1, 2, 24, 20, 28))
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x)
        actual = run_onnx(path, x)
        assert actual.shape == expected.shape
        assert torch.allclose(actual, expected, atol=1e-4)
    assert run_onnx(path, torch.randn(1, 2, 20, 20, 20)).shape == (1, 3, 4, 4, 4)


def test_describe_checkpoint_reports_the_network_and_state():
    model, checkpoint = make_checkpoint(training={"epoch": 7})
    description = describe_checkpoint(checkpoint)
    json.dumps(description)  # JSON-able
    assert description["network"]["parameters"] == count_parameters(model) > 0
    assert description["network"]["name"] == "unet" and description["network"]["arguments"]["features"] == [4, 8]
    assert description["spatial_dims"] == 3 and description["input_channels"] == ["t1", "flair"]
    assert description["outputs"]["activation"] == "softmax"
    assert description["outputs"]["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert description["preprocessing"]["intensity"]["mean"] == 50.0
    assert description["inference"]["roi_size"] == [16, 16, 16] and description["inference"]["tta_flips"] == [0, 1]
    assert description["metrics"] == {"dice": 0.75}
    assert (description["training_state"], description["epoch"], description["weights_dtype"]) == (True, 7, "fp32")

    slim = describe_checkpoint(inference_only(checkpoint, half=True))
    assert (slim["training_state"], slim["epoch"], slim["weights_dtype"]) == (False, None, "fp16")
    assert slim["network"]["parameters"] == description["network"]["parameters"]


def test_format_description_is_aligned_and_readable():
    _, checkpoint = make_checkpoint(regions={"WT": [1, 2], "TC": [2]})
    text = format_description(describe_checkpoint(checkpoint))
    lines = text.splitlines()
    keys = [line.split(":")[0] for line in lines]
    assert {"network", "inputs", "outputs", "preprocessing", "inference", "weights"} <= set(keys)
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(columns) == 1  # every value starts in the same column
    assert "features=[4, 8]" in text and "norm=" not in text  # only arguments that differ from the defaults
    assert "sigmoid" in text and "WT=[1, 2]" in text and "t1, flair" in text and "clip [-100.0, 200.0]" in text
    assert "trained on:" in text and "not recorded" in text  # this checkpoint holds no training fingerprint


def test_info_shows_the_training_fingerprint():
    text = format_description(describe_checkpoint(load_checkpoint(resolve_model("hippocampus"))))
    line = next(line for line in text.splitlines() if line.startswith("trained on:"))
    assert "166 cases, MRI" in line and "field of view 31-43 x 40-59 x 24-47 mm" in line


def test_segnet_exports_to_torchscript_and_onnx_says_why_not(tmp_path):
    model, checkpoint = make_checkpoint("segnet", features=[4, 8], num_convs=1)
    path, _ = export_model(checkpoint, tmp_path / "ts", fmt="torchscript")
    x = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(x), model(x), atol=1e-5)
    with pytest.raises(CheckpointError, match="max_unpool3d.*try --format torchscript"):
        export_model(checkpoint, tmp_path / "onnx", fmt="onnx")
    assert not (tmp_path / "onnx" / "model.onnx").exists()


@pytest.mark.parametrize("name,options", [("attention-unet", {}), ("unet++", {})])
def test_other_networks_export_to_onnx(tmp_path, name, options):
    onnxruntime()
    model, checkpoint = make_checkpoint(name, **options)
    path, json_path = export_model(checkpoint, tmp_path, fmt="onnx")
    x = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(run_onnx(path, x), model(x), atol=1e-4)


def test_cli_info_and_export(tmp_path, capsys):
    from volseg.checkpoint import save_checkpoint
    from volseg.cli import main

    model, checkpoint = make_checkpoint()
    path = save_checkpoint(checkpoint, tmp_path / "model.pt")
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "unet" in text and "liver" in text
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["network"]["parameters"] == count_parameters(model)
    assert main(["export", str(path), "--format", "torchscript", "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.ts"]
    assert main(["export", str(path), "--format", "torchscript", "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
