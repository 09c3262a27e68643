"""Atomic file writes: a file is either complete or absent, never half-written."""

from __future__ import annotations

import hashlib
import os
import re
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
        _discard(temporary)
        raise OutputError(f"cannot write '{target}': {error.strerror or error}") from error
    except BaseException:
        _discard(temporary)
        raise


def _discard(temporary: Path) -> None:
    """Remove a temporary file if it is there; a failure here (e.g. the folder itself could not
    be made, so the path's parent is not a folder) must not hide the error being raised."""
    try:
        temporary.unlink(missing_ok=True)
    except OSError:
        pass


def temporaries_of(path: str | os.PathLike) -> list[Path]:
    """Temporary files that :func:`atomic_target` made for ``path`` and never renamed (left by a
    process that was killed while writing it)."""
    target = Path(path)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"\.tmp-[0-9a-f]{{12}}-{re.escape(target.name)}")
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files left for ``path`` by an interrupted write (see
    :func:`temporaries_of`); call it only when about to write ``path`` again, since another
    process writing the same path at the same moment would lose its temporary file. Returns
    what was removed."""
    stale = temporaries_of(path)
    for temporary in stale:
        _discard(temporary)
    return stale


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, UTF-8 whatever the locale; returns the path."""
    with atomic_target(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
