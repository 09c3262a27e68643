"""The ``volseg`` subcommands: each turns parsed arguments into API calls and results into text.

Heavy modules (torch, MONAI) are imported inside the handlers, so argument errors stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from volseg.errors import ConfigError, InputFileError, OutputExistsError

logger = logging.getLogger("volseg")


def models_command(args: argparse.Namespace) -> int:
    from volseg.nn.registry import describe_model, list_models, model_entry

    if args.name is None:
        width = max(len(name) for name in list_models())
        for name in list_models():
            print(f"{name:<{width}}  {model_entry(name).summary}")
        return 0
    description = describe_model(args.name, args.dims, args.in_channels, args.classes)
    print(json.dumps(description, indent=2))
    return 0


def plan_command(args: argparse.Namespace) -> int:
    from volseg.config import dump_config
    from volseg.data.planner import plan_dataset, plan_summary
    from volseg.io.atomic import write_text

    outputs = [Path(p) for p in (args.output, args.fingerprint) if p is not None]
    check_outputs_free(outputs, args.overwrite)
    with tqdm(desc="fingerprint", unit="case", disable=_bars_off(args), file=sys.stderr, delay=0.5) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        config, fingerprint = plan_dataset(
            args.data,
            layout=args.layout,
            spatial_dims=args.dims,
            device=args.device,
            memory_gb=args.memory_gb,
            num_workers=args.workers,
            progress=progress,
        )
    text = dump_config(config, args.output, header=plan_summary(fingerprint, config, args.device))
    if args.fingerprint:
        write_text(args.fingerprint, json.dumps(fingerprint.to_dict(), indent=1) + "\n")
    if args.output is None:
        print(text, end="")
    else:
        logger.info("wrote %s", args.output)
    return 0


def train_command(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    all_folds = args.fold == "all"
    if args.fold is not None and not all_folds:  # argument errors before torch and MONAI are imported
        overrides.append(f"data.fold={_fold_number(args.fold)}")
    from volseg.config import load_config
    from volseg.training import CONFIG_FILE, train

    if args.resume:
        run_dir = Path(args.resume)
        if (run_dir / CONFIG_FILE).is_file():
            config = load_config(run_dir / CONFIG_FILE, overrides)
        elif any(run_dir.glob(f"fold_*/{CONFIG_FILE}")):  # a cross-validation folder
            from volseg.training.crossval import resume_config

            config = resume_config(run_dir, overrides)
            all_folds = True
        else:
            raise InputFileError(f"{run_dir} is not a volseg run folder (no {CONFIG_FILE}); nothing to resume")
    elif args.config:
        config = load_config(args.config, overrides)
        fold = "all" if config.data.fold == -1 else str(config.data.fold)
        default = Path("runs") / Path(args.config).stem
        run_dir = Path(args.output) if args.output else default if all_folds else default / f"fold_{fold}"
    else:
        raise ConfigError("give a CONFIG file to start a run, or --resume RUN_DIR to continue one")
    options = {
        "resume": bool(args.resume),
        "overwrite": args.overwrite,
        "until_epoch": args.until_epoch,
        "progress_bar": None if args.quiet else functools.partial(tqdm, disable=_bars_off(args)),
    }
    with logging_redirect_tqdm():  # per-epoch log lines print above the progress bar, not through it
        if all_folds:
            from volseg.training.crossval import train_all_folds

            results = [r for r in train_all_folds(config, run_dir, **options) if r is not None]
        else:
            results = [train(config, run_dir, **options)]
    for result in results:
        best = (
            "no validation"
            if result.best_metric is None
            else f"best mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}"
        )
        logger.info("finished %d epochs in %s: %s", result.epochs_run, result.run_dir, best)
    return 0


def _fold_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"--fold {text!r} is not valid; allowed: a fold number, -1 (train on every case) or all"
        ) from None


def evaluate_run_command(args: argparse.Namespace) -> int:
    from volseg.training.evaluation import evaluate_run, format_summary

    def on_case(case_id: str, index: int, total: int) -> None:
        logger.info("case %d/%d: %s", index, total, case_id)

    result = evaluate_run(
        args.run_dir,
        args.output,
        checkpoint=args.checkpoint,
        mirroring=not args.no_mirroring,
        device=args.device,
        overwrite=args.overwrite,
        on_case=on_case,
    )
    print(format_summary(result.summary))
    logger.info("wrote %s", result.output_dir)
    return 0


def _bars_off(args: argparse.Namespace) -> bool | None:
    """Progress bars: never with --quiet, else only on a terminal (tqdm's ``None``): logs stay readable."""
    return True if args.quiet else None


def check_outputs_free(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before any work, to replace existing outputs unless ``--overwrite``."""
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def evaluate_command(args: argparse.Namespace) -> int:
    from volseg.data.label_space import BRATS_REGIONS
    from volseg.metrics import evaluate_files, evaluate_folders, summarise, write_report_csv

    regions = {"brats": None, **BRATS_REGIONS}
    labels = _parse_labels(args.labels) if args.labels else None
    region_map = None
    if args.regions:
        if args.regions not in regions:
            raise ConfigError(f"--regions {args.regions!r} is not valid; allowed: {', '.join(regions)}")
        region_map = regions[args.regions]
        if region_map is None:  # pick the convention from the reference's label values
            from volseg.metrics import brats_regions

            region_map = brats_regions(_label_values(Path(args.reference)))
    prediction, reference = Path(args.prediction), Path(args.reference)
    if prediction.is_dir() != reference.is_dir():
        raise ConfigError("PRED and REF must both be files or both be folders")
    if args.output:
        check_outputs_free([Path(args.output)], args.overwrite)
    if prediction.is_dir():
        rows = evaluate_folders(prediction, reference, labels=labels, regions=region_map, tolerance_mm=args.tolerance)
    else:
        from volseg.metrics import CaseResult

        metrics = evaluate_files(prediction, reference, labels=labels, regions=region_map, tolerance_mm=args.tolerance)
        rows = [CaseResult(prediction.name, metrics, prediction, reference)]
    summary = summarise(rows)
    print(_format_summary(summary, len(rows)))
    if args.output:
        write_report_csv(rows, summary, args.output, overwrite=args.overwrite)
        logger.info("wrote %s", args.output)
    return 0


def _parse_labels(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--labels {text!r} is not valid; give label values separated by commas, e.g. 1,2") from None


def _label_values(reference: Path) -> list[int]:
    import numpy as np

    from volseg.io import read_volume

    files = sorted(p for p in reference.iterdir() if p.is_file()) if reference.is_dir() else [reference]
    return [int(v) for v in np.unique(read_volume(files[0]).array)] if files else []


def _format_summary(summary: dict, cases: int) -> str:
    lines = [
        f"{cases} case(s); mean ± std over cases (HD95 in mm; NaN cases left out)",
        f"{'structure':<12} {'Dice':>15} {'IoU':>15} {'HD95':>17} {'surface Dice':>15}",
    ]
    for structure, metrics in summary.items():
        cells = []
        for metric in ("dice", "iou", "hd95", "surface_dice"):
            values = metrics.get(metric, {})
            cells.append(f"{values.get('mean', float('nan')):.4f} ± {values.get('std', float('nan')):.4f}")
        lines.append(f"{structure:<12} {cells[0]:>15} {cells[1]:>15} {cells[2]:>17} {cells[3]:>15}")
    return "\n".join(lines)


def info_command(args: argparse.Namespace) -> int:
    from volseg.bundled import resolve_model
    from volseg.checkpoint import load_checkpoint
    from volseg.export import describe_checkpoint, format_description

    description = describe_checkpoint(load_checkpoint(resolve_model(args.model)))
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0


def quantize_command(args: argparse.Namespace) -> int:
    if args.output and Path(args.output).suffix != ".pt":
        raise ConfigError(f"-o {args.output} is not valid; allowed: a checkpoint file ending in .pt")
    check_outputs_free([Path(args.output)], args.overwrite)
    if args.calibration_cases is not None and args.calibration_cases < 1:
        raise ConfigError(f"--calibration-cases {args.calibration_cases} is not valid; allowed: 1 or more")
    from volseg.bundled import resolve_model
    from volseg.checkpoint import load_checkpoint, save_checkpoint
    from volseg.export.quantize import format_report, quantize_checkpoint

    def on_case(stage: str, case_id: str, index: int, total: int) -> None:
        logger.info("%s %d/%d: %s", stage, index, total, case_id)

    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout holds only the report
        result = quantize_checkpoint(
            load_checkpoint(resolve_model(args.model)),
            args.calibration,
            validation=args.validation,
            max_drop=args.max_drop,
            calibration_cases=args.calibration_cases,
            on_case=on_case,
        )
    print(format_report(result.report))
    save_checkpoint(result.checkpoint, args.output)
    logger.info("wrote %s", args.output)
    return 0


def export_command(args: argparse.Namespace) -> int:
    from volseg.bundled import resolve_model
    from volseg.checkpoint import load_checkpoint
    from volseg.export import export_model

    options = {"name": Path(args.model).name.removesuffix(".pt")} if args.format == "monai-bundle" else {}
    written = export_model(
        load_checkpoint(resolve_model(args.model)), args.output, fmt=args.format, overwrite=args.overwrite, **options
    )
    for path in written:
        print(path)
    return 0
