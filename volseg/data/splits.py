"""Deterministic train/held-out splits by case id, in nnU-Net's splits_final.json shape.

Each fold is ``{"train": [ids], "val": [ids]}`` as nnU-Net writes it: ``val`` are the fold's
held-out cases, which only the evaluation step ever predicts. volseg adds an optional third
key, ``"validation"``: the cases carved from ``train`` (see :func:`carve_validation`) that the
training loop validates on to choose ``best.pt``; they are not trained on. nnU-Net ignores the
extra key, so the file still reads there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from volseg.config import check_validation_cases
from volseg.data.datasets import MAX_LISTED, read_json
from volseg.errors import ConfigError, InputFileError
from volseg.io.atomic import write_text


def _sorted_ids(case_ids: Iterable[str]) -> list[str]:
    ids = list(case_ids)
    if not all(isinstance(i, str) for i in ids):
        raise ConfigError("case ids must be strings")
    if duplicates := sorted(i for i, n in Counter(ids).items() if n > 1):
        raise ConfigError(f"duplicate case ids: {', '.join(duplicates[:MAX_LISTED])}")
    return sorted(ids)


def make_folds(case_ids: Iterable[str], k: int = 5, *, seed: int = 12345) -> list[dict[str, list[str]]]:
    """``k`` train/val splits (nnU-Net's splits_final.json shape); each id is in exactly one ``val``.

    The ids are sorted, shuffled with ``numpy.random.default_rng(seed)`` and dealt round-robin,
    so the same ids give the same folds whatever their order.
    """
    ids = _sorted_ids(case_ids)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= len(ids):
        raise ConfigError(
            f"cannot make k={k!r} folds of {len(ids)} cases; k must be an integer from 2 to the number of cases"
        )
    order = np.random.default_rng(seed).permutation(len(ids))
    vals = [{ids[j] for j in order[i::k]} for i in range(k)]
    return [{"train": [c for c in ids if c not in val], "val": sorted(val)} for val in vals]


def holdout_split(case_ids: Iterable[str], fraction: float = 0.2, *, seed: int = 12345) -> dict[str, list[str]]:
    """One ``{"train", "val"}`` split with ``fraction`` of the cases (at least one) in ``val``."""
    ids = _sorted_ids(case_ids)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"holdout fraction {fraction!r} must be between 0 and 1 (exclusive)")
    if len(ids) < 2:
        raise ConfigError(f"a holdout split needs at least 2 cases; got {len(ids)}")
    n_val = min(len(ids) - 1, max(1, round(len(ids) * fraction)))
    val = {ids[j] for j in np.random.default_rng(seed).permutation(len(ids))[:n_val]}
    return {"train": [c for c in ids if c not in val], "val": sorted(val)}


def validation_count(num_train: int, size: float) -> int:
    """How many of ``num_train`` training cases :func:`carve_validation` sets aside for ``size``.

    ``size`` below 1 is a fraction (rounded, at least one case), 1 or more a count; 0 sets
    none aside. At least one case is always left to train on.
    """
    check_validation_cases(size)
    if size == 0 or num_train < 2:
        return 0
    wanted = int(size) if size >= 1 else max(1, round(num_train * size))
    return min(wanted, num_train - 1)


def carve_validation(train_ids: Iterable[str], size: float, *, seed: int = 54321) -> list[str]:
    """The sorted validation subset of ``train_ids`` (``size`` as in :func:`validation_count`).

    A function of the set of ids, ``size`` and ``seed`` only, like :func:`make_folds`.
    """
    ids = _sorted_ids(train_ids)
    count = validation_count(len(ids), size)
    return sorted(ids[j] for j in np.random.default_rng(seed).permutation(len(ids))[:count])


def _folds_problem(folds: Any) -> str | None:
    """What is wrong with ``folds`` as a list of ``{"train": [...], "val": [...]}``, or None."""
    if not isinstance(folds, list) or not folds:
        return 'expected a non-empty list of {"train": [ids], "val": [ids]} objects'
    val_fold: dict[str, int] = {}
    for i, fold in enumerate(folds):
        if not isinstance(fold, dict) or not all(
            isinstance(fold.get(key), list) and fold[key] and all(isinstance(c, str) for c in fold[key])
            for key in ("train", "val")
        ):
            return f'fold {i} is not a {{"train": [ids], "val": [ids]}} object with non-empty lists of strings'
        if both := sorted(set(fold["train"]) & set(fold["val"])):
            return f"fold {i} has {len(both)} case(s) in both train and val, e.g. {both[0]!r}"
        validation = fold.get("validation", [])
        if not isinstance(validation, list) or not all(isinstance(c, str) for c in validation):
            return f'fold {i} has a "validation" entry that is not a list of case ids'
        if outside := sorted(set(validation) - set(fold["train"])):
            return f'fold {i} validates on {len(outside)} case(s) outside its "train" list, e.g. {outside[0]!r}'
        if len(set(validation)) == len(fold["train"]):
            return f'fold {i} validates on every one of its "train" cases and leaves none to train on'
        for cid in fold["val"]:
            if cid in val_fold:
                return f"case {cid!r} is in val more than once (folds {val_fold[cid]} and {i})"
            val_fold[cid] = i
    return None


def save_folds(folds: list[dict[str, list[str]]], path: str | os.PathLike[str]) -> None:
    """Write ``folds`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    if problem := _folds_problem(folds):
        raise ConfigError(f"cannot save folds to {path}: {problem}")
    write_text(path, json.dumps(folds, indent=4) + "\n")


def load_folds(path: str | os.PathLike[str]) -> list[dict[str, list[str]]]:
    """Folds written by :func:`save_folds` (or nnU-Net's splits_final.json), checked."""
    folds = read_json(Path(path), "folds file")
    if problem := _folds_problem(folds):
        raise InputFileError(f"{path} is not a valid folds file: {problem}")
    return [{key: list(f[key]) for key in ("train", "val", "validation") if key in f} for f in folds]


def split_for_fold(folds: list[dict[str, list[str]]], fold: int) -> tuple[list[str], list[str]]:
    """``(train_ids, val_ids)`` of fold number ``fold``: nnU-Net's train list (it includes any
    validation subset) and the held-out cases."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < len(folds):
        raise ConfigError(f"fold {fold!r} does not exist; allowed: 0 to {len(folds) - 1} ({len(folds)} folds)")
    return list(folds[fold]["train"]), list(folds[fold]["val"])
