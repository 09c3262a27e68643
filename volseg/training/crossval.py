"""Cross-validation: train every fold of a config, one after another, each resumable.

``volseg train CONFIG --fold all -o RUN_DIR`` writes ``RUN_DIR/splits_final.json`` (nnU-Net's
format; an existing one, or ``data.splits_file``, is used as it is) and trains fold k into
``RUN_DIR/fold_k``. ``--resume RUN_DIR`` skips the folds that finished, resumes the one that
was cut off and starts the rest. ``volseg evaluate-run RUN_DIR`` then scores every fold's
held-out cases in one table.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from volseg.checkpoint import load_checkpoint
from volseg.config import Config, load_config
from volseg.data.datasets import find_cases
from volseg.data.splits import load_folds, make_folds, save_folds
from volseg.errors import ConfigError, InputFileError

logger = logging.getLogger(__name__)

SPLITS_FINAL = "splits_final.json"


def fold_finished(fold_dir: Path, epochs: int) -> bool:
    """Whether the run in ``fold_dir`` has trained all ``epochs`` (its last.pt says so)."""
    last = fold_dir / "last.pt"
    if not last.is_file():
        return False
    training = load_checkpoint(last).get("training") or {}
    return training.get("epoch", -1) + 1 >= epochs


def shared_splits(config: Config, run_dir: Path) -> Path:
    """The folds every fold run reads: ``data.splits_file``, else ``run_dir/splits_final.json``
    (made once from the dataset's case ids)."""
    if config.data.splits_file:
        path = Path(config.data.splits_file)
        if not path.is_file():
            raise InputFileError(f"data.splits_file {path} does not exist")
    else:
        path = run_dir / SPLITS_FINAL
        if not path.is_file():
            dataset = find_cases(config.data.root, layout=config.data.layout)
            save_folds(make_folds(dataset.case_ids, config.data.num_folds, seed=12345), path)
    folds = load_folds(path)
    if len(folds) != config.data.num_folds:
        raise ConfigError(f"{path} holds {len(folds)} folds but data.num_folds={config.data.num_folds}")
    return path


def resume_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The config of a cross-validation run folder (from the first fold that was started), with
    ``--set`` ``overrides``."""
    configs = sorted(run_dir.glob("fold_*/config.yaml"), key=lambda p: (len(str(p)), str(p)))
    if not configs:
        raise InputFileError(f"{run_dir} holds no fold_<k>/config.yaml; nothing to resume")
    return load_config(configs[0], overrides)


def train_all_folds(
    config: Config, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False, **options: Any
) -> list[Any]:
    """Train fold 0 .. ``data.num_folds - 1`` of ``config`` into ``run_dir/fold_<k>``; returns
    each fold's :class:`volseg.training.TrainResult` (None for folds that had finished)."""
    from volseg.training.preflight import check_training_config
    from volseg.training.trainer import train

    check_training_config(config)  # before the dataset is read for the shared splits
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = shared_splits(config, run_dir)
    results = []
    for fold in range(config.data.num_folds):
        fold_dir = run_dir / f"fold_{fold}"
        data = dataclasses.replace(config.data, fold=fold, splits_file=str(splits))
        fold_config = dataclasses.replace(config, data=data)
        if resume and fold_finished(fold_dir, config.training.epochs):
            logger.info("fold %d has finished (%s); skipping it", fold, fold_dir)
            results.append(None)
            continue
        logger.info("training fold %d of %d into %s", fold, config.data.num_folds, fold_dir)
        results.append(train(fold_config, fold_dir, resume=resume, overwrite=overwrite, **options))
    return results
