"""The CUDA-only inference paths: autocast windows, the memory meter and batch sizing, host
accumulation, labels decided on the device. Skipped without a GPU; scripts/gpu_check.sh runs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from volseg.config import config_from_dict
from volseg.inference import sliding_window_inference, window_batch
from volseg.inference.class_maps import RunningDecision
from volseg.inference.predictor import Predictor
from volseg.inference.window_batch import ActivationMeter
from volseg.io import Volume
from volseg.nn import SegmentationNetwork, create_model

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def small_unet() -> torch.nn.Module:
    return create_model("unet", 3, 1, 3, features=[8, 16]).eval()


def test_autocast_windows_agree_with_float32():
    network, image = small_unet().to(CUDA), torch.randn(1, 1, 40, 36, 44, device=CUDA)
    exact = sliding_window_inference(network, image, (32, 32, 32))
    for autocast in ("fp16", "bf16") if torch.cuda.is_bf16_supported() else ("fp16",):
        mixed = sliding_window_inference(network, image, (32, 32, 32), autocast=autocast)
        assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
        assert (mixed.argmax(1) == exact.argmax(1)).float().mean() > 0.98, autocast


def test_host_accumulation_gives_the_device_accumulation():
    network, image = small_unet().to(CUDA), torch.randn(1, 1, 40, 36, 44, device=CUDA)
    for batch in (1, 3, "auto"):
        on_device = sliding_window_inference(network, image, (16, 16, 16), sw_batch_size=batch, output_device="cuda")
        on_host = sliding_window_inference(network, image, (16, 16, 16), sw_batch_size=batch, output_device="cpu")
        assert on_host.device.type == "cpu"
        torch.testing.assert_close(on_host, on_device.cpu(), rtol=1e-5, atol=1e-5)


def test_auto_batch_warms_up_then_measures_and_leaves_the_callers_peak(monkeypatch):
    network, image = small_unet().to(CUDA), torch.randn(1, 1, 48, 48, 48, device=CUDA)
    windows_left = []
    real = window_batch.window_batch_size
    monkeypatch.setattr(
        "volseg.inference.sliding_window.window_batch_size",
        lambda *args, **kwargs: windows_left.append(kwargs["windows"]) or real(*args, **kwargs),
    )
    big = torch.empty(256 * 2**20, dtype=torch.uint8, device=CUDA)  # the caller's own peak, 256 MiB above now
    del big
    peak = torch.cuda.max_memory_allocated(CUDA)
    sliding_window_inference(network, image, (16, 16, 16), sw_batch_size="auto")
    assert windows_left == [5**3 - 2]  # sized once, after a warm-up window and a measured one (5 windows per axis)
    assert torch.cuda.max_memory_allocated(CUDA) >= peak  # never reset


def test_cuda_meter_counts_activations_without_touching_the_peak():
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1))
    network = network.to(CUDA)
    x = torch.randn(1, 1, 32, 32, 32, device=CUDA)
    with torch.no_grad():
        network(x)  # warm-up
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(CUDA)
        with ActivationMeter(network, CUDA) as meter:
            network(x)
    assert meter.per_call >= 8 * 32**3 * 4  # at least the first layer's output
    assert meter.largest_per_window == 8 * 32**3
    assert torch.cuda.max_memory_allocated(CUDA) >= peak


class ThresholdNet(SegmentationNetwork):
    """Class 1 where the input is positive."""

    def __init__(self) -> None:
        super().__init__(3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1) * 10


@pytest.mark.parametrize("spacing", [None, [1.1, 0.9, 1.7]])
def test_labels_are_decided_on_the_gpu_and_match_the_cpu(monkeypatch, spacing):
    config = config_from_dict(
        {
            "data": {"labels": {0: "background", 1: "positive"}, "channels": ["image"]},
            "preprocessing": {"orientation": "RAS", "spacing": spacing, "intensity": "none", "crop_foreground": False},
            "sampling": {"patch_size": [16, 16, 16]},
        }
    )
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.choice([-1.0, 1.0], size=(4, 4, 3)), np.ones((6, 6, 6)))[:23, :19, :13]
    image = Volume(blocks.astype(np.float32), np.diag([0.8, 0.8, 3.0, 1.0]))
    devices = []
    real_add = RunningDecision.add
    monkeypatch.setattr(
        "volseg.inference.class_maps.RunningDecision.add",
        lambda self, start, maps: devices.append(maps.device.type) or real_add(self, start, maps),
    )
    gpu = Predictor(ThresholdNet(), config, device="cuda", mask_nonzero=False)
    gpu = gpu.predict_volumes([image], probabilities=True)
    assert set(devices) == {"cuda"}
    cpu = Predictor(ThresholdNet(), config, device="cpu", mask_nonzero=False)
    cpu = cpu.predict_volumes([image], probabilities=True)
    assert np.mean(gpu.labels == cpu.labels) > 0.999
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-3)


def test_auto_precision_on_this_gpu():
    predictor = Predictor(
        ThresholdNet(),
        config_from_dict({"data": {"labels": {0: "bg", 1: "fg"}}, "sampling": {"patch_size": [8, 8, 8]}}),
        device="cuda",
    )
    assert predictor.autocast == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
