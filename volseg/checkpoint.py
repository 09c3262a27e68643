"""The self-describing checkpoint: one file holds everything needed to segment a new image.

Layout (a dict of tensors and JSON-able values, so it loads with ``weights_only=True``)::

    format            "volseg-checkpoint"
    format_version    int, FORMAT_VERSION when written
    volseg_version    the writer's version
    created           ISO time
    config            the fully resolved run config (data labels/regions/channels,
                      preprocessing with its statistics, inference defaults, ...)
    label_space       what the outputs mean (:class:`volseg.data.label_space.LabelSpace`
                      ``to_dict``); older checkpoints lack it: rebuilt from their config
    network           the network's resolved constructor arguments (``model.config``)
    state_dict        the weights, unwrapped from DDP / torch.compile
    metrics           optional, e.g. the validation Dice of these weights
    fingerprint       optional, what the training scans looked like
                      (:class:`volseg.data.training_fingerprint.TrainingFingerprint` ``to_dict``);
                      older checkpoints lack it: their inputs are not compared
    openvino          optional, written by ``volseg quantize``: an int8 OpenVINO network (IR xml
                      text, weights as a uint8 tensor) with its calibration and validation record
                      (:mod:`volseg.export.quantize`); the float32 ``state_dict`` stays
    training          optional, for resuming only: epoch, optimiser, scheduler, grad
                      scaler, RNG states, best metric, history

Files are written atomically (temporary file, fsync, rename), so a kill never leaves
a broken checkpoint.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from volseg._version import __version__
from volseg.config import Config, config_from_dict, config_to_dict
from volseg.data.label_space import LabelSpace
from volseg.data.training_fingerprint import TrainingFingerprint
from volseg.errors import CheckpointError, InputFileError, VolsegError
from volseg.io.atomic import atomic_target
from volseg.nn import SegmentationNetwork, create_model

logger = logging.getLogger(__name__)

FORMAT = "volseg-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "config", "network", "state_dict")

#: Functions that turn a checkpoint of format version N into N + 1.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain network inside a DDP / DataParallel wrapper or a ``torch.compile`` result."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def build_checkpoint(
    model: nn.Module,
    config: Config,
    *,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    epoch: int | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict for ``model`` trained with ``config`` (``epoch``: the
    1-based epoch it was saved after, for a run's checkpoints; ``fingerprint``: the training
    cases' :class:`TrainingFingerprint` as a dict)."""
    network = unwrap_model(model)
    if not isinstance(network, SegmentationNetwork) or not network.config:
        raise CheckpointError("only networks built with volseg.nn.create_model can be checkpointed")
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "volseg_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config_to_dict(config),
        "label_space": LabelSpace.from_config(config).to_dict(),
        "network": dict(network.config),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "metrics": metrics or {},
    }
    if epoch is not None:
        checkpoint["epoch"] = epoch
    if fingerprint is not None:
        checkpoint["fingerprint"] = fingerprint
    if training is not None:
        checkpoint["training"] = training
    return checkpoint


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` to ``path`` atomically; returns the path."""
    with atomic_target(path) as temporary:
        torch.save(checkpoint, temporary)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint (``weights_only=True``), upgrading older format versions.

    Raises :class:`InputFileError` for a missing file and :class:`CheckpointError` for a
    corrupt, foreign or newer-format one.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a damaged file fails anywhere in the unpickler (KeyError, EOFError, ...)
        detail = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {detail}") from None
    return check_checkpoint(checkpoint, str(path))


def check_checkpoint(checkpoint: Any, source: str = "checkpoint") -> dict[str, Any]:
    """Validate the structure and format version of a loaded checkpoint; upgrade old versions."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a volseg checkpoint (no '{FORMAT}' marker)")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{source}: incomplete checkpoint, missing {', '.join(missing)}")
    version = checkpoint["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{source}: format version {version!r} (written by volseg {checkpoint.get('volseg_version', '?')}); "
            f"this volseg {__version__} reads versions 1 to {FORMAT_VERSION}; upgrade volseg to read it"
        )
    while checkpoint["format_version"] < FORMAT_VERSION:
        checkpoint = _UPGRADES[checkpoint["format_version"]](checkpoint)
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any]) -> Config:
    """The run config stored in a checkpoint, checked."""
    try:
        return config_from_dict(checkpoint["config"])
    except VolsegError as error:
        raise CheckpointError(f"checkpoint config is not valid: {error}") from None


def checkpoint_label_space(checkpoint: dict[str, Any]) -> LabelSpace:
    """The label space stored in a checkpoint, or for one written before it was stored, its config's."""
    if "label_space" in checkpoint:
        try:
            return LabelSpace.from_dict(checkpoint["label_space"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(f"checkpoint label_space is not valid: {error!r}") from None
    return LabelSpace.from_config(checkpoint_config(checkpoint))


def checkpoint_fingerprint(checkpoint: dict[str, Any]) -> TrainingFingerprint | None:
    """The training fingerprint stored in a checkpoint; None for one written before it was
    stored, or whose fingerprint this volseg cannot read (newer or malformed: logged)."""
    if "fingerprint" not in checkpoint:
        return None
    try:
        return TrainingFingerprint.from_dict(checkpoint["fingerprint"])
    except ValueError as error:
        logger.info("the checkpoint's training fingerprint is not used: %s", error)
        return None


def model_from_checkpoint(checkpoint: dict[str, Any], *, device: str | torch.device = "cpu") -> SegmentationNetwork:
    """Rebuild the network from the checkpoint's description and load its weights (float32, eval mode)."""
    try:
        model = create_model(**checkpoint["network"])
    except (VolsegError, TypeError) as error:
        raise CheckpointError(f"checkpoint network description is not valid: {error}") from None
    load_weights(model, checkpoint["state_dict"], "checkpoint weights do not fit its network")
    return model.to(device).eval()


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], problem: str) -> None:
    """Load ``state_dict`` into ``model`` as float32 (every tensor, no other); a mismatch raises
    :class:`CheckpointError` starting with ``problem`` and naming the first tensors that differ."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # The first line only says "Error(s) in loading state_dict for UNet:"; the second names a tensor.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:300]
        raise CheckpointError(f"{problem}: {detail}") from None


def inference_only(checkpoint: dict[str, Any], *, half: bool = False) -> dict[str, Any]:
    """A copy without the training state (for sharing or bundling); fp16 weights with ``half``."""
    slim = {k: v for k, v in checkpoint.items() if k != "training"}
    if half:
        slim["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    return slim


# ----------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain values (the CUDA
    states of every GPU this process sees; the trainer also reseeds its GPU's every epoch)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    state = {
        "python": list(python_state),
        "python_version": python_version,
        "python_gauss": python_gauss,
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _cpu_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A saved generator state (1D, any device and integer dtype) as the CPU ByteTensor torch's setters take."""
    return torch.as_tensor(tensor).to(device="cpu", dtype=torch.uint8)


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`; its tensors may have been loaded onto any device."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    numpy = state["numpy"]
    keys = torch.as_tensor(numpy["keys"]).cpu().numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        # Only the GPUs this machine has: it may have fewer (or more) than the one that saved them.
        for index, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_cpu_bytes(saved), index)
