"""volseg: segmentation of 3D and 2D medical images with U-Net-family networks.

Public API (re-exported names only; see the README)::

    from volseg import Predictor, sliding_window_inference, create_model, train

Everything that needs torch (``Predictor``, ``sliding_window_inference``, ``train``,
``create_model``, ...) is imported on first use, so ``import volseg`` and ``volseg --help`` do
not import torch (``tests/test_startup.py``).
"""

from __future__ import annotations

from volseg._version import __version__
from volseg.errors import (
    CheckpointError,
    ConfigError,
    InputFileError,
    OutputError,
    OutputExistsError,
    ShapeError,
    TrainingError,
    VolsegError,
)
from volseg.lazy import lazy_attributes

_LAZY = {
    "SegmentationNetwork": "volseg.nn",
    "create_model": "volseg.nn",
    "list_models": "volseg.nn",
    "Predictor": "volseg.inference.predictor",
    "sliding_window_inference": "volseg.inference.sliding_window",
    "train": "volseg.training.trainer",
    "load_config": "volseg.config",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputFileError",
    "OutputError",
    "OutputExistsError",
    "ShapeError",
    "TrainingError",
    "VolsegError",
    "__version__",
    *_LAZY,
]

__getattr__ = lazy_attributes(__name__, _LAZY)
