"""The ``volseg`` command line: parse arguments, call the API, report errors.

This module only turns arguments into API calls and results into text. Every
failure a user can cause is a :class:`volseg.errors.VolsegError`; the CLI prints
its message as one line and exits with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from pathlib import Path

from tqdm import tqdm

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


def _models_command(args: argparse.Namespace) -> int:
    from volseg.nn.registry import describe_model, list_models, model_entry

    if args.name is None:
        width = max(len(name) for name in list_models())
        for name in list_models():
            print(f"{name:<{width}}  {model_entry(name).summary}")
        return 0
    description = describe_model(args.name, args.dims, args.in_channels, args.classes)
    print(json.dumps(description, indent=2))
    return 0


def _plan_command(args: argparse.Namespace) -> int:
    from volseg.atomic import write_text
    from volseg.config import dump_config
    from volseg.data.planner import plan_dataset, plan_summary

    outputs = [Path(p) for p in (args.output, args.fingerprint) if p is not None]
    check_outputs_free(outputs, args.overwrite)
    with tqdm(desc="fingerprint", unit="case", disable=args.quiet, file=sys.stderr, delay=0.5) as bar:

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


def _train_command(args: argparse.Namespace) -> int:
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
    result = train(config, run_dir, resume=bool(args.resume), overwrite=args.overwrite, until_epoch=args.until_epoch,
                   progress_bar=None if args.quiet else tqdm)
    best = "no validation" if result.best_metric is None else f"best mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}"
    logger.info("finished %d epochs in %s: %s", result.epochs_run, result.run_dir, best)
    return 0


def check_outputs_free(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before any work, to replace existing outputs unless ``--overwrite``."""
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand stores its handler in ``handler``."""
    parser = argparse.ArgumentParser(
        prog="volseg",
        description="Segment 3D and 2D medical images with U-Net-family networks.",
        parents=[_common_options(for_subcommand=False)],
    )
    parser.add_argument("--version", action="version", version=f"volseg {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    common = _common_options(for_subcommand=True)

    models = commands.add_parser("models", parents=[common], help="list the network architectures volseg can build")
    models.add_argument("name", nargs="?", help="describe this network: its arguments and parameter count")
    models.add_argument("--dims", type=int, default=3, help="spatial dimensions, 2 or 3 (default 3)")
    models.add_argument("--in-channels", type=int, default=1, help="input channels (default 1)")
    models.add_argument("--classes", type=int, default=2, help="output classes (default 2)")
    models.set_defaults(handler=_models_command)

    plan = commands.add_parser(
        "plan", parents=[common], help="propose a training config from a dataset's fingerprint"
    )
    plan.add_argument("data", help="dataset folder: MSD, nnU-Net raw, BraTS or images/ + labels/")
    plan.add_argument("-o", "--output", help="write the config YAML here (default: print it)")
    plan.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3D (default) or 2D slice network")
    plan.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="what training will run on (default cuda)")
    plan.add_argument("--memory-gb", type=float, help="memory budget for training (default 8 on cuda, 4 on cpu)")
    plan.add_argument("--layout", default="auto", help="force the dataset layout (default: detect it)")
    plan.add_argument("--workers", type=int, default=2, help="processes reading cases (default 2)")
    plan.add_argument("--fingerprint", help="also write the dataset fingerprint as JSON here")
    plan.add_argument("--overwrite", action="store_true", help="replace existing output files")
    plan.set_defaults(handler=_plan_command)

    train = commands.add_parser("train", parents=[common], help="train a network from a YAML config")
    train.add_argument("config", nargs="?", help="the run's YAML config (volseg plan writes one)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=50")
    train.add_argument("-o", "--output", help="run folder (default runs/<config name>/fold_<k>)")
    train.add_argument("--fold", type=int, help="cross-validation fold to train (-1: all cases)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--until-epoch", type=int, metavar="N", help="stop after epoch N (continue later with --resume)")
    train.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds a run")
    train.set_defaults(handler=_train_command)
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
