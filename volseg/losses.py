"""Segmentation losses: soft Dice + focal / cross-entropy with ONE activation, deep supervision,
and the U-Net paper's border-weighted cross-entropy (its weight map: :mod:`volseg.data.weights`).

Networks output logits ``(N, C, *S)``. Targets are class indices ``(N, 1, *S)`` or ``(N, *S)``
(integer or integral float; mutually exclusive labels, ``activation="softmax"``), one-hot /
soft labels ``(N, C, *S)`` (softmax), or binary region maps ``(N, C, *S)`` (overlapping regions
such as BraTS WT/TC/ET, ``activation="sigmoid"``). The activation is chosen once and used by
both the Dice and the focal term: MONAI 1.6.1's ``DiceFocalLoss(softmax=True)`` still computes
its focal term with a sigmoid (MONAI issue #8242); :class:`DiceFocalLoss` here does not.

Every loss is computed in float32 with autocast disabled, so fp16/bf16 training stays stable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss as _MonaiDiceLoss
from torch import nn

from volseg.config import LossConfig
from volseg.errors import ConfigError, ShapeError, choice_error

logger = logging.getLogger(__name__)

Activation = Literal["softmax", "sigmoid"]
ACTIVATIONS = ("softmax", "sigmoid")


# ----------------------------------------------------------------------------- shared pieces


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise choice_error("activation", activation, ACTIVATIONS)


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:  # also rejects NaN
            raise ConfigError(f"{name}={value} is not valid; allowed: a number >= 0")


def _class_weight_tensor(class_weights: Optional[Sequence[float]]) -> Optional[torch.Tensor]:
    if class_weights is None:
        return None
    weights = torch.as_tensor([float(w) for w in class_weights], dtype=torch.float32)
    if weights.ndim != 1 or len(weights) == 0 or not bool((weights >= 0).all()):
        raise ConfigError(f"class_weights={list(class_weights)} is not valid; give one number >= 0 per output channel")
    return weights


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """Drop tensor subclasses (MONAI MetaTensor): their metadata only slows the loss down."""
    return tensor.as_subclass(torch.Tensor) if type(tensor) is not torch.Tensor else tensor


def one_hot_target(logits: torch.Tensor, target: torch.Tensor, activation: str) -> torch.Tensor:
    """Check ``target`` against ``logits`` (N, C, *S) and return it as float32 (N, C, *S).

    softmax: indices (N, 1, *S) / (N, *S) become one-hot; (N, C, *S) is taken as one-hot or soft
    labels. sigmoid: (N, C, *S) binary maps, or (N, *S) when C == 1. Raises ``ShapeError`` (for
    indices out of range only on the CPU: see :func:`check_class_indices`).
    """
    if logits.ndim < 3:
        raise ShapeError(f"logits of shape {tuple(logits.shape)} are not valid; expected (N, C, *spatial)")
    num_channels, expected = logits.shape[1], (logits.shape[0], *logits.shape[2:])
    shapes = f"logits {tuple(logits.shape)} and target {tuple(target.shape)}"
    if activation == "sigmoid":
        if target.shape == logits.shape:
            return target.float()
        if num_channels == 1 and tuple(target.shape) == expected:
            return target.float().unsqueeze(1)
        raise ShapeError(f"{shapes} do not match; sigmoid outputs need binary maps of the logits' shape (N, C, *S)")
    if num_channels < 2:
        raise ShapeError(f"softmax needs at least 2 output channels, got {shapes}; use sigmoid for one binary output")
    if target.shape == logits.shape:
        return target.float()
    if tuple(target.shape) == expected:
        target = target.unsqueeze(1)
    elif tuple(target.shape) != (expected[0], 1, *expected[1:]):
        raise ShapeError(f"{shapes} do not match; expected class indices (N, 1, *S) or (N, *S), or one-hot (N, C, *S)")
    indices = target.round().long() if target.is_floating_point() else target.long()
    if indices.device.type == "cpu":  # free here; on a GPU, reading the range back would stall every step
        check_class_indices(indices, num_channels)
    return torch.zeros_like(logits, dtype=torch.float32).scatter_(1, indices, 1.0)


def check_class_indices(indices: torch.Tensor, num_channels: int) -> None:
    """Raise ``ShapeError`` unless every class index in ``indices`` (any shape) is in ``0..num_channels-1``.

    Reads the range back to the host: :func:`one_hot_target` calls it for CPU tensors only. On an
    accelerator the check would cost a device-host sync per call (one per deep-supervision output
    per step), so it is skipped there: check labels on the CPU before the transfer, as training does
    (``MapLabelsd`` maps each case's label values to ``0..K-1`` once, when the case is preprocessed).
    """
    low, high = (int(v) for v in torch.stack(torch.aminmax(indices)).tolist())
    if low < 0 or high >= num_channels:
        raise ShapeError(
            f"target holds labels {low}..{high} but the logits have "
            f"{num_channels} channels (labels 0..{num_channels - 1})"
        )


def focal_loss(
    logits: torch.Tensor,
    one_hot: torch.Tensor,
    activation: str,
    *,
    gamma: float = 2.0,
    class_weights: Optional[torch.Tensor] = None,
    pixel_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean focal loss of ``logits`` (N, C, *S) against float targets ``one_hot`` (N, C, *S); gamma=0 is CE.

    softmax: per pixel ``-sum_c w_c y_c (1 - p_c)^gamma log p_c`` (p = softmax; for one-hot y this is
    ``-w_t (1 - p_t)^gamma log p_t``), averaged over N * S. sigmoid: per channel binary focal loss
    ``-w_c [y (1-p)^gamma log p + (1-y) p^gamma log(1-p)]``, averaged over N * C * S. ``class_weights``
    (C,) multiply each class's term (a plain mean, not divided by the sum of the weights as
    ``F.cross_entropy(weight=...)`` does); ``pixel_weights`` (N, 1, *S) multiply each pixel's loss.
    """
    logits = logits.float()
    tiny = torch.finfo(torch.float32).tiny  # keeps (.)^gamma differentiable at 0 when gamma < 1
    if activation == "softmax":
        log_p = F.log_softmax(logits, dim=1)
        loss = -one_hot * log_p
        if gamma:
            loss = loss * (-torch.expm1(log_p)).clamp_min(tiny).pow(gamma)  # 1 - p, accurate near p = 1
    else:
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        positive, negative = -one_hot * log_p, -(1 - one_hot) * log_not_p
        if gamma:
            positive = positive * log_not_p.exp().clamp_min(tiny).pow(gamma)
            negative = negative * log_p.exp().clamp_min(tiny).pow(gamma)
        loss = positive + negative
    if class_weights is not None:
        if len(class_weights) != logits.shape[1]:
            raise ShapeError(
                f"class_weights has {len(class_weights)} values but the logits {tuple(logits.shape)} "
                f"have {logits.shape[1]} channels"
            )
        loss = loss * class_weights.to(loss.device).view(1, -1, *([1] * (loss.ndim - 2)))
    if activation == "softmax":
        loss = loss.sum(dim=1, keepdim=True)
    if pixel_weights is not None:
        loss = loss * pixel_weights.float()
    return loss.mean()


# ----------------------------------------------------------------------------- Dice + focal


class DiceFocalLoss(nn.Module):
    """``dice_weight * (1 - mean_c Dice_c) + focal_weight * focal``, both after the same activation.

    Dice per sample and class (over the batch with ``batch_dice``), ``(2 sum(p g) + smooth) /
    (sum p + sum g + smooth)``; ``include_background=False`` drops channel 0 from the Dice term
    (softmax only: sigmoid channels are all foreground regions). The focal term is the multi-class
    softmax focal loss or the per-channel binary one (:func:`focal_loss`), weighted by ``class_weights``.
    forward: logits (N, C, *S), target (N, 1, *S) / (N, *S) indices or (N, C, *S) maps -> scalar.
    The other losses below are this one with a term switched off or gamma = 0.
    """

    def __init__(
        self,
        activation: Activation,
        *,
        dice_weight: float = 1.0,
        focal_weight: float = 1.0,
        gamma: float = 2.0,
        include_background: bool = False,
        class_weights: Optional[Sequence[float]] = None,
        smooth: float = 1e-5,
        batch_dice: bool = False,
    ) -> None:
        super().__init__()
        _check_activation(activation)
        _check_non_negative(dice_weight=dice_weight, focal_weight=focal_weight, gamma=gamma, smooth=smooth)
        if not (dice_weight or focal_weight):
            raise ConfigError("dice_weight=0 and focal_weight=0: at least one term needs a weight > 0")
        self.activation = activation
        self.dice_weight, self.focal_weight, self.gamma = float(dice_weight), float(focal_weight), float(gamma)
        self.include_background = include_background
        self.focal_name = "focal" if gamma else "ce"  # the key of the focal / CE term in terms()
        self.register_buffer("class_weights", _class_weight_tensor(class_weights), persistent=False)
        # Sigmoid channels are regions (WT, TC, ET), never a background class: every channel counts.
        self._dice = _MonaiDiceLoss(
            include_background=include_background or activation == "sigmoid",
            smooth_nr=smooth,
            smooth_dr=smooth,
            batch=batch_dice,
        )

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms with a non-zero weight: ``{"dice": (), "focal" or "ce": ()}``.

        logits: (N, C, *S); target: see :func:`one_hot_target`.
        """
        logits = _plain(logits)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            one_hot = one_hot_target(logits, _plain(target), self.activation)
            result = {}
            if self.dice_weight:
                probabilities = logits.softmax(1) if self.activation == "softmax" else logits.sigmoid()
                result["dice"] = self._dice(probabilities, one_hot)
            if self.focal_weight:
                result[self.focal_name] = focal_loss(
                    logits, one_hot, self.activation, gamma=self.gamma, class_weights=self.class_weights
                )
        return result

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (N, C, *S), target (see :func:`one_hot_target`) -> scalar float32 loss."""
        weights = {"dice": self.dice_weight, self.focal_name: self.focal_weight}
        values = [weights[name] * value for name, value in self.terms(logits, target).items()]
        return values[0] if len(values) == 1 else values[0] + values[1]

    def extra_repr(self) -> str:
        return (
            f"activation={self.activation!r}, dice_weight={self.dice_weight}, focal_weight={self.focal_weight}, "
            f"gamma={self.gamma}, include_background={self.include_background}"
        )


class DiceCELoss(DiceFocalLoss):
    """``dice_weight * soft Dice + ce_weight * cross-entropy`` (softmax CE or BCE): logits (N, C, *S) -> scalar."""

    def __init__(
        self,
        activation: Activation,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        include_background: bool = False,
        class_weights: Optional[Sequence[float]] = None,
        smooth: float = 1e-5,
        batch_dice: bool = False,
    ) -> None:
        super().__init__(
            activation,
            dice_weight=dice_weight,
            focal_weight=ce_weight,
            gamma=0.0,
            include_background=include_background,
            class_weights=class_weights,
            smooth=smooth,
            batch_dice=batch_dice,
        )


class DiceLoss(DiceFocalLoss):
    """Soft Dice loss ``1 - mean Dice`` after softmax or sigmoid: logits (N, C, *S), target -> scalar."""

    def __init__(
        self,
        activation: Activation,
        *,
        include_background: bool = False,
        smooth: float = 1e-5,
        batch_dice: bool = False,
    ) -> None:
        super().__init__(
            activation, focal_weight=0.0, include_background=include_background, smooth=smooth, batch_dice=batch_dice
        )


class FocalLoss(DiceFocalLoss):
    """Softmax (multi-class) or sigmoid (per-channel) focal loss: logits (N, C, *S), target -> scalar."""

    def __init__(
        self, activation: Activation, *, gamma: float = 2.0, class_weights: Optional[Sequence[float]] = None
    ) -> None:
        super().__init__(activation, dice_weight=0.0, gamma=gamma, class_weights=class_weights)


class CrossEntropyLoss(DiceFocalLoss):
    """Softmax cross-entropy or BCE-with-logits (focal with gamma=0): logits (N, C, *S), target -> scalar."""

    def __init__(self, activation: Activation, *, class_weights: Optional[Sequence[float]] = None) -> None:
        super().__init__(activation, dice_weight=0.0, gamma=0.0, class_weights=class_weights)


class WeightedCrossEntropyLoss(nn.Module):
    """The U-Net paper's pixel-weighted cross-entropy: ``mean(weight_map * CE)``.

    forward: logits (N, C, *S), target as for :class:`DiceFocalLoss`, weight_map (N, *S) or
    (N, 1, *S) (e.g. from :func:`volseg.data.weights.border_weight_map`) -> scalar. ``class_weights`` multiply too.
    """

    def __init__(self, activation: Activation = "softmax", *, class_weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        _check_activation(activation)
        self.activation = activation
        self.register_buffer("class_weights", _class_weight_tensor(class_weights), persistent=False)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight_map: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if weight_map is None:
            raise ConfigError("the weighted_ce loss needs a weight map (border_weight_map) as its third argument")
        logits, weight_map = _plain(logits), _plain(weight_map)
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(weight_map.shape) == expected:
            weight_map = weight_map.unsqueeze(1)
        elif tuple(weight_map.shape) != (logits.shape[0], 1, *logits.shape[2:]):
            raise ShapeError(
                f"weight map {tuple(weight_map.shape)} does not match logits {tuple(logits.shape)}; "
                f"expected (N, *S) or (N, 1, *S)"
            )
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            one_hot = one_hot_target(logits, _plain(target), self.activation)
            return focal_loss(
                logits, one_hot, self.activation, gamma=0.0, class_weights=self.class_weights, pixel_weights=weight_map
            )


# ----------------------------------------------------------------------------- deep supervision


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weights for ``[full, 1/2, 1/4, ...]``: halving per scale, the coarsest zeroed when
    there are more than 2 outputs, normalised to sum 1 (e.g. 4 outputs -> 4/7, 2/7, 1/7, 0)."""
    if num_outputs < 1:
        raise ConfigError(f"deep supervision needs at least one output, got {num_outputs}")
    weights = [0.5**i for i in range(num_outputs)]
    if num_outputs > 2:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def _resize_nearest(tensor: torch.Tensor, size: Sequence[int], spatial_dims: int) -> torch.Tensor:
    """(N, *S) or (N, K, *S) -> same layout at spatial ``size``, nearest neighbour (labels stay labels)."""
    if tuple(tensor.shape[-spatial_dims:]) == tuple(size):
        return tensor
    squeeze = tensor.ndim == spatial_dims + 1
    values = tensor.unsqueeze(1) if squeeze else tensor
    resized = F.interpolate(values.float(), size=tuple(size), mode="nearest-exact").to(tensor.dtype)
    return resized.squeeze(1) if squeeze else resized


class DeepSupervisionLoss(nn.Module):
    """Apply ``loss`` to every output of a deep-supervised network and sum with weights.

    forward: ``outputs`` is one tensor (N, C, *S) (plain ``loss``, e.g. in evaluation) or a list
    ``[full, 1/2, 1/4, ...]`` of (N, C, *S_k); ``target`` and any extra maps (the weight map of
    :class:`WeightedCrossEntropyLoss`) are resized to each S_k by nearest neighbour (for class
    indices and binary region maps alike: no interpolated labels, and small regions are not
    dilated as max-pooling would). Outputs already at the target's size use it as is.
    ``weights``: one per output; default :func:`deep_supervision_weights`, or equal weights when
    every output has the target's size (UNet++'s nested heads, averaged as in its paper).
    """

    def __init__(self, loss: nn.Module, *, weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.loss = loss
        if weights is not None:
            _check_non_negative(**{f"weights[{i}]": w for i, w in enumerate(weights)})
        self.weights = None if weights is None else [float(w) for w in weights]

    def output_weights(self, outputs: Sequence[torch.Tensor], target_size: Sequence[int]) -> list[float]:
        """The weight of each of ``outputs`` (N, C, *S_k) for a target of spatial ``target_size``;
        an output weighed 0 is not computed on (its head is never trained)."""
        dims = outputs[0].ndim - 2
        if self.weights is not None:
            if len(self.weights) != len(outputs):
                raise ConfigError(
                    f"deep supervision has {len(self.weights)} weights but the network gave {len(outputs)} outputs"
                )
            return self.weights
        if all(tuple(o.shape[-dims:]) == tuple(target_size) for o in outputs):
            return [1.0 / len(outputs)] * len(outputs)
        return deep_supervision_weights(len(outputs))

    def forward(
        self, outputs: Union[torch.Tensor, Sequence[torch.Tensor]], target: torch.Tensor, *maps: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target, *maps)
        if len(outputs) == 0:
            raise ShapeError("deep supervision got an empty list of outputs")
        dims = outputs[0].ndim - 2
        total = torch.zeros((), device=outputs[0].device)
        for output, weight in zip(outputs, self.output_weights(outputs, target.shape[-dims:])):
            if weight:
                size = output.shape[2:]
                resized = [_resize_nearest(t, size, dims) for t in (target, *maps)]
                total = total + weight * self.loss(output, *resized)
        return total


# ----------------------------------------------------------------------------- from the config


def loss_from_config(config: LossConfig, *, activation: str, num_outputs: int) -> nn.Module:
    """The loss that ``config`` describes, for a network with ``num_outputs`` output channels.

    ``activation`` is "softmax" (class labels) or "sigmoid" (overlapping regions). ``dice_weight``
    and ``focal_weight`` weigh the two terms of dice_focal / dice_ce; ``class_weights`` (one per
    output channel) weigh the focal / CE term. Wrapped in :class:`DeepSupervisionLoss` when
    ``config.deep_supervision``. Raises ``ConfigError``.
    """
    _check_activation(activation)
    if activation == "softmax" and num_outputs < 2:
        raise ConfigError(f"softmax needs at least 2 output channels, the network has {num_outputs}")
    if config.class_weights is not None and len(config.class_weights) != num_outputs:
        raise ConfigError(
            f"loss.class_weights has {len(config.class_weights)} values but the network has "
            f"{num_outputs} output channels; give one weight per channel"
        )
    dice = dict(include_background=config.include_background)
    weights = dict(class_weights=config.class_weights)
    builders = {
        "dice_focal": lambda: DiceFocalLoss(
            activation,
            dice_weight=config.dice_weight,
            focal_weight=config.focal_weight,
            gamma=config.gamma,
            **dice,
            **weights,
        ),
        "dice_ce": lambda: DiceCELoss(
            activation, dice_weight=config.dice_weight, ce_weight=config.focal_weight, **dice, **weights
        ),
        "dice": lambda: DiceLoss(activation, **dice),
        "focal": lambda: FocalLoss(activation, gamma=config.gamma, **weights),
        "ce": lambda: CrossEntropyLoss(activation, **weights),
        "weighted_ce": lambda: WeightedCrossEntropyLoss(activation, **weights),
    }
    if config.name not in builders:
        raise choice_error("loss.name", config.name, builders)
    if config.name == "dice" and config.class_weights is not None:
        logger.warning("loss.class_weights is ignored by the 'dice' loss (it weighs the focal / CE term only)")
    loss = builders[config.name]()
    logger.debug("loss: %s", loss)
    return DeepSupervisionLoss(loss) if config.deep_supervision else loss
