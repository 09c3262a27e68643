"""The OpenVINO backend: the same logits and labels as PyTorch, its caches, and the fallback without it."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from volseg.cli import main
from volseg.config import config_from_dict
from volseg.errors import ConfigError
from volseg.inference import openvino_runner
from volseg.inference.backends import AUTO_CPU_BACKEND, resolve_backend, runner_for
from volseg.inference.openvino_runner import OpenVINONetwork, clear_caches, counts
from volseg.inference.predictor import Predictor
from volseg.inference.sliding_window import sliding_window_inference
from volseg.nn import SegmentationNetwork, create_model, list_models

#: Small settings per network family (deep supervision on where there is one: only the
#: full-resolution output may come back).
TINY = {
    "unet": dict(features=[4, 8], deep_supervision=True),
    "attention-unet": dict(features=[4, 8], deep_supervision=True),
    "unet++": dict(features=[4, 8], deep_supervision=True),
    "unet-paper": dict(features=[4, 8]),
    "segnet": dict(features=[4, 8], num_convs=[1, 1]),
    "ternausnet": dict(features=[2, 4, 4, 8, 8]),
}
WINDOW = 24  # unet-paper's output is 8 voxels wide there
#: OpenVINO's float32 kernels sum in another order than PyTorch's: measured differences are below
#: 1e-5 of the largest |logit| (4e-5 at a logit scale of 5). 1e-4 of the scale leaves room for
#: that and is still 40x below what bf16 arithmetic (8-bit mantissa: about 4e-3 per operation),
#: OpenVINO's default precision on CPUs with bf16 instructions, would give.
RELATIVE_TOLERANCE = 1e-4


def needs_openvino():
    return pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'volseg[openvino]')")


def tiny(name: str, dims: int, in_channels: int = 2, classes: int = 3) -> SegmentationNetwork:
    torch.manual_seed(0)
    return create_model(name, dims, in_channels, classes, **TINY[name]).eval()


def test_every_registered_family_has_tiny_settings_and_an_auto_decision():
    assert sorted(TINY) == sorted(list_models())
    assert sorted(AUTO_CPU_BACKEND) == sorted(list_models())


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(TINY))
def test_openvino_logits_equal_torch_logits(name, dims):
    needs_openvino()
    network = tiny(name, dims)
    roi = network.nearest_valid_shape((WINDOW,) * dims, "up")
    # 1.5 output tiles on every axis: several windows, a last batch smaller than the others;
    # a 2D network goes through a volume slice by slice, as the Predictor runs it
    image = torch.randn(1, 2, *(t + t // 2 + 1 for t in network.output_shape(roi)), *([3] if dims == 2 else []))
    options = dict(roi_size=roi, overlap=0.5, sw_batch_size=3)
    expected = sliding_window_inference(network, image, backend="torch", **options)
    actual = sliding_window_inference(network, image, backend="openvino", **options)
    assert actual.shape == expected.shape
    scale = max(1.0, float(expected.abs().max()))
    assert float((actual - expected).abs().max()) <= RELATIVE_TOLERANCE * scale


def predictor_config(**inference):
    return config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "a", 2: "b"}, "channels": ["image"]},
            "preprocessing": {"intensity": "none", "crop_foreground": False},
            "sampling": {"patch_size": [16, 16, 16]},
            "inference": {"sw_batch_size": 2, **inference},
        }
    )


def test_predictor_labels_agree_on_nearly_every_voxel():
    needs_openvino()
    network, config = tiny("unet", 3, in_channels=1), predictor_config()
    image = np.random.default_rng(0).normal(size=(30, 26, 21)).astype(np.float32)
    on_torch = Predictor(network, config, device="cpu", backend="torch")
    on_openvino = Predictor(network, config, device="cpu")  # auto: OpenVINO on the CPU
    assert (on_torch.backend, on_openvino.backend) == ("torch", "openvino")
    assert isinstance(on_openvino.runner, OpenVINONetwork) and on_torch.runner is network
    agreement = np.mean(on_torch.predict(image) == on_openvino.predict(image))
    assert agreement >= 0.999


def test_a_replaced_network_gets_its_own_backend():
    needs_openvino()
    predictor = Predictor(tiny("unet", 3, in_channels=1), predictor_config(), device="cpu")
    assert predictor.backend == "openvino" and isinstance(predictor.runner, OpenVINONetwork)
    replacement = create_model("unet", 3, 1, 3, features=[4, 8])
    replacement.config = {}  # a network from outside the registry: auto runs torch
    predictor.network = replacement
    assert predictor.runner is replacement and predictor.backend == "torch"


def test_a_compiled_model_serves_every_batch_size_and_is_reused():
    needs_openvino()
    clear_caches()
    network = tiny("unet", 3)
    runner = runner_for(network, "openvino")
    windows = torch.randn(3, 2, 16, 16, 16)
    before = dict(counts)
    first = runner(windows)
    assert counts["conversions"] == before.get("conversions", 0) + 1
    compiled = counts["compilations"]
    assert compiled == before.get("compilations", 0) + 1
    again = runner(windows[:1])  # another batch size: the batch axis is dynamic
    assert torch.equal(again, first[:1])
    assert runner_for(network, "openvino")(windows).shape == first.shape  # a new wrapper, same weights
    assert counts["compilations"] == compiled


def test_another_window_or_thread_count_compiles_again():
    needs_openvino()
    clear_caches()
    runner = runner_for(tiny("unet", 3), "openvino")
    runner(torch.randn(1, 2, 16, 16, 16))
    conversions, compilations = counts["conversions"], counts["compilations"]
    runner(torch.randn(1, 2, 16, 16, 24))
    assert (counts["conversions"], counts["compilations"]) == (conversions + 1, compilations + 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        runner(torch.randn(1, 2, 16, 16, 16))  # compiled again, from the model converted before
    finally:
        torch.set_num_threads(threads)
    assert (counts["conversions"], counts["compilations"]) == (conversions + 1, compilations + 2)


def test_new_weights_are_converted_again():
    needs_openvino()
    network = tiny("unet", 3)
    runner_for(network, "openvino")(torch.randn(1, 2, 16, 16, 16))
    conversions = counts["conversions"]
    with torch.no_grad():
        next(network.parameters()).add_(1.0)  # other weights: another network for the cache
    runner_for(network, "openvino")(torch.randn(1, 2, 16, 16, 16))
    assert counts["conversions"] == conversions + 1


def test_the_disk_cache_serves_a_second_predictor(tmp_path):
    needs_openvino()
    network, config = tiny("unet", 3, in_channels=1), predictor_config()
    image = np.random.default_rng(1).normal(size=(20, 18, 17)).astype(np.float32)
    clear_caches()
    before = dict(counts)
    first = Predictor(network, config, device="cpu", backend="openvino", cache_dir=tmp_path).predict(image)
    assert counts["conversions"] == before.get("conversions", 0) + 1
    entries = [p for p in tmp_path.iterdir() if p.name != "compiled"]
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {"model.xml", "model.bin"}
    clear_caches()  # as in a new process
    second = Predictor(network, config, device="cpu", backend="openvino", cache_dir=tmp_path).predict(image)
    assert counts["conversions"] == before.get("conversions", 0) + 1
    assert counts["disk_hits"] == before.get("disk_hits", 0) + 1
    assert np.array_equal(first, second)


def test_a_damaged_disk_cache_entry_is_converted_again(tmp_path):
    needs_openvino()
    network = tiny("unet", 3)
    runner = OpenVINONetwork(network, cache_dir=tmp_path)
    shape = (2, 16, 16, 16)
    clear_caches()
    runner(torch.randn(1, *shape))
    (tmp_path / runner.disk_key(shape) / "model.xml").write_text("not xml")
    clear_caches()
    conversions = counts["conversions"]
    runner(torch.randn(1, *shape))
    assert counts["conversions"] == conversions + 1


def test_the_disk_key_names_volseg_openvino_and_the_weights(monkeypatch):
    needs_openvino()
    network = tiny("unet", 3)
    runner = OpenVINONetwork(network)
    key = runner.disk_key((2, 16, 16, 16))
    assert key != runner.disk_key((2, 16, 16, 24))
    monkeypatch.setattr(openvino_runner, "__version__", "99.0")
    assert runner.disk_key((2, 16, 16, 16)) != key
    monkeypatch.undo()
    monkeypatch.setattr(openvino_runner, "CONVERSION_VERSION", 99)
    assert runner.disk_key((2, 16, 16, 16)) != key
    monkeypatch.undo()
    with torch.no_grad():
        next(network.parameters()).mul_(2.0)
    assert OpenVINONetwork(network).disk_key((2, 16, 16, 16)) != key


def test_auto_batch_size_uses_the_graphs_own_memory_measure():
    needs_openvino()
    network = tiny("unet", 3)
    runner = runner_for(network, "openvino")
    image = torch.randn(1, 2, 40, 40, 40)
    expected = sliding_window_inference(network, image, (16, 16, 16), sw_batch_size=2)
    actual = sliding_window_inference(runner, image, (16, 16, 16), sw_batch_size="auto")
    assert float((actual - expected).abs().max()) <= RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()))
    per_window, largest = runner.activation_estimate((2, 16, 16, 16))
    assert largest >= 4 * 16**3 and per_window > 4 * largest  # the widest feature map, and many of them


def test_auto_is_torch_on_cuda_and_for_networks_outside_the_registry():
    class Plain(SegmentationNetwork):
        def forward(self, x):
            return x

    assert resolve_backend("auto", "cuda", tiny("unet", 3)) == "torch"
    assert resolve_backend("auto", "cpu", Plain(3, 1, 1)) == "torch"
    if importlib.util.find_spec("openvino") is not None:  # the benchmark's decision per family
        assert resolve_backend("auto", "cpu", tiny("segnet", 3)) == "torch"  # slower on OpenVINO
        assert resolve_backend("auto", "cpu", tiny("unet-paper", 2)) == "openvino"
    with pytest.raises(ConfigError, match="runs on the CPU"):
        resolve_backend("openvino", "cuda", tiny("unet", 3))
    with pytest.raises(ConfigError, match="unknown backend 'openvin'.*did you mean 'openvino'"):
        resolve_backend("openvin", "cpu", tiny("unet", 3))


def test_autocast_is_refused_on_openvino():
    needs_openvino()
    with pytest.raises(ConfigError, match="autocast='bf16' is for the torch backend"):
        sliding_window_inference(
            tiny("unet", 3), torch.randn(1, 2, 16, 16, 16), (16, 16, 16), autocast="bf16", backend="openvino"
        )


def test_without_openvino_auto_runs_torch_and_openvino_names_the_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # importing it now raises ImportError
    network, config = tiny("unet", 3, in_channels=1), predictor_config()
    assert Predictor(network, config, device="cpu").backend == "torch"
    with pytest.raises(ConfigError, match=r"needs OpenVINO, which is not installed: pip install 'volseg\[openvino\]'"):
        Predictor(network, config, device="cpu", backend="openvino")
    code = main(
        ["predict", "-m", "hippocampus", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "--backend", "openvino"]
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "pip install 'volseg[openvino]'" in error[0]


def test_checkpoints_without_a_backend_setting_load_with_auto():
    assert config_from_dict({}).inference.backend == "auto"
    assert predictor_config(backend="torch").inference.backend == "torch"
    with pytest.raises(ConfigError, match="inference.backend='onnx' is not valid"):
        predictor_config(backend="onnx")
