"""Corpus rows for the other commands: ``volseg evaluate``, ``volseg plan`` and ``volseg train``
(the contract: test_bad_inputs.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from corpus_support import (
    EVALUATE,
    OBLIQUE,
    PLAN,
    SHAPE,
    TRAIN,
    Ctx,
    Fails,
    Works,
    both,
    image,
    label_map,
    nifti,
    raw_bytes,
)
from tiny_runs import NO_AUGMENTATION, tiny_data

# ----------------------------------------------------------------------------- builders

# --- evaluate


def eval_pair(pred: np.ndarray, ref: np.ndarray, pred_affine=None, ref_affine=None) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        nifti(c.d / "pred.nii.gz", pred, pred_affine)
        nifti(c.d / "ref.nii.gz", ref, ref_affine)

    return build


# --- plan / train datasets


def msd(c: Ctx, cases: int = 4, change: Callable[[Path, int], None] | None = None, shape=SHAPE) -> Path:
    """A tiny MSD dataset in ``d/data``; ``change(root, index)`` may spoil case ``index`` after writing."""
    root = c.d / "data"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(cases):
        name = f"case_{i:03d}.nii.gz"
        nifti(root / "imagesTr" / name, image(shape, seed=i))
        nifti(root / "labelsTr" / name, label_map(shape))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        if change is not None:
            change(root, i)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "tiny",
                "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "outer", "2": "inner"},
                "numTraining": cases,
                "training": training,
                "test": [],
            }
        )
    )
    return root


def train_config(root: Path, **sections) -> dict:
    values = {
        "data": tiny_data(root, cache="memory"),
        "network": {"options": {"features": [4, 8]}},
        "sampling": {"patch_size": [16, 16, 16], "batch_size": 1},
        "augmentation": NO_AUGMENTATION,
        "loss": {"deep_supervision": False},
        "training": {"epochs": 1, "iterations_per_epoch": 1, "device": "cpu"},
        "inference": {"sw_batch_size": 2},
    }
    for section, options in sections.items():
        values[section] = {**values.get(section, {}), **options}
    return values


def dataset_and_config(change=None, config_change: Callable[[dict], dict] | None = None, **msd_options):
    def build(c: Ctx) -> None:
        root = msd(c, change=change, **msd_options)
        values = train_config(root)
        if config_change is not None:
            values = config_change(values)
        (c.d / "cfg.yaml").write_text(yaml.safe_dump(values))

    return build


def spoil_label(index: int, arr_fn: Callable[[], np.ndarray], affine=None):
    def change(root: Path, i: int) -> None:
        if i == index:
            nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", arr_fn(), affine)

    return change


def spoil_image(index: int, arr_fn: Callable[[], np.ndarray] | None):
    """Replace the image of case ``index`` by ``arr_fn()``, or cut its file in half (None)."""

    def change(root: Path, i: int) -> None:
        path = root / "imagesTr" / f"case_{i:03d}.nii.gz"
        if i == index and arr_fn is None:
            path.write_bytes(path.read_bytes()[:200])
        elif i == index:
            nifti(path, arr_fn())

    return change


def all_labels_empty(root: Path, i: int) -> None:
    nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", np.zeros(SHAPE, np.uint8))


def edit_dataset_json(edit: Callable[[dict], None]) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        root = msd(c)
        meta = json.loads((root / "dataset.json").read_text())
        edit(meta)
        (root / "dataset.json").write_text(json.dumps(meta))

    return build


def write_config(values: dict | str) -> Callable[[Ctx], None]:
    def build(c: Ctx) -> None:
        root = msd(c, cases=2)
        text = values if isinstance(values, str) else yaml.safe_dump(values)
        (c.d / "cfg.yaml").write_text(text.replace("ROOT", str(root)))

    return build


# ----------------------------------------------------------------------------- the rows


OTHER_COMMANDS: list = [
    # --- evaluate
    (
        "evaluate: grids of different shapes",
        eval_pair(label_map(), label_map((20, 18, 11))),
        EVALUATE,
        Fails("are on different grids"),
    ),
    (
        "evaluate: same shape, different affines",
        eval_pair(label_map(), label_map(), np.eye(4), OBLIQUE),
        EVALUATE,
        Fails("affines differ by up to"),
    ),
    (
        "evaluate: both label maps empty",
        eval_pair(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)),
        [*EVALUATE, "--labels", "1"],
        Works(stdout="1.0000 ± 0.0000"),
    ),
    (
        "evaluate: empty prediction, labelled reference",
        eval_pair(np.zeros(SHAPE, np.uint8), label_map()),
        EVALUATE,
        Works(stdout="0.0000 ± 0.0000"),
    ),
    (
        "evaluate: probabilities given as labels",
        eval_pair(np.full(SHAPE, 0.3, np.float32), label_map()),
        EVALUATE,
        Fails("is not a label map: it holds non-integer values"),
    ),
    (
        "evaluate: NaN in the reference",
        eval_pair(label_map(), np.where(label_map() > 0, np.nan, 0).astype(np.float32)),
        EVALUATE,
        Fails("NaN or infinite"),
    ),
    (
        "evaluate: 4D prediction",
        eval_pair(np.stack([label_map()] * 2, -1), label_map()),
        EVALUATE,
        Fails("has channels"),
    ),
    (
        "evaluate: existing report without --overwrite",
        both(eval_pair(label_map(), label_map()), raw_bytes("report.csv", b"old")),
        [*EVALUATE, "-o", "{d}/report.csv"],
        Fails("exists; pass --overwrite"),
    ),
    (
        "evaluate: folders of non-image files",
        both(
            lambda c: (c.d / "p").mkdir(),
            lambda c: (c.d / "r").mkdir(),
            raw_bytes("p/a.txt", b"x"),
            raw_bytes("r/a.txt", b"x"),
        ),
        ["evaluate", "{d}/p", "{d}/r", "--quiet"],
        Fails("no case to evaluate"),
    ),
    (
        "evaluate: --labels a,b",
        eval_pair(label_map(), label_map()),
        [*EVALUATE, "--labels", "a,b"],
        Fails("--labels 'a,b' is not valid"),
    ),
    # --- plan
    ("plan: empty folder", lambda c: (c.d / "data").mkdir(), PLAN, Fails("cannot tell the layout")),
    (
        "plan: folder of non-image files",
        both(lambda c: (c.d / "data").mkdir(), raw_bytes("data/readme.txt", b"x")),
        PLAN,
        Fails("cannot tell the layout"),
    ),
    (
        "plan: dataset.json entry pointing nowhere",
        edit_dataset_json(
            lambda m: m["training"].append({"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"})
        ),
        PLAN,
        Fails("image ./imagesTr/gone.nii.gz listed in dataset.json does not exist"),
    ),
    (
        "plan: duplicate case ids in dataset.json",
        edit_dataset_json(lambda m: m["training"].append(m["training"][0])),
        PLAN,
        Fails("case_000: case id found 2 times"),
    ),
    (
        "plan: dataset.json not JSON",
        both(lambda c: msd(c), raw_bytes("data/dataset.json", b"{not json")),
        PLAN,
        Fails("cannot read dataset file"),
    ),
    (
        "plan: existing output without --overwrite",
        both(lambda c: msd(c), raw_bytes("plan.yaml", b"x: 1")),
        PLAN,
        Fails("plan.yaml exists; pass --overwrite"),
    ),
    (
        "plan: a truncated image in the dataset",
        dataset_and_config(change=spoil_image(1, None)),
        PLAN,
        Fails("case_001.nii.gz"),
    ),
    # --- train
    (
        "train: config with an unknown key",
        write_config({"data": {"root": "ROOT"}, "trainig": {"epochs": 1}}),
        TRAIN,
        Fails("unknown config key 'trainig' (did you mean 'training'?)"),
    ),
    (
        "train: config value of the wrong type",
        write_config({"data": {"root": "ROOT"}, "training": {"epochs": "ten"}}),
        TRAIN,
        Fails("training.epochs='ten' is not valid; expected an integer"),
    ),
    ("train: config that is not YAML", write_config("data: [root: {\n"), TRAIN, Fails("not valid YAML")),
    ("train: config that is a list", write_config("- 1\n- 2\n"), TRAIN, Fails("the config must be a mapping")),
    ("train: missing config file", lambda c: None, TRAIN, Fails("no such config file")),
    (
        "train: data.root does not exist",
        write_config({"data": {"root": "ROOT/nowhere", "labels": {0: "background", 1: "a"}}}),
        TRAIN,
        Fails("does not exist"),
    ),
    (
        "train: image and label grids disagree (shape)",
        dataset_and_config(change=spoil_label(1, lambda: label_map((20, 18, 10)))),
        TRAIN,
        Fails("have different shapes: (20, 18, 12) vs (20, 18, 10)"),
    ),
    (
        "train: image and label grids disagree (affine)",
        dataset_and_config(change=spoil_label(1, label_map, OBLIQUE)),
        TRAIN,
        Fails("have different affines"),
    ),
    (
        "train: label values the config does not know",
        dataset_and_config(change=spoil_label(0, lambda: label_map(values=(1, 7)))),
        TRAIN,
        Fails("label values 7 are not in data.labels (allowed: 0, 1, 2)"),
    ),
    (
        "train: NaN voxels in an image",
        dataset_and_config(change=spoil_image(0, lambda: np.full(SHAPE, np.nan, np.float32))),
        TRAIN,
        Fails("NaN or infinite"),
    ),
    (
        "train: empty label map in one case",
        dataset_and_config(change=spoil_label(0, lambda: np.zeros(SHAPE, np.uint8))),
        TRAIN,
        Works(output="run/last.pt"),
    ),
    ("train: every label map empty", dataset_and_config(change=all_labels_empty), TRAIN, Works(output="run/last.pt")),
    ("train: volumes smaller than the patch", dataset_and_config(shape=(9, 8, 6)), TRAIN, Works(output="run/last.pt")),
    (
        "train: no foreground label",
        write_config({"data": {"root": "ROOT"}}),
        TRAIN,
        Fails("data.labels={0: 'background'} has no foreground label"),
    ),
    (
        "train: --resume of a folder that is no run",
        lambda c: (c.d / "run").mkdir(),
        ["train", "--resume", "{d}/run", "--quiet"],
        Fails("is not a volseg run folder"),
    ),
    (
        "train: --set without =",
        dataset_and_config(),
        [*TRAIN, "--set", "training.epochs"],
        Fails("--set 'training.epochs' is not valid"),
    ),
]
