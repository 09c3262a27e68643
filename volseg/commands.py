"""The handlers behind each ``volseg`` subcommand: arguments in, API calls, text out.

Only this module and :mod:`volseg.cli` print. Every handler returns the exit code.
"""

from __future__ import annotations

import argparse
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
    from volseg.atomic import write_text
    from volseg.config import dump_config
    from volseg.data.planner import plan_dataset, plan_summary

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
    from volseg.config import load_config
    from volseg.training import CONFIG_FILE, train

    overrides = list(args.set or [])
    if args.fold is not None:
        overrides.append(f"data.fold={args.fold}")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise InputFileError(f"{run_dir} is not a volseg run folder (no {CONFIG_FILE}); nothing to resume")
        config = load_config(run_dir / CONFIG_FILE, overrides)
    elif args.config:
        config = load_config(args.config, overrides)
        fold = "all" if config.data.fold == -1 else str(config.data.fold)
        run_dir = Path(args.output) if args.output else Path("runs") / Path(args.config).stem / f"fold_{fold}"
    else:
        raise ConfigError("give a CONFIG file to start a run, or --resume RUN_DIR to continue one")
    with logging_redirect_tqdm():  # per-epoch log lines print above the progress bar, not through it
        result = train(config, run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                       until_epoch=args.until_epoch,
                       progress_bar=None if args.quiet else functools.partial(tqdm, disable=_bars_off(args)))
    best = "no validation" if result.best_metric is None else f"best mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}"
    logger.info("finished %d epochs in %s: %s", result.epochs_run, result.run_dir, best)
    return 0


def _bars_off(args: argparse.Namespace) -> bool | None:
    """Progress bars: never with --quiet, else only on a terminal (tqdm's ``None``): logs stay readable."""
    return True if args.quiet else None


def check_outputs_free(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before any work, to replace existing outputs unless ``--overwrite``."""
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def predict_command(args: argparse.Namespace) -> int:
    from volseg.postprocess import format_statistics
    from volseg.predictor import Predictor
    from volseg.segment import OutputOptions, segment

    _check_predict_options(args)
    options = OutputOptions(
        overwrite=args.overwrite,
        probabilities=args.save_probabilities,
        uncertainty=args.uncertainty,
        largest_component=args.largest_component,
        min_size_ml=args.min_size,
        stats=args.stats,
        preview=args.preview,
    )
    windows = tqdm(desc="windows", unit="window", leave=False, disable=_bars_off(args), file=sys.stderr, delay=1.0)

    def window_progress(done: int, total: int) -> None:
        if done <= windows.n:
            windows.reset(total=total)
        windows.total = total
        windows.update(done - windows.n)

    predictor = Predictor.from_checkpoint(
        args.model, device=args.device, overlap=args.overlap, sw_batch_size=args.batch, tta=args.tta,
        progress=window_progress,
    )
    cases = tqdm(desc="cases", unit="case", disable=_bars_off(args), file=sys.stderr, delay=1.0)

    def report(outcome, done: int, total: int) -> None:
        cases.total = total
        cases.update(1)
        if outcome.skipped:
            tqdm.write(f"{outcome.case_id}: {outcome.labels_path} exists, skipped", file=sys.stdout)
            return
        tqdm.write(f"{outcome.case_id}: {outcome.labels_path} ({outcome.seconds:.1f} s)", file=sys.stdout)
        if outcome.statistics is not None:
            tqdm.write(format_statistics(outcome.statistics), file=sys.stdout)

    try:
        outcomes = segment(predictor, args.input, args.output, options, on_case=report)
    finally:
        windows.close()
        cases.close()
    done = [o for o in outcomes if not o.skipped]
    logger.info("segmented %d case(s), skipped %d finished; outputs in %s", len(done), len(outcomes) - len(done), args.output)
    return 0


def _check_predict_options(args: argparse.Namespace) -> None:
    """Refuse bad option values before the model is loaded and any case is read."""
    import math

    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise ConfigError(f"--overlap {args.overlap} is not valid; allowed: 0 <= overlap < 1")
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch {args.batch} is not valid; allowed: 1 or more windows per network call")
    if args.min_size is not None and not (math.isfinite(args.min_size) and args.min_size >= 0):
        raise ConfigError(f"--min-size {args.min_size} is not valid; allowed: a volume in mL, 0 or more")


def evaluate_command(args: argparse.Namespace) -> int:
    from volseg.metrics import (
        BRATS_REGIONS_2021,
        BRATS_REGIONS_2023,
        evaluate_files,
        evaluate_folders,
        summarise,
        write_report_csv,
    )

    regions = {"brats": None, "brats2021": BRATS_REGIONS_2021, "brats2023": BRATS_REGIONS_2023}
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
    lines = [f"{cases} case(s); mean ± std over cases (HD95 in mm; NaN cases left out)",
             f"{'structure':<12} {'Dice':>15} {'IoU':>15} {'HD95':>17} {'surface Dice':>15}"]
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


def export_command(args: argparse.Namespace) -> int:
    from volseg.bundled import resolve_model
    from volseg.checkpoint import load_checkpoint
    from volseg.export import export_model

    written = export_model(load_checkpoint(resolve_model(args.model)), args.output, fmt=args.format,
                           overwrite=args.overwrite)
    for path in written:
        print(path)
    return 0
