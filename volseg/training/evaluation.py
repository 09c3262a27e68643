"""Evaluate training runs on the cases they held out, as nnU-Net reports them.

``volseg evaluate-run RUN_DIR`` predicts every held-out case of the run's fold ("val" in
splits.json) file to file, with the run's inference settings and mirroring on unless told
otherwise, and scores the label files against the references with :mod:`volseg.metrics`, per
label (softmax models) or per region (region models such as BraTS). The held-out cases never
chose anything during training: validation used the cases carved from the training cases.

RUN_DIR is one fold's run folder, or a folder of ``fold_<k>`` run folders (cross-validation):
then each fold predicts its own held-out cases and one table covers all of them.

Written to the output folder (default ``RUN_DIR/evaluation``):

* ``predictions/<case>.nii.gz``: the label maps on each input's grid (kept, so a cut-off
  evaluation resumes where it stopped);
* ``cases.csv``: one row per case and structure, then the summary rows;
* ``summary.json``: the settings, and per structure and metric the mean, standard deviation,
  median and a 95 % confidence interval of the mean (Student's t over the cases).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volseg.checkpoint import checkpoint_config, checkpoint_label_space, load_checkpoint, model_from_checkpoint
from volseg.config import Config, load_config
from volseg.data.datasets import find_cases
from volseg.data.splits import load_folds, split_for_fold
from volseg.errors import ConfigError, InputFileError, OutputExistsError
from volseg.io.atomic import file_sha256, write_text
from volseg.metrics import CaseResult, evaluate_files, summarise, write_report_csv

logger = logging.getLogger(__name__)

SETTINGS_FILE, SUMMARY_FILE, CASES_FILE = "settings.json", "summary.json", "cases.csv"


@dataclass
class RunEvaluation:
    """What :func:`evaluate_run` found: one row per held-out case, and their summary."""

    output_dir: Path
    rows: list[CaseResult]
    summary: dict[str, Any]


def fold_runs(run_dir: str | Path) -> list[Path]:
    """The run folders under ``run_dir``: itself if it is one, else its ``fold_<k>`` folders."""
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        return [run_dir]
    folds = sorted(
        (p for p in run_dir.glob("fold_*") if (p / "config.yaml").is_file()), key=lambda p: (len(p.name), p.name)
    )
    if not folds:
        raise InputFileError(f"{run_dir} is not a volseg run folder (no config.yaml) and holds no fold_<k> run folders")
    return folds


def held_out_ids(run_dir: Path, config: Config) -> list[str]:
    """The held-out case ids of the run in ``run_dir`` (its fold's "val" list)."""
    if config.data.fold == -1:
        raise ConfigError(f"{run_dir} trained on every case (data.fold=-1): it held no case out to evaluate on")
    splits = run_dir / "splits.json"
    if not splits.is_file():
        raise InputFileError(f"{run_dir} has no splits.json; cannot tell which cases it held out")
    return split_for_fold(load_folds(splits), config.data.fold)[1]


def _settings(runs: list[Path], checkpoint: str, mirroring: bool) -> dict[str, Any]:
    digests = {str(run): file_sha256(run / checkpoint)[:16] for run in runs}
    return {"checkpoint": checkpoint, "mirroring": mirroring, "checkpoint_sha256": digests}


def _check_output(output_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix predictions of other settings into ``output_dir`` unless ``overwrite``."""
    previous = output_dir / SETTINGS_FILE
    if previous.is_file() and not overwrite and json.loads(previous.read_text()) != settings:
        raise OutputExistsError(
            f"{output_dir} holds an evaluation with other settings (checkpoint or mirroring); "
            "use --overwrite to replace it or -o for another folder"
        )
    if overwrite:
        for stale in (output_dir / "predictions").glob("*"):
            stale.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(previous, json.dumps(settings, indent=1) + "\n")


def evaluate_run(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    checkpoint: str = "best.pt",
    mirroring: bool = True,
    device: str = "auto",
    overwrite: bool = False,
    on_case: Callable[[str, int, int], None] | None = None,
) -> RunEvaluation:
    """Predict and score the held-out cases of the run(s) in ``run_dir`` (see the module docs).

    ``checkpoint`` is ``best.pt`` (chosen on the validation cases) or ``last.pt``;
    ``mirroring`` averages the 2^D mirrored predictions (nnU-Net's default); ``on_case`` is
    called with (case id, index, total) after each case.
    """
    from volseg.inference.inputs import PredictionInput
    from volseg.inference.predictor import Predictor
    from volseg.inference.segment import OutputOptions, segment_case

    runs = fold_runs(run_dir)
    output_dir = Path(output_dir) if output_dir else Path(run_dir) / "evaluation"
    for run in runs:
        if not (run / checkpoint).is_file():
            raise InputFileError(f"{run} has no {checkpoint}; has it trained yet? (choose another with --checkpoint)")
    settings = _settings(runs, checkpoint, mirroring)
    _check_output(output_dir, settings, overwrite)
    predictions = output_dir / "predictions"
    total = sum(len(held_out_ids(run, load_config(run / "config.yaml"))) for run in runs)
    rows, trained, started = [], {}, time.perf_counter()
    for run in runs:  # one fold at a time: one checkpoint in memory
        stored = load_checkpoint(run / checkpoint)
        config, space = checkpoint_config(stored), checkpoint_label_space(stored)
        trained[str(run)] = training_time(run, checkpoint_epoch(stored))
        dataset = find_cases(config.data.root, layout=config.data.layout)
        cases = [dataset.case(case_id) for case_id in held_out_ids(run, config)]
        predictor = None  # built when a case needs predicting (a resumed evaluation may need none)
        for case in cases:
            if case.label is None:
                raise InputFileError(f"held-out case {case.case_id} of {config.data.root} has no label file")
            labels_path = predictions / f"{case.case_id}.nii.gz"
            if not labels_path.exists():
                if predictor is None:
                    predictor = Predictor(
                        model_from_checkpoint(stored), config, device=device, tta=mirroring, label_space=space
                    )
                segment_case(
                    predictor, PredictionInput(case.case_id, case.images), labels_path, OutputOptions(overwrite=True)
                )
            # scored as trained: the regions, or one structure per foreground label under its name
            metrics = evaluate_files(labels_path, case.label, regions=space.structures())
            rows.append(CaseResult(case.case_id, metrics, labels_path, case.label))
            if on_case is not None:
                on_case(case.case_id, len(rows), total)
    summary = summarise(rows)
    write_report_csv(rows, summary, output_dir / CASES_FILE, overwrite=True)
    result = {
        **settings,
        "runs": [str(run) for run in runs],
        "trained": trained,
        "cases": len(rows),
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
    }
    write_text(output_dir / SUMMARY_FILE, json.dumps(result, indent=1) + "\n")
    return RunEvaluation(output_dir, rows, result)


def checkpoint_epoch(checkpoint: dict[str, Any]) -> int | None:
    """The epoch (1-based) a checkpoint was saved after, where it says."""
    if "epoch" in checkpoint:
        return int(checkpoint["epoch"])
    training = checkpoint.get("training")
    return int(training["epoch"]) + 1 if training else None


def training_time(run_dir: Path, epoch: int | None) -> dict[str, Any]:
    """``{"epoch", "seconds"}``: the training time up to ``epoch`` from the run's metrics.csv
    (the sum of ``epoch_seconds``; validation not counted); seconds None where unknown."""
    metrics = run_dir / "metrics.csv"
    if epoch is None or not metrics.is_file():
        return {"epoch": epoch, "seconds": None}
    with open(metrics, newline="") as stream:
        seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(stream) if int(row["epoch"]) <= epoch]
    return {"epoch": epoch, "seconds": round(sum(seconds), 1)}


def format_summary(summary: dict[str, Any]) -> str:
    """One line per structure: Dice mean, its 95 % interval, std, and HD95 (mm)."""
    lines = []
    for name, per_metric in summary["summary"].items():
        dice, hd95 = per_metric["dice"], per_metric["hd95"]
        lines.append(
            f"{name:>12}: Dice {dice['mean']:.4f} (95% CI {dice['ci95_low']:.4f}-{dice['ci95_high']:.4f}, "
            f"std {dice['std']:.4f}), HD95 {hd95['mean']:.2f} mm"
        )
    mirrored = "with" if summary["mirroring"] else "without"
    lines.append(f"{summary['cases']} held-out case(s), {summary['checkpoint']}, {mirrored} mirroring")
    return "\n".join(lines)
