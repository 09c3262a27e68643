"""Everything about a training config that can be checked before any data is read.

:func:`volseg.config.load_config` checks each value and the rules that tie fields together;
what needs the other modules (the network's constructor, whether it takes the patch and the
window, the loss's options, the label/region mapping, the preprocessing and augmentation
pipelines) is checked here, in one call, by building each piece as training would, the network
on the meta device (no memory, no time). ``volseg train`` and the Trainer call it before they
look at the data, so a config that passes does not fail later for a reason the config alone shows.
"""

from __future__ import annotations

import torch

from volseg.config import Config
from volseg.data.label_space import LabelSpace
from volseg.data.transforms import inference_transforms, training_transforms
from volseg.errors import ConfigError
from volseg.losses import loss_from_config
from volseg.nn import create_model


def output_channels(config: Config) -> int:
    """Network outputs: one per region (sigmoid) or one per label (softmax)."""
    return LabelSpace.from_config(config).num_outputs


def check_training_config(config: Config) -> None:
    """Raise ``ConfigError`` naming the key for anything that would stop training later."""
    if not config.data.regions and not any(value != 0 for value in config.data.labels):
        raise ConfigError(
            f"data.labels={dict(config.data.labels)} has no foreground label; give every label value "
            "and its name, e.g. {0: background, 1: tumour} (volseg plan writes them)"
        )
    space = LabelSpace.from_config(config)
    space.check()
    loss_from_config(config.loss, activation=space.activation, num_outputs=space.num_outputs)
    training_transforms(config)
    inference_transforms(config.preprocessing)
    with torch.device("meta"):
        try:
            network = create_model(
                config.network.name,
                config.network.spatial_dims,
                max(len(config.data.channels), 1),
                space.num_outputs,
                **config.network.options,
            )
        except TypeError as error:  # an unknown or missing constructor argument
            raise ConfigError(f"network.options do not fit network {config.network.name!r}: {error}") from None
    for key, shape in (
        ("sampling.patch_size", config.sampling.patch_size),
        ("inference.roi_size", config.inference.roi_size),
    ):
        if shape is not None and not network.is_valid_input_shape(shape):
            nearest = network.nearest_valid_shape(shape)
            raise ConfigError(
                f"{key}={list(shape)} cannot pass through the network "
                f"(its strides need sizes like {list(nearest) if nearest else 'larger ones'})"
            )
