"""The ``volseg`` command line: parse arguments, call the API, report errors.

The package only turns arguments into API calls and results into text (:mod:`.parser` builds
the parser, :mod:`.commands` holds one handler per subcommand); it and ``__main__`` are the
only modules that print. Every failure a user can cause is a :class:`volseg.errors.VolsegError`;
the CLI prints its message as one line and exits with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from volseg.errors import VolsegError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


def _configure_logging(debug: bool, quiet: bool) -> None:
    """Log to stderr; under torchrun only rank 0 logs progress (the others warnings and errors),
    and every line names its rank."""
    from volseg.runtime import torchrun_rank

    ranks = torchrun_rank()
    rank = ranks[0] if ranks else None
    level = logging.DEBUG if debug else logging.WARNING if quiet or (rank or 0) > 0 else logging.INFO
    prefix = "volseg" if rank is None else f"volseg[{rank}]"
    logging.basicConfig(level=level, format=f"{prefix}: %(message)s", stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from volseg.cli.parser import build_parser

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
