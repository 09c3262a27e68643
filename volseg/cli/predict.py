"""``volseg predict``: one process, a shard of a job array, or a rank of a torchrun job.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes its share of the cases (the split of
:mod:`volseg.inference.sharding`) with its share of the cores; rank 0 writes the run report
once every rank has written its part.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from volseg.cli.commands import _bars_off
from volseg.errors import ConfigError, InputFileError, VolsegError

logger = logging.getLogger("volseg")


def _reporter(args: argparse.Namespace, shard: tuple[int, int] | None, ranks: tuple[int, int, int] | None, predictor):
    """The run report: with ``--report``, for every shard or rank, and for a folder of several
    cases; None for one case (unless asked for) and with ``--no-report``."""
    from volseg.inference.inputs import find_inputs
    from volseg.inference.report import RunReporter
    from volseg.io.naming import split_volume_name

    if args.no_report:
        return None
    if args.report is None and shard is None:
        if split_volume_name(Path(args.output).name) is not None:
            return None  # one named output file
        try:
            if len(find_inputs(args.input, channel_names=predictor.channel_names)) < 2:
                return None
        except VolsegError:
            return None  # segment() reports the input's problem
    report = Path(args.report) if args.report else Path(args.output) / "report.json"
    if ranks is not None:
        return RunReporter(report, rank=ranks[0], world=ranks[1], wait=True)
    return RunReporter(report, rank=shard[0] if shard else 0, world=shard[1] if shard else 1)


def _header(args: argparse.Namespace, predictor, shard, ranks) -> dict:
    from volseg.bundled import resolve_model
    from volseg.inference.report import report_header

    options = {
        "input": str(args.input),
        "output": str(args.output),
        "device": str(predictor.device),
        "backend": predictor.backend,
        "mirroring_axes": list(predictor.tta_flips),
        "window": list(predictor.roi_size),
        "fast": predictor.fast,
        "overlap": predictor.overlap,
        "window_batch": predictor.sw_batch_size,
        "autocast": predictor.autocast,
        "mask_nonzero": predictor.mask_nonzero,
        "formats": [args.label_extension, *args.formats],
        "largest_component": args.largest_component,
        "min_size_ml": args.min_size,
        "strict": args.strict,
        "overwrite": args.overwrite,
        "shard": list(shard) if shard else None,
        "processes": ranks[1] if ranks else 1,
        "threads_per_process": _threads(),
    }
    return report_header(str(args.model), resolve_model(args.model), options)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def predict_command(args: argparse.Namespace) -> int:
    _check_predict_options(args)  # argument errors before torch and MONAI are imported
    from volseg.inference.sharding import parse_shard

    shard = parse_shard(args.shard) if args.shard else None
    from volseg.runtime import torchrun_rank

    ranks = torchrun_rank()
    if ranks is not None:
        if shard is not None:
            raise ConfigError("--shard and torchrun both split the cases; use one of them")
        shard = ranks[:2]
    if not Path(args.input).exists():
        raise InputFileError(f"{args.input}: no such file or folder")
    if ranks is not None:  # the ranks on one machine share its cores
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks[2]))
    from volseg.inference.openvino_runner import default_cache_dir
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
        extension=args.label_extension,
        strict=args.strict,
        formats=args.formats,
        reference_dicom=args.reference_dicom,
        model_name=str(args.model),
    )
    windows = tqdm(desc="windows", unit="window", leave=False, disable=_bars_off(args), file=sys.stderr, delay=1.0)

    def window_progress(done: int, total: int) -> None:
        if done <= windows.n:
            windows.reset(total=total)
        windows.total = total
        windows.update(done - windows.n)

    device = args.device
    if ranks is not None:  # each rank of a machine on its own GPU, where there are GPUs
        from volseg.runtime import resolve_device

        device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    predictor = Predictor.from_checkpoint(
        args.model,
        device=device,
        backend=args.backend,
        cache_dir=args.cache_dir or default_cache_dir(),
        overlap=args.overlap,
        sw_batch_size=args.batch,
        tta=args.tta,
        mask_nonzero=args.mask_nonzero,
        fast=args.fast,
        progress=window_progress,
        cudnn_benchmark=True,  # a command's own process: cuDNN may time its algorithms for the window shape
    )
    reporter = _reporter(args, shard, ranks, predictor)
    if reporter is not None:
        options.report_previews = reporter.previews
    cases = tqdm(desc="cases", unit="case", disable=_bars_off(args), file=sys.stderr, delay=1.0)

    def report(outcome, done: int, total: int) -> None:
        cases.total = total
        cases.update(1)
        if reporter is not None:
            reporter.add(outcome)
        if outcome.error is not None:
            return
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
        if reporter is not None:
            written = reporter.finish(_header(args, predictor, shard, ranks))
            if written:
                logger.info("run report: %s", ", ".join(map(str, written)))
    done = [o for o in outcomes if not o.skipped]
    logger.info(
        "segmented %d case(s), skipped %d finished; outputs in %s", len(done), len(outcomes) - len(done), args.output
    )
    return 0


def _check_predict_options(args: argparse.Namespace) -> None:
    """Refuse bad option values before the model is loaded and any case is read."""
    import math

    from volseg.inference.output_formats import check_formats, parse_formats

    args.label_extension, args.formats = parse_formats(args.format)
    check_formats(args.formats)  # dicom-seg: is highdicom installed?
    if args.reference_dicom is not None:
        if "dicom-seg" not in args.formats:
            raise ConfigError("--reference-dicom is for --format dicom-seg; add dicom-seg to --format or leave it out")
        if not Path(args.reference_dicom).is_dir():
            raise InputFileError(f"--reference-dicom {args.reference_dicom}: no such folder (give a DICOM series)")
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
