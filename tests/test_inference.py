"""Sliding-window inference against hand-made answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from volseg.errors import ConfigError, ShapeError
from volseg.inference import flip_combinations, importance_map, sliding_window_inference, window_starts
from volseg.nn import create_model


def test_window_starts_by_hand():
    assert window_starts(100, 40, 0.5) == [0, 20, 40, 60]
    assert window_starts(40, 40, 0.5) == [0]
    assert window_starts(41, 40, 0.5) == [0, 1]
    starts = window_starts(97, 32, 0.25)
    assert starts[0] == 0 and starts[-1] == 97 - 32
    assert all(b - a <= 32 * 0.75 for a, b in zip(starts, starts[1:]))  # neighbours overlap enough


def test_importance_map_is_cached_centred_and_positive():
    weights = importance_map((9, 7, 5))
    assert weights is importance_map((9, 7, 5))
    assert weights[4, 3, 2] == weights.max() == 1.0 and weights.min() > 0
    assert torch.equal(weights, weights.flip(0)) and torch.equal(importance_map((3, 3), "constant"), torch.ones(3, 3))


def test_importance_map_corners_keep_their_small_gaussian_weight():
    # 8 voxels, sigma 1, centre 3.5: the corner lies 3.5 from the centre on each axis and the
    # peak 0.5, so corner / peak = exp(-(3 * 3.5**2 - 3 * 0.5**2) / 2) = exp(-18) (no floor above it).
    weights = importance_map((8, 8, 8))
    assert float(weights[0, 0, 0]) == pytest.approx(math.exp(-18.0), rel=1e-4)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("sw_batch_size", [1, 5])
def test_pointwise_network_gives_the_whole_volume_answer(blend, sw_batch_size):
    network = torch.nn.Conv3d(2, 3, 1)
    image = torch.randn(2, 2, 37, 30, 25)
    result = sliding_window_inference(network, image, (16, 16, 16), blend=blend, sw_batch_size=sw_batch_size)
    with torch.no_grad():
        assert torch.allclose(result, network(image), atol=1e-5)


def test_volume_thinner_than_the_window_is_padded_and_cropped_back():
    network = torch.nn.Conv3d(1, 2, 1)
    image = torch.randn(1, 1, 20, 20, 3)
    result = sliding_window_inference(network, image, (16, 16, 16))
    assert result.shape == (1, 2, 20, 20, 3)
    with torch.no_grad():
        assert torch.allclose(result, network(image), atol=1e-5)


def test_test_time_flips_average_the_mirrored_predictions():
    network = torch.nn.Conv2d(1, 2, 3, padding=1)  # not mirror-symmetric
    image = torch.randn(1, 1, 12, 10)
    result = sliding_window_inference(network, image, (12, 10), tta_flips=[1])
    with torch.no_grad():
        expected = (network(image) + network(image.flip(3)).flip(3)) / 2
    assert torch.allclose(result, expected, atol=1e-5)
    assert len(flip_combinations([0, 1, 2])) == 8 and flip_combinations([1])[0] == ()


def test_valid_convolution_network_tiles_by_output_with_mirrored_context():
    network = create_model("unet-paper", 2, 1, 2, features=[4, 8]).eval()
    roi = network.nearest_valid_shape((30, 30))
    tile = network.output_shape(roi)
    image = torch.randn(1, 1, *tile)  # exactly one tile: one window with mirrored context
    context = [(r - t) // 2 for r, t in zip(roi, tile)]
    padded = F.pad(image, [context[1], context[1], context[0], context[0]], mode="reflect")
    with torch.no_grad():
        expected = network(padded)
    result = sliding_window_inference(network, image, roi)
    assert result.shape == (1, 2, *tile) and torch.allclose(result, expected, atol=1e-5)
    bigger = sliding_window_inference(network, torch.randn(1, 1, 45, 23), roi)
    assert bigger.shape == (1, 2, 45, 23) and torch.isfinite(bigger).all()


def test_two_dimensional_network_runs_slice_by_slice_on_a_volume():
    network = create_model("unet", 2, 2, 3, features=[4, 8]).eval()
    volume = torch.randn(1, 2, 16, 12, 5)
    result = sliding_window_inference(network, volume, (16, 12))
    with torch.no_grad():
        expected = torch.stack([network(volume[..., k]) for k in range(5)], dim=-1)
    assert torch.allclose(result, expected, atol=1e-5)


def test_result_is_an_ordinary_tensor_on_the_output_device():
    result = sliding_window_inference(torch.nn.Conv2d(1, 1, 1), torch.randn(1, 1, 8, 8), (4, 4), output_device="cpu")
    result += 1  # not an inference-mode tensor
    assert result.device.type == "cpu" and result.dtype == torch.float32


@pytest.mark.parametrize(
    "options,error,message",
    [
        (dict(roi_size=(4,)), ConfigError, "roi_size"),
        (dict(overlap=1.0), ConfigError, "overlap"),
        (dict(sw_batch_size=0), ConfigError, "sw_batch_size"),
        (dict(autocast="fp8"), ConfigError, "autocast"),
        (dict(tta_flips=[2]), ConfigError, "spatial axes are 0 .. 1"),
    ],
)
def test_bad_arguments(options, error, message):
    arguments = dict(roi_size=(4, 4)) | options
    with pytest.raises(error, match=message):
        sliding_window_inference(torch.nn.Conv2d(1, 1, 1), torch.randn(1, 1, 8, 8), **arguments)
    with pytest.raises(ShapeError, match="expected"):
        sliding_window_inference(torch.nn.Conv2d(1, 1, 1), torch.randn(8, 8), (4, 4))
