"""Dimension-generic segmentation networks: one class serves 2D and 3D (``spatial_dims``)."""

from volseg.nn.base import SegmentationNetwork
from volseg.nn.blocks import AttentionGate, ConvBlock, ConvNormAct, DownStep, ResidualBlock, UpStep, center_crop
from volseg.nn.registry import create_model, list_models, model_entry, register_model
from volseg.nn.segnet import SegNet
from volseg.nn.ternausnet import TernausNet
from volseg.nn.unet import UNet
from volseg.nn.unet_paper import PaperUNet
from volseg.nn.unetpp import UNetPlusPlus

__all__ = [
    "AttentionGate",
    "ConvBlock",
    "ConvNormAct",
    "DownStep",
    "PaperUNet",
    "ResidualBlock",
    "SegNet",
    "SegmentationNetwork",
    "TernausNet",
    "UNet",
    "UNetPlusPlus",
    "UpStep",
    "center_crop",
    "create_model",
    "list_models",
    "model_entry",
    "register_model",
]
