"""Describe checkpoints (``volseg info``) and export their networks for other runtimes.

:mod:`.describe` reads a checkpoint (the ``volseg info`` text and every export's ``model.json``);
:mod:`.traced` writes ONNX and TorchScript.
"""

from volseg.export.describe import describe_checkpoint, export_description, format_description
from volseg.export.traced import FORMATS, export_model

__all__ = ["FORMATS", "describe_checkpoint", "export_description", "export_model", "format_description"]
