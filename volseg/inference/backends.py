"""Which runner computes the network inside the sliding window: PyTorch or OpenVINO.

Every backend goes through the same sliding window (windows, blending, mirroring, output device,
memory bound); only the network call differs. ``torch`` calls the ``nn.Module`` itself;
``openvino`` calls an :class:`volseg.inference.openvino_runner.OpenVINONetwork`, which takes the
same (B, C, *roi) float32 windows and gives the same (B, K, *out) float32 logits, on the CPU.

``auto`` is OpenVINO on the CPU where it is installed and the network family is marked for it in
:data:`AUTO_CPU_BACKEND`, and torch otherwise, always on CUDA.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from volseg.errors import ConfigError, choice_error
from volseg.inference.openvino_runner import OpenVINOModel, OpenVINONetwork, load_openvino

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")

# ---------------------------------------------------------------------------------------------
# THE AUTO DECISION PER NETWORK FAMILY (edit here after benchmarking, issue 15).
#: Backend that ``auto`` picks on the CPU for each network family (``network.config["name"]``)
#: when OpenVINO is installed, from ``scripts/bench_backends.py --threads 2 --repeats 3`` (2026-12-01,
#: idle 2-core CPU; OpenVINO fp32 over PyTorch, sliding window, 3D / 2D): unet 1.97x / 1.22x,
#: attention-unet 1.87x / 1.38x, unet++ 1.88x / 1.48x, ternausnet 2.89x / 1.51x, unet-paper
#: 3.99x / 1.69x, segnet **0.63x / 0.29x** (its max-unpooling is slow in OpenVINO): torch for segnet.
AUTO_CPU_BACKEND: dict[str, str] = {
    "unet": "openvino",
    "attention-unet": "openvino",
    "unet++": "openvino",
    "unet-paper": "openvino",
    "segnet": "torch",
    "ternausnet": "openvino",
}
#: ``auto`` on the CPU for networks not in the table (built outside volseg's registry).
AUTO_CPU_DEFAULT = "torch"
# ---------------------------------------------------------------------------------------------


def check_backend(backend: object) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a :class:`ConfigError`."""
    if backend not in BACKENDS:
        raise choice_error("backend", backend, BACKENDS)
    return str(backend)


def openvino_installed() -> bool:
    """Whether ``import openvino`` works here."""
    try:
        load_openvino()
    except ConfigError:
        return False
    return True


def network_family(network: nn.Module) -> str | None:
    """The registry name of ``network`` (``unet``, ``segnet``, ...), or ``None``."""
    config = getattr(network, "config", None)
    return config.get("name") if isinstance(config, dict) else None


def resolve_backend(
    backend: str, device: str | torch.device, network: nn.Module, *, model: OpenVINOModel | None = None
) -> str:
    """``"torch"`` or ``"openvino"``: what runs ``network`` on ``device`` for ``backend``.

    ``model``: the OpenVINO network the checkpoint carries (int8), which ``auto`` runs on the
    CPU (and then needs OpenVINO). Raises :class:`ConfigError` for ``openvino`` off the CPU or
    without OpenVINO installed.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "openvino":
        if device.type != "cpu":
            raise ConfigError(f"backend 'openvino' runs on the CPU, not on {device}; use device cpu or backend torch")
        load_openvino()
        return "openvino"
    if device.type != "cpu":
        return "torch"
    if model is not None:
        load_openvino(f"this model's {model.precision} OpenVINO network")
        return "openvino"
    choice = AUTO_CPU_BACKEND.get(network_family(network) or "", AUTO_CPU_DEFAULT)
    if choice == "openvino" and not openvino_installed():
        logger.debug("OpenVINO is not installed: backend auto runs torch")
        return "torch"
    return choice


def runner_for(
    network: Any,
    backend: str,
    *,
    model: OpenVINOModel | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """What the sliding window calls for a resolved ``backend`` (``torch`` or ``openvino``):
    ``network`` itself, or an :class:`OpenVINONetwork` of it (running ``model`` when given).
    A network already wrapped for a backend is returned as it is."""
    if not isinstance(network, nn.Module) or backend == "torch":
        return network
    if backend != "openvino":
        raise choice_error("resolved backend", backend, ("torch", "openvino"))
    return OpenVINONetwork(network, model=model, cache_dir=cache_dir)
