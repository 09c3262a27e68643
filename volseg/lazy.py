"""Modules imported on first use, so that what a code path never touches need not be installed.

SimpleITK (about 50 MB) is only needed to read NRRD/MHA/DICOM/MINC 2 files and for connected
components; a GPU machine that trains and predicts NIfTI works without it. Packages re-export
names that need torch through :func:`lazy_attributes`, so importing them does not import torch.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
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


def lazy_attributes(module: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports ``table[name]`` on first use and returns its ``name``.

    A package's ``__init__`` re-exports names this way without importing torch for them; other
    names raise ``AttributeError``, so ``from package import submodule`` still imports the submodule.
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
