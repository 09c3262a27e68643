"""Losses: softmax/sigmoid Dice + focal against hand computations, MONAI's DiceFocalLoss focal term,
deep supervision, the U-Net paper's border weight map, and loss_from_config."""

from __future__ import annotations

import contextlib
import math

import monai
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from volseg.config import LossConfig
from volseg.data.weights import border_weight_map, instances_from_labels
from volseg.errors import ConfigError, ShapeError
from volseg.losses import (
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    WeightedCrossEntropyLoss,
    deep_supervision_weights,
    loss_from_config,
)


def _example(n=2, c=3, shape=(3, 4)):
    logits = torch.randn(n, c, *shape) * 2
    target = torch.randint(0, c, (n, 1, *shape))
    return logits, target


def _hand_softmax_focal(logits, target, gamma, weights=None):
    """Pixel by pixel: -w_t (1 - p_t)^gamma log p_t with p = softmax, averaged over pixels."""
    probs = torch.softmax(logits.double(), dim=1)
    n, c, h, w = logits.shape
    weights = weights or [1.0] * c
    total = 0.0
    for b in range(n):
        for i in range(h):
            for j in range(w):
                t = int(target[b, 0, i, j])
                p = float(probs[b, t, i, j])
                total += -weights[t] * (1 - p) ** gamma * math.log(p)
    return total / (n * h * w)


def _hand_sigmoid_focal(logits, binary, gamma):
    """Per element binary focal loss with p = sigmoid, averaged over N * C * S."""
    p = torch.sigmoid(logits.double())
    p_t = torch.where(binary > 0.5, p, 1 - p)
    return float((-((1 - p_t) ** gamma) * torch.log(p_t)).mean())


# ----------------------------------------------------------------------------- focal / CE


def test_softmax_focal_matches_hand_computation():
    logits, target = _example()
    expected = _hand_softmax_focal(logits, target, gamma=2.0)
    assert float(FocalLoss("softmax", gamma=2.0)(logits, target)) == pytest.approx(expected, rel=1e-5)
    terms = DiceFocalLoss("softmax", gamma=2.0).terms(logits, target)
    assert float(terms["focal"]) == pytest.approx(expected, rel=1e-5)


def test_monai_dice_focal_softmax_still_uses_a_sigmoid_focal_term():
    """MONAI 1.6.1 (issue #8242): DiceFocalLoss(softmax=True) builds FocalLoss without use_softmax."""
    logits, target = _example()
    monai_loss = monai.losses.DiceFocalLoss(
        softmax=True, to_onehot_y=True, include_background=True, gamma=2.0, lambda_dice=0.0, lambda_focal=1.0
    )
    monai_focal = float(monai_loss(logits, target))
    softmax_focal = _hand_softmax_focal(logits, target, gamma=2.0)
    one_hot = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).double()
    assert monai_focal != pytest.approx(softmax_focal, rel=1e-2)
    assert monai_focal == pytest.approx(_hand_sigmoid_focal(logits, one_hot, gamma=2.0), rel=1e-5)
    ours = DiceFocalLoss("softmax", gamma=2.0, include_background=True).terms(logits, target)["focal"]
    assert float(ours) == pytest.approx(softmax_focal, rel=1e-5)


def test_monai_dice_term_agrees_with_ours():
    logits, target = _example()
    monai_dice = monai.losses.DiceFocalLoss(softmax=True, to_onehot_y=True, include_background=False, lambda_focal=0.0)
    assert float(DiceLoss("softmax")(logits, target)) == pytest.approx(float(monai_dice(logits, target)), rel=1e-5)


