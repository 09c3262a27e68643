"""Every failure a user can cause is a :class:`VolsegError`.

The CLI prints the message of a ``VolsegError`` as one line and exits with code 2;
any other exception is a bug in volseg and keeps its traceback.

The subclasses also derive from the matching built-in exception, so code that
catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VolsegError(Exception):
    """Base class of every user-facing volseg failure."""


class ConfigError(VolsegError, ValueError):
    """A bad option, config key or value: names the value and what is allowed."""


class ShapeError(VolsegError, ValueError):
    """A tensor or volume whose shape cannot be used (wrong rank, channels or size)."""


class InputFileError(VolsegError, OSError):
    """An input file that is missing, unreadable or not a valid volume."""


class InputMismatchError(VolsegError, ValueError):
    """An input unlike the model's training scans (modality, field of view, spacing), refused by ``strict``."""


class OutputExistsError(VolsegError, FileExistsError):
    """An output path that exists and may not be overwritten."""


class OutputError(VolsegError, OSError):
    """An output that cannot be written (no permission, full disk, ...)."""


class CheckpointError(VolsegError, ValueError):
    """A checkpoint that is corrupt, of an unknown format version or incomplete."""


class AccuracyError(VolsegError, ValueError):
    """A model change refused because it costs accuracy (an int8 network whose Dice drops too far)."""


class TrainingError(VolsegError, FloatingPointError):
    """Training cannot go on (e.g. the loss became NaN): the message says what to change."""


def closest_hint(value: str, allowed: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest allowed string, or ``""``."""
    matches = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def choice_error(what: str, value: object, allowed: Iterable[str]) -> ConfigError:
    """A ``ConfigError`` for ``value`` not among ``allowed``, with a suggestion."""
    allowed = sorted(str(a) for a in allowed)
    return ConfigError(f"unknown {what} {value!r}{closest_hint(str(value), allowed)}; allowed: {', '.join(allowed)}")
