"""Window batches sized to memory: the activation meter and the batch-size rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from volseg import window_batch
from volseg.inference import sliding_window_inference
from volseg.window_batch import ActivationMeter, window_batch_size


def two_layer_network() -> nn.Module:
    return nn.Sequential(nn.Conv3d(2, 5, 3, padding=1), nn.ReLU(), nn.Conv3d(5, 3, 1)).eval()


def test_meter_adds_every_leaf_output_per_network_call():
    network = two_layer_network()
    with ActivationMeter(network, torch.device("cpu")) as meter, torch.no_grad():
        for _ in range(3):
            network(torch.zeros(2, 2, 4, 5, 6))
    # per call: conv 2*5*120 + relu 2*5*120 + conv 2*3*120 float32 values
    assert meter.calls == 3 and meter.per_call == (1200 + 1200 + 720) * 4
    assert not network._forward_hooks and not network[0]._forward_hooks  # hooks removed on exit


@pytest.mark.parametrize("free_mib,windows,expected", [(600, 100, 3), (1000, 2, 2), (10, 100, 1), (10**6, 100, 4)])
def test_batch_is_what_fits_in_half_the_free_memory_within_the_limits(monkeypatch, free_mib, windows, expected):
    monkeypatch.setattr(window_batch, "free_memory", lambda device: free_mib * 2**20)
    # 100 MiB per window: half of 600 MiB holds 3; never above the windows left or the CPU's 4
    assert window_batch_size(100 * 2**20, torch.device("cpu"), windows=windows) == expected


def test_auto_batches_give_the_same_logits_as_fixed_batches(monkeypatch):
    sizes = []
    real = window_batch.window_batch_size
    monkeypatch.setattr("volseg.inference.window_batch_size",
                        lambda *args, **kwargs: sizes.append(real(*args, **kwargs)) or sizes[-1])
    network = two_layer_network()
    image = torch.randn(1, 2, 20, 20, 20, generator=torch.Generator().manual_seed(0))
    automatic = sliding_window_inference(network, image, (8, 8, 8), sw_batch_size="auto")
    fixed = sliding_window_inference(network, image, (8, 8, 8), sw_batch_size=3)
    assert len(sizes) == 1 and sizes[0] == 4  # a tiny network: the CPU limit, decided after the first window
    torch.testing.assert_close(automatic, fixed)
