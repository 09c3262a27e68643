"""Window batches sized to memory: the activation meter and the batch-size rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from volseg.inference import sliding_window_inference, window_batch
from volseg.inference.window_batch import ActivationMeter, window_batch_size


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
    monkeypatch.setattr(
        "volseg.inference.sliding_window.window_batch_size",
        lambda *args, **kwargs: sizes.append(real(*args, **kwargs)) or sizes[-1],
    )
    network = two_layer_network()
    image = torch.randn(1, 2, 20, 20, 20, generator=torch.Generator().manual_seed(0))
    automatic = sliding_window_inference(network, image, (8, 8, 8), sw_batch_size="auto")
    fixed = sliding_window_inference(network, image, (8, 8, 8), sw_batch_size=3)
    assert len(sizes) == 1 and sizes[0] == 4  # a tiny network: the CPU limit, decided after the first window
    torch.testing.assert_close(automatic, fixed)


def test_meter_records_the_largest_tensor_a_layer_takes_or_gives_per_window():
    class Widen(nn.Module):  # a concatenation inside a non-leaf module: seen as the next layer's input
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.out = nn.Conv3d(2, 3, 1), nn.Conv3d(5, 1, 1)

        def forward(self, x):
            return self.out(torch.cat([x, self.conv(x)], dim=1))

    network = Widen().eval()
    with ActivationMeter(network, torch.device("cpu")) as meter, torch.no_grad():
        network(torch.zeros(4, 2, 3, 4, 5))
    assert meter.largest_per_window == 5 * 60  # the 5-channel input of the last layer, per window of the batch of 4


def test_index_cap_keeps_every_activation_under_two_to_the_31_elements():
    # a 32-channel activation of a 112 x 160 x 160 window: 91.75 M elements per window
    per_window = 32 * 112 * 160 * 160
    assert window_batch.index_safe_batch(per_window) == 23 and 23 * per_window < 2**31 <= 24 * per_window
    assert window_batch.index_safe_batch(2**31) == 1  # one window too large already: still 1
    assert window_batch.index_safe_batch(0) == window_batch.INDEX_LIMIT  # unknown: no cap
    # a 141 GB GPU with 1 GiB per window would fit 65 windows and the CUDA limit is 32: the index cap decides
    fits = window_batch.batch_that_fits(141 * 10**9, 2**30, windows=100, largest_batch=32, largest_elements=per_window)
    assert fits == 23


def test_window_cost_adds_the_inputs_and_the_logit_copies_outside_the_network():
    # 4 x 8^3 inputs (twice with mirroring), 3 x 8^3 logits in OUTPUT_COPIES float32 copies
    sizes = dict(input_elements=2048, output_elements=1536)
    assert window_batch.window_bytes(1000, **sizes, flips=1) == 1000 + 2048 * 4 + 4 * 1536 * 4
    assert window_batch.window_bytes(1000, **sizes, flips=8) == 1000 + 2 * 2048 * 4 + 4 * 1536 * 4


@pytest.mark.parametrize(
    "gpu_gib,classes,shape,expected",
    [
        (24, 100, (300, 512, 512), "cpu"),  # 31 GB of float32 logits: never on the GPU
        (141, 100, (300, 512, 512), "cpu"),  # not even on the largest: more than 1/8 of it
        (24, 3, (155, 240, 240), "cuda"),  # BraTS: 107 MB
        (24, 14, (300, 512, 512), "cpu"),  # 4.4 GB is more than 1/8 of 24 GB
    ],
)
def test_logits_accumulate_on_the_gpu_only_when_small_beside_its_memory(gpu_gib, classes, shape, expected):
    needed = 4 * (classes + 1) * math.prod(shape)
    device = window_batch.accumulation_device(
        needed, torch.device("cuda"), free_bytes=gpu_gib * 2**30, total_bytes=gpu_gib * 2**30
    )
    assert device.type == expected
    assert window_batch.accumulation_device(needed, torch.device("cpu"), free_bytes=0, total_bytes=1).type == "cpu"


def test_half_the_free_memory_also_bounds_the_accumulation():
    assert (
        window_batch.accumulation_device(
            2 * 2**30, torch.device("cuda"), free_bytes=3 * 2**30, total_bytes=80 * 2**30
        ).type
        == "cpu"
    )


def test_batch_is_sized_after_the_accumulation_buffer_exists_and_counts_the_logit_copies(monkeypatch):
    events = []
    real_device, real_size = window_batch.accumulation_device, window_batch.window_batch_size
    monkeypatch.setattr(
        "volseg.inference.sliding_window.accumulation_device",
        lambda *args, **kwargs: events.append("buffer") or real_device(*args, **kwargs),
    )
    monkeypatch.setattr(
        "volseg.inference.sliding_window.window_batch_size",
        lambda cost, *args, **kwargs: events.append(("sized", cost, kwargs)) or real_size(cost, *args, **kwargs),
    )
    network = two_layer_network()
    sliding_window_inference(network, torch.randn(1, 2, 20, 20, 20), (8, 8, 8), output_device="auto")
    assert events[0] == "buffer" and events[1][0] == "sized" and len(events) == 2
    _, cost, kwargs = events[1]
    assert cost > window_batch.OUTPUT_COPIES * 3 * 512 * 4  # the 3 x 8^3 logits' copies are counted
    assert kwargs["largest_elements"] == 5 * 512 and kwargs["windows"] == 4**3 - 1  # 4 windows per axis, one done


def test_batches_copied_to_the_host_stay_under_the_staging_limit():
    # 100 classes x 128^3 float32: 839 MB per window; 2 GiB of pinned staging holds 2 windows
    per_window = 100 * 128**3
    assert window_batch.batch_that_fits(10**12, 10**9, windows=75, largest_batch=32, copied_elements=per_window) == 2
    assert window_batch.batch_that_fits(10**12, 10**9, windows=75, largest_batch=32) == 32


def test_the_brats_network_gets_11_windows_at_most_on_any_gpu():
    from pathlib import Path

    from volseg.config import load_config
    from volseg.training import build_network

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "brats.yaml")
    network = build_network(config, 4).eval()
    with ActivationMeter(network, torch.device("cpu")) as meter, torch.no_grad():
        network(torch.zeros(2, 4, 32, 32, 32))
    # the last decoder stage takes 32 skip + 32 up-sampled channels at full resolution
    assert meter.largest_per_window == 64 * 32**3
    per_window = meter.largest_per_window // 32**3 * math.prod(config.inference.roi_size)
    assert (
        window_batch.batch_that_fits(141 * 2**30, 2**30, windows=100, largest_batch=32, largest_elements=per_window)
        == 11
    )
