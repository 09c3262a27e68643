"""Labels from class chunks: the same answer as all classes at once, with a bounded largest tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from volseg.config import config_from_dict
from volseg.inference import class_maps
from volseg.inference.class_maps import RunningDecision, class_chunk, log_normaliser, probability_chunks
from volseg.inference.predictor import Predictor
from volseg.io import Volume
from volseg.nn import SegmentationNetwork

CPU = torch.device("cpu")


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor an operation allocates (views and in-place results aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            inputs = {t.untyped_storage().data_ptr() for t in tensors}
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                    self.largest = max(self.largest, tensor.numel())
        return out


def test_chunk_fits_its_maps_in_a_quarter_of_the_free_memory():
    voxels = 2 * 300 * 512 * 512  # the preprocessed and the input grid of a 512 x 512 x 300 case
    chunk = class_chunk(100, voxels, 24 * 2**30)
    assert 0 < chunk < 100 and chunk * class_maps.MAPS_PER_CLASS * 4 * voxels <= 0.25 * 24 * 2**30
    assert class_chunk(3, 1000, 2**30) == 3 and class_chunk(100, voxels, 2**20) == 0


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_log_normaliser_by_chunks_is_logsumexp(chunk):
    logits = torch.randn(10, 4, 5, 6) * 30  # large logits: the running maximum keeps exp finite
    torch.testing.assert_close(log_normaliser(logits, CPU, chunk), torch.logsumexp(logits, dim=0))


@pytest.mark.parametrize("chunk", [1, 4, 10])
def test_running_argmax_over_chunks_matches_the_argmax_of_the_softmax(chunk):
    logits = torch.randn(10, 6, 7, 8)
    logits[7, 0, 0, 0] = logits[2, 0, 0, 0] = 50.0  # a tie across chunks: the lower class wins, as in argmax
    decision, probabilities = RunningDecision(False, 10), []
    for classes, maps in probability_chunks(logits, regions=False, device=CPU, chunk=chunk):
        decision.add(classes.start, maps)
        probabilities.append(maps)
    labels = decision.result()
    assert labels.dtype == torch.uint8 and int(labels[0, 0, 0]) == 2
    assert torch.equal(labels.long(), torch.softmax(logits, dim=0).argmax(dim=0))
    torch.testing.assert_close(torch.cat(probabilities), torch.softmax(logits, dim=0))


def test_regions_are_thresholded_one_by_one():
    logits = torch.randn(5, 4, 4, 4)
    decision = RunningDecision(True, 5)
    for classes, maps in probability_chunks(logits, regions=True, device=CPU, chunk=2):
        decision.add(classes.start, maps)
    assert torch.equal(decision.result(), (logits > 0).to(torch.uint8))


class PointwiseNet(SegmentationNetwork):
    """A 1x1x1 convolution to 100 classes: a fake large class count that costs nothing to run."""

    def __init__(self) -> None:
        super().__init__(3, 1, 100)
        self.conv = torch.nn.Conv3d(1, 100, 1)
        torch.nn.init.normal_(self.conv.weight, std=3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def hundred_class_predictor() -> Predictor:
    config = config_from_dict(
        {
            "data": {"labels": {i: f"class{i}" for i in range(100)}, "channels": ["image"]},
            "preprocessing": {
                "orientation": "RAS",
                "spacing": [1.3, 1.1, 0.9],
                "intensity": "none",
                "crop_foreground": False,
            },
            "sampling": {"patch_size": [16, 16, 16]},
        }
    )
    return Predictor(PointwiseNet().eval(), config, device="cpu", mask_nonzero=False)


def test_a_hundred_classes_never_need_every_class_map_at_once(monkeypatch):
    predictor = hundred_class_predictor()
    image = Volume(np.random.default_rng(0).normal(size=(24, 20, 18)).astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    whole = predictor.predict_volumes([image], probabilities=True, uncertainty="entropy")  # all 100 classes fit
    data = predictor.transforms({"image": [image], "case_id": "case"})
    scores, _ = predictor._scores(data.image[None], False)
    voxels = scores[0].numel() + 24 * 20 * 18  # the preprocessed and the input grid
    free = int(10 * class_maps.MAPS_PER_CLASS * 4 * voxels / class_maps.CHUNK_FRACTION)  # 10 classes' maps fit
    monkeypatch.setattr("volseg.inference.predictor.free_memory", lambda device: free)
    chunks = []

    def recorded(*args, **kwargs):
        for classes, maps in class_maps.probability_chunks(*args, **kwargs):
            chunks.append(maps.shape[0])
            yield classes, maps

    monkeypatch.setattr("volseg.inference.predictor.probability_chunks", recorded)
    with LargestTensor() as meter:
        labels, probabilities, entropy = predictor._outputs_on_input_grid(
            scores, data, activated=False, probabilities=True, entropy=True
        )
    assert chunks == [10] * 10
    assert meter.largest <= 10 * max(scores[0].numel(), 24 * 20 * 18) < scores.numel() // 5  # one chunk, never 100 maps
    assert np.array_equal(labels, whole.labels)
    np.testing.assert_allclose(probabilities, whole.probabilities, atol=1e-6)
    np.testing.assert_allclose(entropy, whole.uncertainty, atol=1e-5)
