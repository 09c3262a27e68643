"""The CPU stand-ins of volseg.inference.fast_layers compute what the layers they replace compute."""

import itertools

import pytest
import torch
from torch import nn

from volseg.inference import sliding_window_inference
from volseg.inference.fast_layers import SubpixelConvTranspose, TwoPassInstanceNorm, with_fast_layers

TRANSPOSED = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
NORMS = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _transposed_cases():
    for dims, kernel, stride, padding, output_padding in itertools.product(
        (2, 3), (1, 2, 3, 4), (1, 2, 3), (0, 1), (0, 1)
    ):
        if output_padding < stride and padding < kernel:
            yield dims, kernel, stride, padding, output_padding


@pytest.mark.parametrize("dims, kernel, stride, padding, output_padding", list(_transposed_cases()))
def test_subpixel_matches_transposed_convolution(dims, kernel, stride, padding, output_padding):
    torch.manual_seed(0)
    layer = TRANSPOSED[dims](3, 2, kernel, stride=stride, padding=padding, output_padding=output_padding)
    x = torch.randn(2, 3, *[5] * dims)
    with torch.no_grad():
        expected, result = layer(x), SubpixelConvTranspose(layer)(x)
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


def test_subpixel_anisotropic_stride_and_kernel():
    torch.manual_seed(0)
    layer = nn.ConvTranspose3d(8, 4, (3, 2, 1), stride=(2, 2, 1), padding=(1, 0, 0), output_padding=(1, 0, 0))
    x = torch.randn(1, 8, 4, 5, 6)
    with torch.no_grad():
        result = SubpixelConvTranspose(layer)(x)
        torch.testing.assert_close(result, layer(x), atol=1e-5, rtol=1e-5)
    assert result.shape == (1, 4, 8, 10, 6)


def test_subpixel_follows_weight_updates():
    torch.manual_seed(0)
    layer = nn.ConvTranspose3d(4, 1, 3, stride=2, padding=1, output_padding=1)
    stand_in, x = SubpixelConvTranspose(layer), torch.randn(1, 4, 3, 3, 3)
    with torch.no_grad():
        stand_in(x)  # caches the phase weights
        layer.weight.mul_(-2.0)
        layer.bias.add_(1.0)
        torch.testing.assert_close(stand_in(x), layer(x), atol=1e-5, rtol=1e-5)


def test_subpixel_falls_back_where_it_does_not_apply():
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    stand_in, x = SubpixelConvTranspose(layer), torch.randn(1, 3, 4, 4)
    with torch.no_grad():  # an explicit output size: the original layer's own arithmetic
        assert stand_in(x, output_size=[8, 8]).shape == (1, 2, 8, 8)
    output = stand_in(x.requires_grad_())  # autograd: the original layer, gradients reach the weights
    output.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_supports_only_what_is_faster_and_equivalent():
    assert SubpixelConvTranspose.supports(nn.ConvTranspose3d(32, 3, 3, stride=2))
    assert not SubpixelConvTranspose.supports(nn.ConvTranspose3d(32, 8, 3, stride=2))  # oneDNN is as fast
    assert not SubpixelConvTranspose.supports(nn.ConvTranspose3d(4, 2, 3, stride=2, groups=2))
    assert not SubpixelConvTranspose.supports(nn.ConvTranspose3d(4, 2, 3, stride=2, dilation=2))
    assert not SubpixelConvTranspose.supports(nn.Conv3d(4, 2, 3))
    assert TwoPassInstanceNorm.supports(nn.InstanceNorm3d(4, affine=True))
    assert not TwoPassInstanceNorm.supports(nn.InstanceNorm3d(4, track_running_stats=True))
    assert not TwoPassInstanceNorm.supports(nn.BatchNorm3d(4))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("affine", [False, True])
