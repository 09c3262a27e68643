"""Validation during training: whole preprocessed volumes, sliding window, Dice per class or region."""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.metrics import compute_dice

from volseg.config import Config
from volseg.data.label_space import LabelSpace
from volseg.inference.sliding_window import sliding_window_inference
from volseg.training.distributed import DistributedContext, all_reduce_sum

_AUTOCAST_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def structure_names(config: Config) -> list[str]:
    """Names of the validated structures: the regions, or the labels without background."""
    space = LabelSpace.from_config(config)
    return space.output_names if space.regions else space.output_names[1:]


def validate(
    network: torch.nn.Module,
    dataset: Any,
    config: Config,
    context: DistributedContext,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean Dice per structure over the validation cases (split across processes) and their mean.

    A structure empty in both the reference and the prediction of a case counts as Dice 1;
    empty in only one of them as 0.
    """
    space = LabelSpace.from_config(config)
    names = structure_names(config)
    roi = config.inference.roi_size or config.sampling.patch_size
    totals = torch.zeros(len(names), dtype=torch.float64)
    network.eval()
    for index in range(context.rank, len(dataset), context.world_size):
        item = dataset[index]
        image = torch.as_tensor(item["image"]).unsqueeze(0).float()
        logits = sliding_window_inference(
            network,
            image,
            roi,
            overlap=config.inference.overlap,
            blend=config.inference.blend,
            sw_batch_size=config.inference.sw_batch_size,
            device=context.device,
            output_device="auto",  # on the GPU when the logits fit there: no host copy per window batch
            autocast=_AUTOCAST_NAMES.get(autocast_dtype),
        )
        predicted = space.masks_from_logits(logits)
        label = torch.as_tensor(item["label"]).unsqueeze(0).to(logits.device)
        reference = space.target_masks(label)
        if not space.regions:  # background is not a validated structure
            predicted, reference = predicted[:, 1:], reference[:, 1:]
        dice = compute_dice(predicted, reference, include_background=True, ignore_empty=False)[0]
        both_empty = (predicted.sum(dim=tuple(range(2, predicted.ndim))) == 0)[0] & (
            reference.sum(dim=tuple(range(2, reference.ndim))) == 0
        )[0]
        dice = torch.where(both_empty, torch.ones_like(dice), torch.nan_to_num(dice, nan=0.0))
        totals += dice.double().cpu()
    counts = torch.tensor([float(len(range(context.rank, len(dataset), context.world_size)))], dtype=torch.float64)
    totals = all_reduce_sum(totals.to(context.device), context).cpu()
    counts = all_reduce_sum(counts.to(context.device), context).cpu()
    means = (totals / counts.clamp_min(1)).tolist()
    scores = {f"dice_{name}": value for name, value in zip(names, means)}
    scores["dice_mean"] = float(sum(means) / len(means)) if means else math.nan
    return scores
