"""volseg: segmentation of 3D and 2D medical images with U-Net-family networks.

Public API (re-exported names only; see the README)::

    from volseg import create_model, list_models
    model = create_model("unet", spatial_dims=3, in_channels=1, num_classes=3)
"""

from volseg._version import __version__
from volseg.errors import (
    CheckpointError,
    ConfigError,
    InputFileError,
    OutputExistsError,
    ShapeError,
    VolsegError,
)
from volseg.nn import SegmentationNetwork, create_model, list_models

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputFileError",
    "OutputExistsError",
    "SegmentationNetwork",
    "ShapeError",
    "VolsegError",
    "__version__",
    "create_model",
    "list_models",
]
