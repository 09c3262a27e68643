"""Modules imported on first use, so that what a code path never touches need not be installed.

SimpleITK (about 50 MB) is only needed to read NRRD/MHA/DICOM/MINC 2 files and for connected
components; a GPU machine that trains and predicts NIfTI works without it.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """Stands for the module ``name`` and imports it on the first attribute access."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lazy_name = name

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):  # introspection (copy, pickle, doctest) must not import it
            raise AttributeError(attribute)
        return getattr(importlib.import_module(self._lazy_name), attribute)


sitk: Any = LazyModule("SimpleITK")
