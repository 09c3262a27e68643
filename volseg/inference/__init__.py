"""Inference: from a checkpoint and input files to label maps on disk.

The flow, lowest first: :mod:`~volseg.inference.sliding_window` (with
:mod:`~volseg.inference.window_batch` and :mod:`~volseg.inference.fast_layers`) runs a network
over a volume; :mod:`~volseg.inference.class_maps` turns logits into labels a chunk at a time;
:mod:`~volseg.inference.predictor` predicts one case; :mod:`~volseg.inference.segment` finds the
inputs (:mod:`~volseg.inference.inputs`, :mod:`~volseg.inference.sharding`) and writes labels,
post-processing (:mod:`~volseg.inference.postprocess`) and previews
(:mod:`~volseg.inference.preview`).

The sliding-window names below are re-exported here and imported on first use, so that the
submodules that need no torch (``sharding``, ``inputs``) can be imported without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from volseg.lazy import lazy_attributes

if TYPE_CHECKING:
    from volseg.inference.sliding_window import (  # noqa: F401
        AUTOCAST_DTYPES,
        BLEND_MODES,
        SIGMA_SCALE,
        check_sw_batch_size,
        flip_combinations,
        importance_map,
        sliding_window_inference,
        window_starts,
    )

_SLIDING_WINDOW = "volseg.inference.sliding_window"
_LAZY = {
    name: _SLIDING_WINDOW
    for name in (
        "AUTOCAST_DTYPES",
        "BLEND_MODES",
        "SIGMA_SCALE",
        "check_sw_batch_size",
        "flip_combinations",
        "importance_map",
        "sliding_window_inference",
        "window_starts",
    )
}
__all__ = list(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