def test_gamma_zero_is_cross_entropy():
    logits, target = _example()
    expected = F.cross_entropy(logits, target[:, 0])
    assert float(FocalLoss("softmax", gamma=0.0)(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    assert float(CrossEntropyLoss("softmax")(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    regions = (torch.rand(2, 3, 3, 4) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, regions)
    assert float(CrossEntropyLoss("sigmoid")(logits, regions)) == pytest.approx(float(bce), rel=1e-6)


def test_sigmoid_focal_matches_hand_computation():
    logits = torch.randn(2, 3, 4, 4) * 3
    regions = (torch.rand(2, 3, 4, 4) > 0.6).float()
    expected = _hand_sigmoid_focal(logits, regions, gamma=2.0)
    assert float(FocalLoss("sigmoid", gamma=2.0)(logits, regions)) == pytest.approx(expected, rel=1e-5)


def test_class_weights_weight_the_focal_and_ce_terms():
    logits, target = _example()
    weights = [0.2, 1.0, 3.0]
    expected = _hand_softmax_focal(logits, target, gamma=2.0, weights=weights)
    assert float(FocalLoss("softmax", class_weights=weights)(logits, target)) == pytest.approx(expected, rel=1e-5)
    # A plain mean of w_t * CE (not torch's division by the summed weights).
    per_pixel = F.cross_entropy(logits, target[:, 0], reduction="none") * torch.tensor(weights)[target[:, 0]]
    value = DiceCELoss("softmax", class_weights=weights).terms(logits, target)["ce"]
    assert float(value) == pytest.approx(float(per_pixel.mean()), rel=1e-5)


def test_small_gamma_keeps_gradients_finite_at_saturated_logits():
    target = torch.randint(0, 3, (1, 1, 4, 4))
    logits = (F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 400 - 200).requires_grad_()
    FocalLoss("softmax", gamma=0.5)(logits, target).backward()
    assert torch.isfinite(logits.grad).all()
    regions = (torch.rand(1, 2, 4, 4) > 0.5).float()
    logits = ((regions * 2 - 1) * 200).requires_grad_()
    FocalLoss("sigmoid", gamma=0.5)(logits, regions).backward()
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- Dice


def _logits_from_probs(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_dice_term_matches_hand_computation_and_include_background():
    # One sample, 2 classes, 4 pixels: softmax(log p) = p.
    p1 = [0.2, 0.7, 0.4, 0.9]
    logits = _logits_from_probs([[[1 - v for v in p1]], [p1]]).reshape(1, 2, 1, 4)
    target = torch.tensor([0, 1, 1, 1]).reshape(1, 1, 1, 4)
    s = 1e-5
    dice_fg = (2 * (0.7 + 0.4 + 0.9) + s) / (sum(p1) + 3 + s)  # = 4.0 / 5.2
    dice_bg = (2 * 0.8 + s) / (0.8 + 0.3 + 0.6 + 0.1 + 1 + s)  # = 1.6 / 2.8
    assert float(DiceLoss("softmax")(logits, target)) == pytest.approx(1 - dice_fg, rel=1e-5)
    with_background = DiceLoss("softmax", include_background=True)(logits, target)
    assert float(with_background) == pytest.approx(1 - (dice_fg + dice_bg) / 2, rel=1e-5)


def test_batch_dice_pools_the_batch():
    probs = torch.tensor([[0.9, 0.8, 0.1, 0.3], [0.2, 0.6, 0.7, 0.5]])  # foreground, 2 samples
    logits = torch.stack([torch.log(1 - probs), torch.log(probs)], dim=1).reshape(2, 2, 1, 4)
    target = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]]).reshape(2, 1, 1, 4)
    g = target[:, 0, 0].float()
    per_sample = [1 - float(2 * (probs[b] * g[b]).sum() / (probs[b].sum() + g[b].sum())) for b in range(2)]
    pooled = 1 - float(2 * (probs * g).sum() / (probs.sum() + g.sum()))
    assert float(DiceLoss("softmax")(logits, target)) == pytest.approx(sum(per_sample) / 2, rel=1e-4)
    assert float(DiceLoss("softmax", batch_dice=True)(logits, target)) == pytest.approx(pooled, rel=1e-4)


def test_sigmoid_dice_counts_every_region_channel():
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.3, 0.8, 0.5]])  # 2 region channels, 3 pixels
    logits = torch.logit(probs).reshape(1, 2, 1, 3)
    regions = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).reshape(1, 2, 1, 3)
    dices = [float(2 * (probs[c] * regions[0, c, 0]).sum() / (probs[c].sum() + regions[0, c, 0].sum())) for c in (0, 1)]
    value = DiceLoss("sigmoid", include_background=False)(logits, regions)
    assert float(value) == pytest.approx(1 - sum(dices) / 2, rel=1e-4)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_perfect_prediction_is_near_zero_and_a_wrong_one_is_large(activation):
    target = torch.randint(0, 3, (2, 1, 6, 5, 4))  # 3D
    one_hot = F.one_hot(target[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    truth = target if activation == "softmax" else one_hot
    loss = DiceFocalLoss(activation)
    assert float(loss(one_hot * 40 - 20, truth)) < 1e-4
    wrong = one_hot.roll(1, dims=1)
    assert float(loss(wrong * 40 - 20, truth)) > 1.0


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_empty_targets_give_finite_losses_and_gradients(activation):
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long) if activation == "softmax" else torch.zeros(2, 3, 8, 8)
    value = DiceFocalLoss(activation, batch_dice=True)(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    if activation == "softmax":  # predicting "all background" right costs (almost) nothing
        perfect = torch.tensor([20.0, -20.0, -20.0]).view(1, 3, 1, 1).expand(2, 3, 8, 8)
        assert float(DiceFocalLoss(activation)(perfect, target)) < 1e-4


def test_all_target_layouts_give_the_same_loss():
    logits, target = _example()
    loss = DiceFocalLoss("softmax")
    reference = float(loss(logits, target))
    one_hot = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float()
    for layout in (target[:, 0], target.float(), target.int(), one_hot, monai.data.MetaTensor(target.float())):
        assert float(loss(logits, layout)) == pytest.approx(reference, rel=1e-6)


def test_weights_combine_the_terms():
    logits, target = _example()
    dice, focal = float(DiceLoss("softmax")(logits, target)), float(FocalLoss("softmax")(logits, target))
    combined = DiceFocalLoss("softmax", dice_weight=0.3, focal_weight=2.0)(logits, target)
    assert float(combined) == pytest.approx(0.3 * dice + 2.0 * focal, rel=1e-5)
    ce = float(CrossEntropyLoss("softmax")(logits, target))
    assert float(DiceCELoss("softmax", ce_weight=0.5)(logits, target)) == pytest.approx(dice + 0.5 * ce, rel=1e-5)


def test_autocast_and_half_logits_are_computed_in_float32():
    logits, target = _example(shape=(8, 8))
    loss = DiceFocalLoss("softmax")
    half = logits.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(half, target)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(loss(half.float(), target)), rel=1e-6)
    assert loss(logits.half(), target).dtype == torch.float32


def test_class_indices_off_the_cpu_are_not_read_back_to_the_host(monkeypatch):
    """A GPU stands in as the meta device, whose values cannot be read: a host check would raise."""
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())  # no meta backend
    outputs = [torch.zeros(2, 3, *size, device="meta", requires_grad=True) for size in ([8, 8, 8], [4, 4, 4])]
    target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long, device="meta")
    loss = DeepSupervisionLoss(DiceFocalLoss("softmax"))(outputs, target)
    loss.backward()
    assert loss.shape == () and outputs[0].grad is not None


