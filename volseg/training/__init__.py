"""Training: from a config and a dataset to a run folder with checkpoints.

:mod:`~volseg.training.trainer` holds the loop (:class:`Trainer`, :func:`train`); it checks the
config first (:mod:`~volseg.training.preflight`), builds the optimiser and schedule
(:mod:`~volseg.training.optim`), joins a torchrun job (:mod:`~volseg.training.distributed`),
validates each epoch (:mod:`~volseg.training.validation`) and logs (:mod:`~volseg.training.run_log`).
:mod:`~volseg.training.crossval` trains every fold; :mod:`~volseg.training.evaluation` predicts
a fold's held-out cases.

The names below are re-exported here and imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from volseg.lazy import lazy_attributes

if TYPE_CHECKING:
    from volseg.training.trainer import (  # noqa: F401
        BEST,
        CONFIG_FILE,
        LAST,
        SPLITS_FILE,
        Trainer,
        TrainResult,
        build_network,
        output_channels,
        resolve_precision,
        train,
        untrained_parameters,
    )

_TRAINER = "volseg.training.trainer"
_LAZY = {
    name: _TRAINER
    for name in (
        "BEST",
        "CONFIG_FILE",
        "LAST",
        "SPLITS_FILE",
        "Trainer",
        "TrainResult",
        "build_network",
        "output_channels",
        "resolve_precision",
        "train",
        "untrained_parameters",
    )
}
__all__ = list(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
