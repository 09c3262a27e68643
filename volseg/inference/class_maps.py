"""From stitched scores to labels, a few classes at a time, on the device where memory allows.

The logits (K, *S) of a case may lie in host memory (a 100-class 512 x 512 x 300 output is 31 GB
of float32; see :func:`volseg.inference.window_batch.accumulation_device`). They reach the device in chunks
of classes sized to its free memory (:func:`class_chunk`), where each chunk becomes probabilities,
is resampled to the input grid by the caller and decided by a :class:`RunningDecision`:

* softmax classes: ``exp(logit - logsumexp)``, the log-normaliser summed chunk by chunk first
  (:func:`log_normaliser`); a chunk of every class is ``torch.softmax`` itself; the labels are a
  running argmax (ties go to the lower class, as in ``torch.argmax``);
* sigmoid regions: each region's mask is its own probability > 0.5.

No step holds more than one chunk of float32 class maps on the device; what comes back to the
host is the decision (uint8/int32), and the probabilities only when they are written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

#: Share of the free memory one chunk's float32 class maps may take.
CHUNK_FRACTION = 0.25
#: Float32 maps per class in flight, each on both grids: the chunk (its logits, probabilities) and a temporary.
MAPS_PER_CLASS = 2


def class_chunk(num_classes: int, voxels: int, free_bytes: int) -> int:
    """Classes per chunk: as many as fit :data:`MAPS_PER_CLASS` float32 maps of ``voxels`` (the
    preprocessed plus the input grid's) in :data:`CHUNK_FRACTION` of ``free_bytes``; at most
    ``num_classes``, and 0 when not even one class fits."""
    per_class = MAPS_PER_CLASS * 4 * max(voxels, 1)
    return min(num_classes, int(free_bytes * CHUNK_FRACTION // per_class))


def log_normaliser(logits: torch.Tensor, device: torch.device, chunk: int) -> torch.Tensor:
    """``logsumexp`` over the classes of ``logits`` (K, *S), (*S) float32 on ``device``, from
    ``chunk`` classes at a time (a running maximum and a rescaled running sum)."""
    peak = total = None
    for start in range(0, logits.shape[0], chunk):
        part = logits[start : start + chunk].to(device, torch.float32)
        top = part.amax(dim=0)
        if peak is None:
            peak, total = top, torch.zeros_like(top)
        else:
            top = torch.maximum(peak, top)
            total.mul_(torch.exp(peak - top))
            peak = top
        total.add_(torch.exp(part - peak).sum(dim=0))
    return peak + total.log()


def probability_chunks(
    scores: torch.Tensor, *, regions: bool, device: torch.device, chunk: int, activated: bool = False
) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(classes, probabilities)`` for each chunk of ``chunk`` classes of ``scores`` (K, *S):
    probabilities (c, *S) float32 on ``device``, sigmoid per region or softmax over every class;
    ``activated``: ``scores`` are probabilities already."""
    count = scores.shape[0]
    normaliser = None
    if not (regions or activated) and chunk < count:
        normaliser = log_normaliser(scores, device, chunk)
    for start in range(0, count, chunk):
        classes = slice(start, min(start + chunk, count))
        part = scores[classes].to(device, torch.float32)
        if activated:
            yield classes, part
        elif regions:
            yield classes, torch.sigmoid(part)
        elif normaliser is None:
            yield classes, torch.softmax(part, dim=0)
        else:
            yield classes, torch.exp(part - normaliser)


class RunningDecision:
    """Labels decided chunk by chunk: ``add(start, probabilities)`` with probabilities (c, *S) of
    classes ``start .. start + c - 1``; ``result()`` is the class index map (*S), uint8 below 256
    classes and int32 above, or the region masks (R, *S) uint8."""

    def __init__(self, regions: bool, num_classes: int) -> None:
        self.regions, self.num_classes = regions, num_classes
        self.best: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.masks: list[torch.Tensor] = []

    def add(self, start: int, probabilities: torch.Tensor) -> None:
        if self.regions:
            self.masks.append((probabilities > 0.5).to(torch.uint8))
            return
        index = probabilities.argmax(dim=0)
        if self.index is None:
            self.index = index
            if probabilities.shape[0] < self.num_classes:  # more chunks to come: keep the best probability
                self.best = probabilities.gather(0, index[None])[0]
            return
        value = probabilities.gather(0, index[None])[0]
        better = value > self.best  # strictly: a tie keeps the lower class
        self.best = torch.where(better, value, self.best)
        self.index = torch.where(better, index + start, self.index)

    def result(self) -> torch.Tensor:
        if self.regions:
            return torch.cat(self.masks)
        assert self.index is not None, "no chunk was added"
        return self.index.to(torch.uint8 if self.num_classes < 256 else torch.int32)


def entropy_terms(probabilities: torch.Tensor, regions: bool) -> torch.Tensor:
    """Summed voxel-wise entropy terms (*S) of probabilities (c, *S): ``-p log p`` over classes, or the
    binary entropy of each region; :func:`normalised_entropy` turns their sum over chunks into [0, 1]."""
    p = probabilities.clamp(1e-7, 1 - 1e-7)
    if regions:
        return -(p * p.log() + (1 - p) * (1 - p).log()).sum(dim=0)
    return -(p * p.log()).sum(dim=0)


def normalised_entropy(total: torch.Tensor, num_classes: int, regions: bool) -> torch.Tensor:
    """Entropy in [0, 1] from the :func:`entropy_terms` of every class: divided by log K (classes), or
    averaged over the regions and divided by log 2."""
    if regions:
        return total / num_classes / math.log(2)
    return total / math.log(max(num_classes, 2))