def test_shape_and_value_errors():
    loss = DiceFocalLoss("softmax")
    with pytest.raises(ShapeError, match=r"\(2, 3, 8, 8\).*\(2, 1, 4, 4\)"):
        loss(torch.randn(2, 3, 8, 8), torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"labels 3\.\.3 .*\(labels 0\.\.2\)"):
        loss(torch.randn(1, 3, 4, 4), torch.full((1, 1, 4, 4), 3))
    with pytest.raises(ShapeError, match="at least 2 output channels"):
        loss(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ShapeError, match=r"\(1, 3, 4, 4\).*\(1, 1, 4, 4\)"):
        DiceFocalLoss("sigmoid")(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ShapeError, match="class_weights has 2 values.*3 channels"):
        FocalLoss("softmax", class_weights=[1, 2])(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))
    for bad in (dict(gamma=-1.0), dict(class_weights=[1.0, -1.0]), dict(dice_weight=0.0, focal_weight=0.0)):
        with pytest.raises(ConfigError):
            DiceFocalLoss("softmax", **bad)
    with pytest.raises(ConfigError, match="softmax"):
        DiceFocalLoss("softmx")


# ----------------------------------------------------------------------------- deep supervision


def test_deep_supervision_weights_follow_nnunet():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == pytest.approx([2 / 3, 1 / 3])
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])


def test_deep_supervision_downsamples_the_target_by_nearest_neighbour():
    target = torch.randint(0, 3, (2, 1, 8, 8))
    outputs = [torch.randn(2, 3, s, s, requires_grad=True) for s in (8, 4, 2)]
    base = DiceCELoss("softmax")
    value = DeepSupervisionLoss(base)(outputs, target)
    value.backward()
    assert outputs[1].grad is not None and outputs[2].grad is None  # the coarsest weight is 0
    value, outputs = value.detach(), [o.detach() for o in outputs]
    # Centre-aligned nearest neighbour at factor 2 takes the second voxel of each pair.
    expected = 2 / 3 * base(outputs[0], target) + 1 / 3 * base(outputs[1], target[..., 1::2, 1::2])
    assert float(value) == pytest.approx(float(expected), rel=1e-6)
    assert float(DeepSupervisionLoss(base)(outputs[0], target)) == pytest.approx(float(base(outputs[0], target)))
    # (N, *S) index targets and binary region maps keep their layout and stay binary.
    assert float(DeepSupervisionLoss(base)(outputs, target[:, 0])) == pytest.approx(float(value), rel=1e-6)
    regions = (torch.rand(2, 3, 8, 8) > 0.5).float()
    sigmoid = DiceFocalLoss("sigmoid")
    value = DeepSupervisionLoss(sigmoid, weights=[0.0, 1.0])(outputs[:2], regions)
    assert float(value) == pytest.approx(float(sigmoid(outputs[1], regions[..., 1::2, 1::2])), rel=1e-6)


