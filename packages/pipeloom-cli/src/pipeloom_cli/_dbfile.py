"""Checking and upgrading a run database before a command writes to it.

Core refuses a file with an older schema (it must never migrate behind a library user's
back); the CLI is the place where upgrading in place is expected, so it does it first.
"""

from __future__ import annotations

import logging
import shlex
import sqlite3
from pathlib import Path

from pipeloom.db import MEMORY, check_path
from pipeloom.errors import DatabaseError
from pipeloom_cli._errors import UsageError

__all__ = ["SQLITE_HEADER", "file_size", "observe_hint", "prepare_for_write"]

log = logging.getLogger("pipeloom.cli")

SQLITE_HEADER = b"SQLite format 3\x00"


def file_size(n: int) -> str:
    """Bytes as a person reads them: ``812 B``, ``64.3 MiB``, ``2.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def observe_hint(db: Path | None) -> str | None:
    """Return the command that browses ``db``, ready to paste into a shell (None: no file)."""
    if db is None or str(db) == MEMORY:
        return None
    return f"pipeloom observe {shlex.quote(str(db))}"


def _check_is_sqlite(db: Path) -> None:
    if str(db) == MEMORY:
        return
    try:
        check_path(db)
    except DatabaseError as exc:
        raise UsageError(str(exc)) from exc
    if not db.exists():
        return
    try:
        with db.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise UsageError(f"{db}: cannot read it ({exc.strerror}); check its permissions") from exc
    if header and header != SQLITE_HEADER:
        raise UsageError(
            f"{db}: is not a SQLite database; choose another --db path or move the file away"
        )


def prepare_for_write(db: Path) -> None:
    """Make sure ``db`` is a usable path and bring an existing file to the current schema.

    Raises:
        UsageError: the path is a directory, a FIFO or another non-regular file, its folder
            is missing or not writable, the file is not SQLite, or the upgrade failed.
        DatabaseError: the file was written by a newer pipeloom (from the migrations).
    """
    _check_is_sqlite(db)
    if str(db) == MEMORY or not db.exists() or db.stat().st_size == 0:
        return
    # Imported here: sqlite-utils is only needed when there is a file to upgrade.
    from pipeloom_observe.migrations import upgrade

    try:
        applied = upgrade(db)
    except sqlite3.DatabaseError as exc:
        raise UsageError(
            f"{db}: cannot upgrade it to the current schema ({exc}); "
            f"see `pipeloom db info {shlex.quote(str(db))}`"
        ) from exc
    if applied:
        log.info("%s: upgraded in place (%s)", db, ", ".join(applied))
