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
