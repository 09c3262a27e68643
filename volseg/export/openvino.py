"""Export a checkpoint's network as OpenVINO IR (``model.xml`` + ``model.bin``), with ``model.json`` beside it.

The network is converted as the ``openvino`` backend converts it
(:func:`volseg.inference.openvino_runner.convert_network`: eval mode, dynamic batch axis, the
window's spatial size fixed), weights kept in float32. A checkpoint written by ``volseg quantize``
exports its int8 network instead. Before anything is written the IR is compiled and run on a
batch of two random windows and compared with PyTorch (float32; int8 within its own tolerance is
left to the quantization guard, which checked it on real cases).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from volseg.checkpoint import check_checkpoint, checkpoint_config, model_from_checkpoint
from volseg.errors import CheckpointError
from volseg.export.describe import FILE_NAMES, default_roi_size, export_description
from volseg.export.traced import check_roi, output_paths, outputs_match
from volseg.inference.openvino_runner import OpenVINONetwork, checkpoint_model, load_openvino
from volseg.io.atomic import atomic_target, write_text

logger = logging.getLogger(__name__)


def export_openvino(
    checkpoint: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    roi_size: Sequence[int] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``model.xml``, ``model.bin`` and ``model.json`` into ``out_dir``; returns their paths.

    The input is (batch, C, *roi_size), batch dynamic; ``roi_size`` defaults to the checkpoint's
    inference window (else its training patch size). Raises :class:`OutputExistsError` for
    existing files unless ``overwrite``, :class:`ShapeError` for a window the network cannot
    take, :class:`CheckpointError` when the IR does not reproduce PyTorch, and
    :class:`ConfigError` without OpenVINO or for a network it cannot convert.
    """
    ov = load_openvino("volseg export --format openvino")
    checkpoint = check_checkpoint(checkpoint)
    xml_path, _, json_path = output_paths(out_dir, [FILE_NAMES["openvino"], "model.bin", "model.json"], overwrite)
    config = checkpoint_config(checkpoint)
    network = model_from_checkpoint(checkpoint)
    roi = check_roi(network, roi_size if roi_size is not None else default_roi_size(config))
    int8 = checkpoint_model(checkpoint)
    runner = OpenVINONetwork(network, model=int8)
    model = runner.model((network.in_channels, *roi))
    if int8 is None:
        _check_against_torch(network, runner, roi)

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the outputs, so that moving the files into place never crosses file systems.
    with tempfile.TemporaryDirectory(dir=xml_path.parent, prefix=".tmp-openvino-") as folder:
        ov.save_model(model.clone(), Path(folder) / "model.xml", compress_to_fp16=False)
        for name in ("model.bin", "model.xml"):  # the weights first: an xml is never left without them
            with atomic_target(xml_path.parent / name) as temporary:
                os.replace(Path(folder) / name, temporary)
    description = export_description(checkpoint, config, network, roi, fmt="openvino", dynamic=("batch",), opset=None)
    description["model"].update(
        weights_file="model.bin",
        dtype="int8 (quantized by volseg quantize; float32 input and output)" if int8 else "float32",
        openvino_version=ov.get_version(),
    )
    write_text(json_path, json.dumps(description, indent=2) + "\n")
    logger.info("exported %s (OpenVINO IR, input %s) and %s", xml_path, description["model"]["input_shape"], json_path)
    return [xml_path, xml_path.with_suffix(".bin"), json_path]


def _check_against_torch(network: torch.nn.Module, runner: OpenVINONetwork, roi: tuple[int, ...]) -> None:
    """Raise :class:`CheckpointError` unless the IR gives PyTorch's logits on two random windows."""
    probe = torch.randn((2, network.in_channels, *roi), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network(probe)
    if not outputs_match(runner(probe), expected):
        raise CheckpointError("the OpenVINO network does not reproduce the PyTorch output; try --format onnx")