def test_deep_supervision_full_resolution_outputs_average_with_the_target_as_is():
    target = torch.randint(0, 2, (1, 1, 8, 8, 8))
    outputs = [torch.randn(1, 2, 8, 8, 8) for _ in range(3)]
    base = DiceFocalLoss("softmax")
    expected = sum(float(base(o, target)) for o in outputs) / 3
    assert float(DeepSupervisionLoss(base)(outputs, target)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="2 weights.*3 outputs"):
        DeepSupervisionLoss(base, weights=[1.0, 0.5])(outputs, target)


def test_deep_supervision_resizes_the_weight_map_too():
    target = torch.randint(0, 2, (1, 1, 8, 8))
    weight_map = torch.rand(1, 8, 8) * 5
    outputs = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)]
    base = WeightedCrossEntropyLoss()
    value = DeepSupervisionLoss(base)(outputs, target, weight_map)
    expected = 2 / 3 * base(outputs[0], target, weight_map) + 1 / 3 * base(
        outputs[1], target[..., 1::2, 1::2], weight_map[..., 1::2, 1::2]
    )
    assert float(value) == pytest.approx(float(expected), rel=1e-6)


# ----------------------------------------------------------------------------- U-Net border weights


def test_weighted_cross_entropy_is_the_mean_of_weight_times_ce():
    logits, target = _example(shape=(5, 6))
    weight_map = torch.rand(2, 5, 6) * 10
    per_pixel = F.cross_entropy(logits, target[:, 0], reduction="none")
    value = WeightedCrossEntropyLoss()(logits, target, weight_map)
    assert float(value) == pytest.approx(float((weight_map * per_pixel).mean()), rel=1e-5)
    ones = WeightedCrossEntropyLoss()(logits, target, torch.ones(2, 1, 5, 6))
    assert float(ones) == pytest.approx(float(F.cross_entropy(logits, target[:, 0])), rel=1e-6)
    with pytest.raises(ShapeError, match=r"\(2, 5, 5\)"):
        WeightedCrossEntropyLoss()(logits, target, torch.ones(2, 5, 5))
    with pytest.raises(ConfigError, match="weight map"):
        WeightedCrossEntropyLoss()(logits, target)


def _two_squares(gap: int = 1) -> np.ndarray:
    instances = np.zeros((20, 40), dtype=np.int32)
    instances[5:15, 5:15] = 1
    instances[5:15, 15 + gap : 25 + gap] = 2
    return instances


def test_border_weights_peak_between_touching_objects_and_vanish_far_away():
    weights = border_weight_map(_two_squares(), w0=10.0, sigma=5.0, class_weights=None)
    gap = weights[10, 15]  # one background column between the squares: d1 = d2 = 1
    assert gap == pytest.approx(1 + 10 * math.exp(-4 / 50), rel=1e-5)
    assert gap > 1 + 9
    assert weights[0, 39] == pytest.approx(1.0, abs=1e-3)  # far from both squares
    assert (weights[_two_squares() > 0] == 1.0).all()  # no border term inside objects


def test_border_weights_hand_check_of_one_pixel():
    instances = np.zeros((5, 5), dtype=np.int32)
    instances[0, 0], instances[4, 3], instances[0, 4] = 1, 2, 3
    weights = border_weight_map(instances, w0=10.0, sigma=2.0)
    # Pixel (2, 2): distances sqrt(8) to 1, sqrt(5) to 2, sqrt(8) to 3 -> d1 = sqrt(5), d2 = sqrt(8).
    border = 10.0 * math.exp(-((math.sqrt(5) + math.sqrt(8)) ** 2) / (2 * 2.0**2))
    assert weights[2, 2] == pytest.approx(1.0 + border, rel=1e-5)
    assert weights[0, 0] == pytest.approx(22 / 3)  # balanced: count(background) / count(foreground)


