"""Describe checkpoints (``volseg info``) and export their networks for other runtimes.

:mod:`.describe` reads a checkpoint (the ``volseg info`` text and every export's ``model.json``);
:mod:`.traced` writes ONNX and TorchScript, :mod:`.openvino` OpenVINO IR, :mod:`.monai_bundle` a
MONAI bundle; :mod:`.quantize` makes
the int8 OpenVINO network of a checkpoint, refusing one that loses accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from volseg.errors import ConfigError
from volseg.export import traced
from volseg.export.describe import describe_checkpoint, export_description, format_description
from volseg.export.openvino import export_openvino

FORMATS = (*traced.FORMATS, "openvino", "monai-bundle")


def export_model(checkpoint: dict[str, Any], out_dir: str | os.PathLike, *, fmt: str, **options: Any) -> list[Path]:
    """Export in ``fmt`` (:data:`FORMATS`): :func:`.traced.export_model` for ONNX and TorchScript
    (``roi_size``, ``opset``, ``overwrite``), :func:`.openvino.export_openvino` for OpenVINO
    (``roi_size``, ``overwrite``), :func:`.monai_bundle.export_monai_bundle` for a MONAI bundle
    (``name``, ``overwrite``). Returns the written paths, ``model.json`` last."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not valid; allowed: {', '.join(FORMATS)}")
    if fmt == "openvino":
        return export_openvino(checkpoint, out_dir, **options)
    if fmt == "monai-bundle":
        from volseg.export.monai_bundle import export_monai_bundle

        return export_monai_bundle(checkpoint, out_dir, **options)
    return traced.export_model(checkpoint, out_dir, fmt=fmt, **options)


__all__ = ["FORMATS", "describe_checkpoint", "export_description", "export_model", "format_description"]
