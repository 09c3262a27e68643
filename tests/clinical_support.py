"""Shared pieces of the clinical-output tests: a network whose labels are its input's values."""

from __future__ import annotations

import torch

from volseg.config import config_from_dict
from volseg.inference.predictor import Predictor
from volseg.nn import SegmentationNetwork

HIPPOCAMPUS_LABELS = {0: "background", 1: "Anterior", 2: "Posterior"}


class ValueNet(SegmentationNetwork):
    """Class k wherever the image is the k-th label value: the label map is the image itself."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(3, 1, len(values))
        self.register_buffer("values", torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x[:, :1] - self.values) ** 2)


def value_predictor(labels: dict[int, str] | None = None, **data) -> Predictor:
    """A predictor that writes each voxel's input value as its label (no resampling, no crop)."""
    labels = labels or HIPPOCAMPUS_LABELS
    config = config_from_dict(
        {
            "data": {"labels": labels, "channels": ["image"], **data},
            "preprocessing": {"orientation": "RAS", "spacing": None, "intensity": "none", "crop_foreground": False},
            "sampling": {"patch_size": [16, 16, 16]},
        }
    )
    return Predictor(ValueNet(sorted(labels)), config, device="cpu")
