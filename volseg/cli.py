"""The ``volseg`` command line: parse arguments, call the API, report errors.

This module only turns arguments into API calls and results into text. Every
failure a user can cause is a :class:`volseg.errors.VolsegError`; the CLI prints
its message as one line and exits with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from volseg import commands
from volseg._version import __version__
from volseg.errors import VolsegError

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
    models.set_defaults(handler=commands.models_command)

    plan = subcommands.add_parser(
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
    plan.set_defaults(handler=commands.plan_command)

    train = subcommands.add_parser("train", parents=[common], help="train a network from a YAML config")
    train.add_argument("config", nargs="?", help="the run's YAML config (volseg plan writes one)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=50")
    train.add_argument("-o", "--output", help="run folder (default runs/<config name>/fold_<k>)")
    train.add_argument("--fold", type=int, help="cross-validation fold to train (-1: all cases)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--until-epoch", type=int, metavar="N", help="stop after epoch N (continue later with --resume)")
    train.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds a run")
    train.set_defaults(handler=commands.train_command)

    predict = subcommands.add_parser("predict", parents=[common], help="segment volumes with a trained or bundled model")
    predict.add_argument("-m", "--model", required=True, help="checkpoint file or bundled model name (e.g. hippocampus)")
    predict.add_argument("-i", "--input", required=True, help="volume file, folder of cases, BraTS case folder or DICOM series")
    predict.add_argument("-o", "--output", required=True, help="output file (one case) or folder")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto picks CUDA when present")
    predict.add_argument("--overlap", type=float, help="sliding-window overlap (default: the model's, usually 0.5)")
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                         help="mirror test-time augmentation (default: on with CUDA, off on CPU)")
    predict.add_argument("--batch", type=int, help="windows per network call (default: the model's)")
    predict.add_argument("--save-probabilities", action="store_true", help="also write class probabilities (4D)")
    predict.add_argument("--uncertainty", nargs="?", const="entropy", choices=("entropy", "tta-variance"),
                         help="also write a voxel-wise uncertainty map (default entropy)")
    predict.add_argument("--largest-component", action="store_true", help="keep each label's largest connected component")
    predict.add_argument("--min-size", type=float, metavar="ML", help="remove connected components smaller than ML millilitres")
    predict.add_argument("--stats", action="store_true", help="print and write per-label volumes and component counts")
    predict.add_argument("--preview", action="store_true", help="write a PNG of three orthogonal slices with the labels")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.set_defaults(handler=commands.predict_command)

    evaluate = subcommands.add_parser("evaluate", parents=[common], help="compare predictions with reference labels")
    evaluate.add_argument("prediction", help="predicted label file or folder")
    evaluate.add_argument("reference", help="reference label file or folder")
    structures = evaluate.add_mutually_exclusive_group()
    structures.add_argument("--labels", help="label values to score, e.g. 1,2 (default: every non-zero value)")
    structures.add_argument("--regions", help="named regions: brats (2018-2021 or 2023+ from the labels), brats2021, brats2023")
    evaluate.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    evaluate.add_argument("-o", "--output", help="write a CSV report (per case and summary)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing report")
    evaluate.set_defaults(handler=commands.evaluate_command)

    info = subcommands.add_parser("info", parents=[common], help="show what a checkpoint contains")
    info.add_argument("model", help="checkpoint file or bundled model name")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=commands.info_command)

    export = subcommands.add_parser("export", parents=[common], help="export a model to ONNX or TorchScript")
    export.add_argument("model", help="checkpoint file or bundled model name")
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default onnx")
    export.add_argument("-o", "--output", required=True, help="output folder")
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    export.set_defaults(handler=commands.export_command)
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