def test_balanced_class_weights_from_semantic_labels():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[:2, :5], labels[8:, :] = 1, 2  # 10 and 20 voxels, 70 background
    weights = border_weight_map(instances_from_labels(labels), w0=0.0, labels=labels)
    assert weights[5, 5] == 1.0 and weights[0, 0] == pytest.approx(7.0) and weights[9, 9] == pytest.approx(3.5)


def test_border_weights_in_3d_use_the_spacing():
    instances = np.zeros((7, 6, 6), dtype=np.int32)
    instances[:3], instances[4:] = 1, 2  # one background slice between two slabs
    weights = border_weight_map(instances, w0=10.0, sigma=4.0, class_weights=None, spacing=(2.0, 1.0, 1.0))
    assert weights[3, 2, 2] == pytest.approx(1 + 10 * math.exp(-(4.0**2) / (2 * 4.0**2)), rel=1e-5)
    single = border_weight_map((instances == 1).astype(np.int32), class_weights=None)
    assert (single == 1.0).all()  # one object: no second-nearest instance, no border term


def test_border_weights_match_a_brute_force_scipy_computation():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    labels = (ndimage.gaussian_filter(rng.random((24, 30, 28)), 2) > 0.52).astype(np.uint8)
    instances = instances_from_labels(labels)
    assert instances.max() >= 3
    per_instance = [ndimage.distance_transform_edt(instances != i) for i in range(1, instances.max() + 1)]
    distances = np.sort(np.stack(per_instance), axis=0)
    expected = 1 + 10 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * 3.0**2)) * (instances == 0)
    weights = border_weight_map(instances, w0=10.0, sigma=3.0, class_weights=None)
    np.testing.assert_allclose(weights, expected, atol=5e-3)  # 4-sigma truncation: < 3.4e-4 * w0


def test_instances_from_labels():
    touching = np.zeros((6, 10), dtype=np.uint8)
    touching[1:5, 1:5], touching[1:5, 5:9] = 1, 1
    assert instances_from_labels(touching).max() == 1  # one connected object
    touching[1:5, 5:9] = 2
    instances = instances_from_labels(touching)
    assert instances.dtype == np.int32 and set(np.unique(instances)) == {0, 1, 2}
    assert len(np.unique(instances[1:5, 1:5])) == 1 and instances[2, 2] != instances[2, 6]
    diagonal = np.eye(4, dtype=np.uint8)
    assert instances_from_labels(diagonal).max() == 4
    assert instances_from_labels(diagonal, fully_connected=True).max() == 1
    with pytest.raises(ShapeError):
        instances_from_labels(np.zeros(5))


# ----------------------------------------------------------------------------- from the config


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("dice_focal", DiceFocalLoss),
        ("dice_ce", DiceCELoss),
        ("dice", DiceLoss),
        ("focal", FocalLoss),
        ("ce", CrossEntropyLoss),
        ("weighted_ce", WeightedCrossEntropyLoss),
    ],
)
def test_loss_from_config_builds_each_loss(name, cls):
    loss = loss_from_config(LossConfig(name=name, deep_supervision=False), activation="softmax", num_outputs=3)
    assert type(loss) is cls
    wrapped = loss_from_config(LossConfig(name=name), activation="sigmoid", num_outputs=3)
    assert isinstance(wrapped, DeepSupervisionLoss) and type(wrapped.loss) is cls


def test_loss_from_config_passes_the_options_through():
    config = LossConfig(
        dice_weight=0.5,
        focal_weight=2.0,
        gamma=1.0,
        include_background=True,
        class_weights=[0.1, 1.0, 2.0],
        deep_supervision=False,
    )
    logits, target = _example()
    expected = DiceFocalLoss(
        "softmax", dice_weight=0.5, focal_weight=2.0, gamma=1.0, include_background=True, class_weights=[0.1, 1.0, 2.0]
    )(logits, target)
    assert float(loss_from_config(config, activation="softmax", num_outputs=3)(logits, target)) == pytest.approx(
        float(expected), rel=1e-6
    )


def test_loss_from_config_errors():
    with pytest.raises(ConfigError, match="dice_bce"):
        loss_from_config(LossConfig(name="dice_bce"), activation="softmax", num_outputs=3)
    with pytest.raises(ConfigError, match="2 values.*3 output channels"):
        loss_from_config(LossConfig(class_weights=[1.0, 2.0]), activation="softmax", num_outputs=3)
    with pytest.raises(ConfigError, match="activation"):
        loss_from_config(LossConfig(), activation="relu", num_outputs=3)
    with pytest.raises(ConfigError, match="at least 2"):
        loss_from_config(LossConfig(), activation="softmax", num_outputs=1)
