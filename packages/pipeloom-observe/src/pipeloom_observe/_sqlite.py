"""Opening a run database without creating or changing it, and telling what it holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final, Literal, TypeAlias

from pipeloom.errors import DatabaseError
from pipeloom.schema import PIPELOOM_TABLES, SCHEMA_VERSION

__all__ = ["Layout", "layout", "open_readonly", "require_file", "user_version"]

Layout: TypeAlias = Literal["current", "outdated", "newer", "empty", "foreign"]
"""What a file holds: pipeloom's current schema, an older or newer one, nothing, or other tables."""

_RUN_TABLES: Final = frozenset(PIPELOOM_TABLES)


def require_file(db_path: str | Path) -> Path:
    """Return the path of an existing file; never create one.

    Raises:
        DatabaseError: the path is missing or is a directory.
    """
    path = Path(db_path)
    if not path.exists():
        raise DatabaseError(f"{path}: no such database file; check the path (nothing was created)")
    if path.is_dir():
        raise DatabaseError(f"{path}: is a directory, not a database file")
    return path


def open_readonly(path: Path) -> sqlite3.Connection:
    """Open an existing file with ``mode=ro``, so nothing this connection does can write.

    Raises:
        DatabaseError: SQLite cannot open the file.
    """
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DatabaseError(f"{path}: cannot open database ({exc})") from exc


def user_version(conn: sqlite3.Connection, path: Path) -> int:
    """Return the schema version stamped in the file, checking on the way that it is SQLite.

    Raises:
        DatabaseError: the file is not a SQLite database.
    """
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(
            f"{path}: is not a SQLite database ({exc}); pass a pipeloom run database"
        ) from exc
    return int(version)


def layout(conn: sqlite3.Connection, path: Path) -> Layout:
    """Classify the file so callers can explain what they can and cannot show.

    Raises:
        DatabaseError: the file is not a SQLite database.
    """
    version = user_version(conn, path)
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    tables = {str(row[0]) for row in rows}
    if tables & _RUN_TABLES:
        if version == SCHEMA_VERSION:
            return "current"
        return "newer" if version > SCHEMA_VERSION else "outdated"
    return "foreign" if tables else "empty"
