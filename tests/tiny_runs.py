"""Shared pieces of the tiny training runs that tests start (a few 16^3 patches on generated cases)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AUGMENTATIONS = [
    "flip",
    "rotate90",
    "affine",
    "elastic",
    "noise",
    "blur",
    "brightness",
    "contrast",
    "gamma",
    "low_resolution",
]
NO_AUGMENTATION = {name: {"prob": 0.0} for name in AUGMENTATIONS}


def tiny_data(root: str | Path, **options: Any) -> dict[str, Any]:
    """The ``data`` section of a tiny run on the MSD-style folder ``root`` (one MRI channel, labels
    outer and inner, 2 folds, no loader processes); ``options`` add or replace keys."""
    return {
        "root": str(root),
        "channels": ["MRI"],
        "labels": {0: "background", 1: "outer", 2: "inner"},
        "num_folds": 2,
        "num_workers": 0,
        **options,
    }
