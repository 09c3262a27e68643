"""The ``volseg`` command line: parse arguments, call the API, report errors.

This module only turns arguments into API calls and results into text (one handler per
subcommand, then the parser); it and ``__main__`` are the only modules that print. Every
failure a user can cause is a :class:`volseg.errors.VolsegError`; the CLI prints
its message as one line and exits with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from volseg._version import __version__
from volseg.errors import ConfigError, InputFileError, OutputExistsError, VolsegError

logger = logging.getLogger("volseg")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


def _common_options(for_subcommand: bool) -> argparse.ArgumentParser:
    """--debug and --quiet, accepted both before and after the subcommand."""
    parser = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if for_subcommand else False
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", default=default, help="only print warnings and errors")
    return parser


# ----------------------------------------------------------------------------- handlers


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
    options = {"resume": bool(args.resume), "overwrite": args.overwrite, "until_epoch": args.until_epoch,
               "progress_bar": None if args.quiet else functools.partial(tqdm, disable=_bars_off(args))}
    with logging_redirect_tqdm():  # per-epoch log lines print above the progress bar, not through it
        if all_folds:
            from volseg.training.crossval import train_all_folds

            results = [r for r in train_all_folds(config, run_dir, **options) if r is not None]
        else:
            results = [train(config, run_dir, **options)]
    for result in results:
        best = ("no validation" if result.best_metric is None
                else f"best mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}")
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

    result = evaluate_run(args.run_dir, args.output, checkpoint=args.checkpoint, mirroring=not args.no_mirroring,
                          device=args.device, overwrite=args.overwrite, on_case=on_case)
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


def predict_command(args: argparse.Namespace) -> int:
    _check_predict_options(args)  # argument errors before torch and MONAI are imported
    from volseg.inference.sharding import parse_shard

    shard = parse_shard(args.shard) if args.shard else None
    if not Path(args.input).exists():
        raise InputFileError(f"{args.input}: no such file or folder")
    from volseg.inference.postprocess import format_statistics
    from volseg.inference.predictor import Predictor
    from volseg.inference.segment import OutputOptions, segment

    options = OutputOptions(
        overwrite=args.overwrite,
        probabilities=args.save_probabilities,
        uncertainty=args.uncertainty,
        largest_component=args.largest_component,
        min_size_ml=args.min_size,
        stats=args.stats,
        preview=args.preview,
        extension=".nii.gz" if args.format == "nifti" else "same",
        strict=args.strict,
    )
    windows = tqdm(desc="windows", unit="window", leave=False, disable=_bars_off(args), file=sys.stderr, delay=1.0)

    def window_progress(done: int, total: int) -> None:
        if done <= windows.n:
            windows.reset(total=total)
        windows.total = total
        windows.update(done - windows.n)

    predictor = Predictor.from_checkpoint(
        args.model, device=args.device, overlap=args.overlap, sw_batch_size=args.batch, tta=args.tta,
        mask_nonzero=args.mask_nonzero, progress=window_progress,
        cudnn_benchmark=True,  # a command's own process: cuDNN may time its algorithms for the window shape
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
        outcomes = segment(predictor, args.input, args.output, options, on_case=report, shard=shard)
    finally:
        windows.close()
        cases.close()
    done = [o for o in outcomes if not o.skipped]
    logger.info("segmented %d case(s), skipped %d finished; outputs in %s",
                len(done), len(outcomes) - len(done), args.output)
    return 0


def _check_predict_options(args: argparse.Namespace) -> None:
    """Refuse bad option values before the model is loaded and any case is read."""
    import math

    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise ConfigError(f"--overlap {args.overlap} is not valid; allowed: 0 <= overlap < 1")
    if args.batch not in (None, "auto"):
        if not args.batch.lstrip("-").isdigit() or int(args.batch) < 1:
            raise ConfigError(
                f"--batch {args.batch} is not valid; allowed: auto, or 1 or more windows per network call"
            )
        args.batch = int(args.batch)
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


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand stores its handler in ``handler``."""
    parser = argparse.ArgumentParser(
        prog="volseg",
        description="Segment 3D and 2D medical images with U-Net-family networks.",
        parents=[_common_options(for_subcommand=False)],
    )
    parser.add_argument("--version", action="version", version=f"volseg {__version__}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND")
    common = _common_options(for_subcommand=True)

    models = subcommands.add_parser("models", parents=[common], help="list the network architectures volseg can build")
    models.add_argument("name", nargs="?", help="describe this network: its arguments and parameter count")
    models.add_argument("--dims", type=int, default=3, help="spatial dimensions, 2 or 3 (default 3)")
    models.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    models.add_argument("--classes", type=int, default=2, help="output classes (default 2)")
    models.set_defaults(handler=models_command)

    plan = subcommands.add_parser(
        "plan", parents=[common], help="propose a training config from a dataset's fingerprint"
    )
    plan.add_argument("data", help="dataset folder: MSD, nnU-Net raw, BraTS or images/ + labels/")
    plan.add_argument("-o", "--output", help="write the config YAML here (default: print it)")
    plan.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3D (default) or 2D slice network")
    plan.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                      help="what training will run on (default cuda)")
    plan.add_argument("--memory-gb", type=float, help="memory budget for training (default 8 on cuda, 4 on cpu)")
    plan.add_argument("--layout", default="auto", help="force the dataset layout (default: detect it)")
    plan.add_argument("--workers", type=int, default=2, help="processes reading cases (default 2)")
    plan.add_argument("--fingerprint", help="also write the dataset fingerprint as JSON here")
    plan.add_argument("--overwrite", action="store_true", help="replace existing output files")
    plan.set_defaults(handler=plan_command)

    train = subcommands.add_parser("train", parents=[common], help="train a network from a YAML config")
    train.add_argument("config", nargs="?", help="the run's YAML config (volseg plan writes one)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. training.epochs=50")
    train.add_argument("-o", "--output", help="run folder (default runs/<config name>/fold_<k>)")
    train.add_argument("--fold", help="cross-validation fold to train; all: every fold, one after another, "
                       "into RUN_DIR/fold_<k>; -1: one model on every case")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--until-epoch", type=int, metavar="N", help="stop after epoch N (continue later with --resume)")
    train.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds a run")
    train.set_defaults(handler=train_command, runtime=True)

    predict = subcommands.add_parser("predict", parents=[common],
                                     help="segment volumes with a trained or bundled model")
    predict.add_argument("-m", "--model", required=True,
                         help="checkpoint file or bundled model name (e.g. hippocampus)")
    predict.add_argument("-i", "--input", required=True,
                         help="volume file, folder of cases, BraTS case folder or DICOM series")
    predict.add_argument("-o", "--output", required=True, help="output file (one case) or folder")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="auto picks CUDA when present")
    predict.add_argument("--overlap", type=float, help="sliding-window overlap (default: the model's, usually 0.5)")
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                         help="mirror test-time augmentation (default: on with CUDA, off on CPU)")
    predict.add_argument("--batch", metavar="N|auto",
                         help="windows per network call; auto: as many as fit in memory (default: the model's)")
    predict.add_argument("--save-probabilities", action="store_true", help="also write class probabilities (4D)")
    predict.add_argument("--uncertainty", nargs="?", const="entropy", choices=("entropy", "tta-variance"),
                         help="also write a voxel-wise uncertainty map (default entropy)")
    predict.add_argument("--largest-component", action="store_true",
                         help="keep each label's (region models: each region's) largest connected component")
    predict.add_argument("--min-size", type=float, metavar="ML",
                         help="remove connected components smaller than ML millilitres, per label or region")
    predict.add_argument("--mask-nonzero", action=argparse.BooleanOptionalAction, default=None,
                         help="background wherever every input channel is 0 (default: the model's setting)")
    predict.add_argument("--stats", action="store_true", help="print and write per-label volumes and component counts")
    predict.add_argument("--preview", action="store_true",
                         help="write a PNG of three orthogonal slices with the labels")
    predict.add_argument("--format", choices=("nifti", "same"), default="nifti",
                         help="label file format: nifti (.nii.gz, default) or same: the input's own where volseg "
                         "writes it (NIfTI, NIfTI pairs, MGH/MGZ, NRRD, MHA, MINC as MINC 2), else NIfTI")
    predict.add_argument("--strict", action="store_true",
                         help="refuse inputs with NaN/Inf voxels (default: replace them by 0, or the image minimum "
                         "for a CT model, with a warning)")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument("--shard", metavar="I/N",
                         help="segment only shard I of N of a folder's cases (job arrays; balanced by size)")
    predict.set_defaults(handler=predict_command, runtime=True)

    evaluate = subcommands.add_parser("evaluate", parents=[common], help="compare predictions with reference labels")
    evaluate.add_argument("prediction", help="predicted label file or folder")
    evaluate.add_argument("reference", help="reference label file or folder")
    structures = evaluate.add_mutually_exclusive_group()
    structures.add_argument("--labels", help="label values to score, e.g. 1,2 (default: every non-zero value)")
    structures.add_argument("--regions",
                            help="named regions: brats (2018-2021 or 2023+ from the labels), brats2021, brats2023")
    evaluate.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    evaluate.add_argument("-o", "--output", help="write a CSV report (per case and summary)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing report")
    evaluate.set_defaults(handler=evaluate_command)

    evaluate_run = subcommands.add_parser(
        "evaluate-run", parents=[common], help="predict and score a run's held-out cases (per label or region)"
    )
    evaluate_run.add_argument("run_dir", help="a run folder, or a cross-validation folder of fold_<k> runs")
    evaluate_run.add_argument("-o", "--output", help="output folder (default RUN_DIR/evaluation)")
    evaluate_run.add_argument("--checkpoint", default="best.pt", choices=["best.pt", "last.pt"],
                              help="best.pt (chosen on the validation cases; default) or last.pt")
    evaluate_run.add_argument("--no-mirroring", action="store_true", help="no mirrored test-time augmentation")
    evaluate_run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    evaluate_run.add_argument("--overwrite", action="store_true", help="replace an evaluation made with other settings")
    evaluate_run.set_defaults(handler=evaluate_run_command, runtime=True)

    info = subcommands.add_parser("info", parents=[common], help="show what a checkpoint contains")
    info.add_argument("model", help="checkpoint file or bundled model name")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=info_command)

    export = subcommands.add_parser("export", parents=[common], help="export a model to ONNX or TorchScript")
    export.add_argument("model", help="checkpoint file or bundled model name")
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default onnx")
    export.add_argument("-o", "--output", required=True, help="output folder")
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    export.set_defaults(handler=export_command)
    return parser


def _configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="volseg: %(message)s", stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USER_ERROR
    _configure_logging(args.debug, args.quiet)
    try:
        if getattr(args, "runtime", False):  # commands that compute get volseg's process settings
            from volseg import runtime

            runtime.apply(record=False)  # no torch import yet: argument errors stay fast
        return handler(args)
    except VolsegError as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())  # always one line
        print(f"volseg: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("volseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