def test_two_pass_instance_norm_matches(dims, affine):
    torch.manual_seed(0)
    norm = NORMS[dims](4, affine=affine, eps=1e-3)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, *[6] * dims) * torch.tensor([1.0, 5.0, 0.01, 2.0]).view(1, 4, *[1] * dims) + 300.0
    with torch.no_grad():
        result, pytorch = TwoPassInstanceNorm(norm)(x), norm(x)
        exact = norm.double()(x.double())  # the same layer in float64
    spread = (slice(None), [0, 1, 3])
    torch.testing.assert_close(result[spread], exact.float()[spread], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result[spread], pytorch[spread], atol=1e-4, rtol=1e-4)
    # channel 2, std 0.01 on a mean of 300, is at float32's resolution there (3e-5 = 0.003 std)
    assert (result.double() - exact)[:, 2].abs().max() < 5e-3
    if not affine:  # by hand: zero mean, unit (biased) variance, up to eps
        flat = result.double().flatten(2)[spread]
        torch.testing.assert_close(flat.mean(2), torch.zeros(2, 3, dtype=torch.float64), atol=1e-4, rtol=0)
        sample_var = x.double().flatten(2)[spread].var(2, correction=0)
        torch.testing.assert_close(flat.var(2, correction=0), sample_var / (sample_var + 1e-3), atol=1e-4, rtol=1e-4)


def _small_network() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(2, 8, 3, stride=2, padding=1),
        nn.InstanceNorm3d(8, affine=True),
        nn.LeakyReLU(0.01),
        nn.ConvTranspose3d(8, 3, 3, stride=2, padding=1, output_padding=1),
        nn.InstanceNorm3d(3),
        nn.PReLU(),
    ).eval()


def test_with_fast_layers_copies_structure_shares_weights():
    network = _small_network()
    fast = with_fast_layers(network)
    assert fast is not network
    assert [type(m) for m in network] == [
        nn.Conv3d,
        nn.InstanceNorm3d,
        nn.LeakyReLU,
        nn.ConvTranspose3d,
        nn.InstanceNorm3d,
        nn.PReLU,
    ]  # the original is untouched
    assert [type(m) for m in fast][1::2] == [TwoPassInstanceNorm, SubpixelConvTranspose, nn.PReLU]
    assert {p.data_ptr() for p in fast.parameters()} == {p.data_ptr() for p in network.parameters()}
    assert with_fast_layers(network) is fast  # cached
    network.train()
    assert with_fast_layers(network).training and not fast.training  # a new copy in the new mode
    network.eval()
    network[3] = nn.ConvTranspose3d(8, 3, 3, stride=2, padding=1, output_padding=1)
    rebuilt = with_fast_layers(network)  # a changed module tree gets a new copy
    assert rebuilt is not fast and rebuilt[3].source is not fast[3].source
    x = torch.randn(2, 2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), network(x), atol=1e-5, rtol=1e-5)


def test_with_fast_layers_leaves_other_networks_alone():
    network = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU())
    assert with_fast_layers(network) is network


def test_sliding_window_same_logits_with_and_without_fast_layers():
    torch.manual_seed(0)
    network, image = _small_network(), torch.randn(1, 2, 20, 18, 16)
    fast = sliding_window_inference(network, image, (8, 8, 8), overlap=0.5)
    plain = sliding_window_inference(network, image, (8, 8, 8), overlap=0.5, fast_layers=False)
    assert fast.shape == plain.shape == (1, 3, 20, 18, 16)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert isinstance(network[3], nn.ConvTranspose3d)


def test_hooks_are_shared_and_observed_layers_kept():
    network = _small_network()
    calls = []
    network.register_forward_hook(lambda module, args, output: calls.append("network"))
    network[4].register_forward_hook(lambda module, args, output: calls.append("norm"))
    network[1]._register_state_dict_hook(lambda *args: None)  # not a call hook: still replaced
    fast = with_fast_layers(network)
    assert isinstance(fast[3], SubpixelConvTranspose) and isinstance(fast[4], nn.InstanceNorm3d)
    assert isinstance(fast[1], TwoPassInstanceNorm)
    with torch.no_grad():
        fast(torch.randn(1, 2, 8, 8, 8))
    assert calls == ["norm", "network"]  # the original's hooks fire on the copy
    handle = fast[0].register_forward_hook(lambda *args: None)  # registered on the copy: seen by the original
    assert len(network[0]._forward_hooks) == 1
    handle.remove()
    assert with_fast_layers(network) is fast


def test_activation_meter_counts_stand_ins_as_layers():
    from volseg.inference.window_batch import ActivationMeter

    network = nn.Sequential(nn.ConvTranspose3d(4, 2, 2, stride=2)).eval()
    fast = with_fast_layers(network)
    with torch.no_grad(), ActivationMeter(fast, torch.device("cpu")) as meter:
        fast(torch.randn(1, 4, 4, 4, 4))
    assert meter.total == 2 * 8 * 8 * 8 * 4  # the stand-in's float32 output, counted once
