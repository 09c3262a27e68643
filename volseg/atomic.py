"""Atomic file writes: a file is either complete or absent, never half-written."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from volseg.errors import OutputError


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same name ending, so writers pick the same
    format); when the block succeeds it is flushed to disk and renamed onto ``path``.

    On any failure the temporary file is removed; an ``OSError`` (full disk, no
    permission) becomes an :class:`OutputError` naming ``path``.
    """
    target = Path(path)
    temporary = target.parent / f".tmp-{secrets.token_hex(6)}-{target.name}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        _fsync(temporary)
        os.replace(temporary, target)
        _fsync(target.parent)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write '{target}': {error.strerror or error}") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_target(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def _fsync(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # some systems cannot open a folder for fsync: skip it there
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(descriptor)
