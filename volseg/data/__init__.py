"""Datasets on disk: case discovery for MSD, nnU-Net, BraTS and plain folders, and k-fold splits."""

from volseg.data.datasets import Case, Dataset, find_cases
from volseg.data.splits import holdout_split, load_folds, make_folds, save_folds, split_for_fold

__all__ = [
    "Case",
    "Dataset",
    "find_cases",
    "holdout_split",
    "load_folds",
    "make_folds",
    "save_folds",
    "split_for_fold",
]
