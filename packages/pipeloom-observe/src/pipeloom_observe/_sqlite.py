"""Opening a run database without creating or changing it, and telling what it holds."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeloom.db import check_existing, connect_readonly, describe_error
from pipeloom.schema import Layout, layout

__all__ = ["Layout", "file_layout", "read_only", "require_file"]


def require_file(db_path: str | Path) -> Path:
    """Return the path of an existing regular file; never create one.

    Raises:
        DatabaseError: the path is missing, a directory, a FIFO or another non-regular file.
    """
    return check_existing(db_path)


@contextmanager
def read_only(db_path: str | Path) -> Iterator[tuple[sqlite3.Connection, Path]]:
    """Open an existing SQLite file with ``mode=ro`` for the block, then close it.

    Raises:
        DatabaseError: the file is missing, a directory, or not a SQLite database.
    """
    path = Path(db_path)
    conn = connect_readonly(path)
    try:
        yield conn, path
    finally:
        conn.close()


def file_layout(db_path: str | Path) -> tuple[Path, Layout]:
    """Classify an existing file (see `pipeloom.schema.layout`) without changing it.

    Raises:
        DatabaseError: the file is missing, a directory, or not a SQLite database.
    """
    with read_only(db_path) as (conn, path):
        try:
            return path, layout(conn)
        except sqlite3.DatabaseError as exc:  # a damaged schema page
            raise describe_error(path, exc) from exc
