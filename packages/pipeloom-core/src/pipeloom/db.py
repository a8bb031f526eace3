"""Opening the run database with pipeloom's pragmas, creating its schema, checkpointing.

Only the writer thread writes; these helpers are also used by read-only tools (the CLI's
status command) so every connection gets the same busy timeout and error messages.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Literal, get_args

from pipeloom._legacy import is_original_layout, upgrade_original_layout
from pipeloom.errors import DatabaseError
from pipeloom.schema import check_schema, create_schema

__all__ = [
    "MEMORY",
    "Synchronous",
    "check_path",
    "connect",
    "connect_readonly",
    "db_label",
    "init_schema",
    "wal_checkpoint",
]

MEMORY = ":memory:"
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits on another process's lock before SQLite reports busy."""


def db_label(db_path: str | Path) -> str:
    """Return the path as users typed it, for error messages."""
    return str(db_path)


def check_path(db_path: str | Path) -> None:
    """Refuse a path no database can be created at, before anything is opened.

    Raises:
        DatabaseError: the path is a directory or its folder does not exist.
    """
    if str(db_path) == MEMORY:
        return
    path = Path(db_path)
    if path.is_dir():
        raise DatabaseError(
            f"{path}: is a directory, not a database file; pass a file path such as "
            f"{path / 'pipeloom.db'}"
        )
    if not path.parent.exists():
        raise DatabaseError(
            f"{path}: folder {path.parent} does not exist; create it or choose another path"
        )


def connect(
    db_path: str | Path,
    *,
    wal: bool = True,
    synchronous: Synchronous = "NORMAL",
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """Open (or create) a database for writing with pipeloom's pragmas.

    WAL lets readers (status, Datasette) read while the writer writes. synchronous=NORMAL in
    WAL mode can lose the last commits on power loss but never corrupts the file; FULL also
    survives power loss at the cost of an fsync per commit.

    Raises:
        DatabaseError: the path is a directory, its folder is missing, or the file is not
            a SQLite database.
        ValueError: ``synchronous`` is not a level SQLite knows (it would silently use
            NORMAL, so a typo for FULL would quietly lose power-loss durability).
    """
    if str(synchronous).upper() not in get_args(Synchronous):
        raise ValueError(
            f"synchronous={synchronous!r}: use NORMAL (the default) or FULL (survives power "
            "loss); OFF and EXTRA also work"
        )
    check_path(db_path)
    try:
        conn = sqlite3.connect(
            str(db_path),
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=check_same_thread,
        )
    except sqlite3.Error as exc:
        raise DatabaseError(f"{db_path}: cannot open database ({exc})") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if wal and str(db_path) != MEMORY:
            mode = _journal_mode(conn, "WAL")
            if str(mode).lower() != "wal":
                raise DatabaseError(f"{db_path}: could not switch to WAL (journal_mode={mode})")
        elif not wal:
            _journal_mode(conn, "DELETE")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # As in 0.0.7: users' REFERENCES and ON DELETE CASCADE in their own tables are
        # enforced. pipeloom's own rows always point at an existing run.
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _is_busy(exc):
            raise DatabaseError(
                f"{db_path}: another connection kept it locked for over "
                f"{BUSY_TIMEOUT_MS // 1000} s ({exc}); try again once that is done"
            ) from exc
        raise DatabaseError(
            f"{db_path}: is not a usable SQLite database ({exc}); "
            "choose another path or move the file away"
        ) from exc
    return conn


def _is_busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


def _journal_mode(conn: sqlite3.Connection, mode: str) -> str:
    """Set the journal mode, retrying while another connection holds a lock.

    Changing the mode needs an exclusive lock, and SQLite returns SQLITE_BUSY for it at once
    rather than calling the busy handler, so two processes opening a new file together
    would otherwise see "database is locked". Retries for up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def connect_readonly(db_path: str | Path) -> sqlite3.Connection:
    """Open an existing database read-only; never creates a file.

    Raises:
        DatabaseError: the file is missing or is not a SQLite database.
    """
    path = Path(db_path)
    if not path.exists():
        raise DatabaseError(f"{path}: no such database file; check the path or run a pipeline")
    if path.is_dir():
        raise DatabaseError(f"{path}: is a directory, not a database file")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"{path}: is not a SQLite database ({exc})") from exc
    return conn


def init_schema(
    conn: sqlite3.Connection,
    db_path: str | Path = MEMORY,
    *,
    store_task_status: bool = True,
) -> None:
    """Create pipeloom's tables on a new file; accept a file that already has them.

    A file written by pipeloom 0.0.7 (its single-run ``task_runs``) is upgraded in place,
    its rows kept as one run (see `pipeloom._legacy`).

    Args:
        conn: a connection from `connect` (autocommit mode).
        db_path: the file, for error messages.
        store_task_status: False creates nothing (0.0.7's switch: the file is then all yours
            for domain tables).

    Raises:
        SchemaOutdatedError: the file holds an older pipeloom schema this version cannot
            upgrade by itself.
        DatabaseError: the tables cannot be created (or the file was written by a newer
            pipeloom).
    """
    if not store_task_status:
        return
    if conn.in_transaction:
        # 0.0.7 committed as it went; the schema is created in a transaction of its own.
        conn.commit()
    try:
        if is_original_layout(conn):
            upgrade_original_layout(conn, db_label(db_path))
        if check_schema(conn, db_label(db_path)):
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not check_schema(conn, db_label(db_path)):
                create_schema(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"{db_path}: cannot create pipeloom tables ({exc})") from exc


def wal_checkpoint(conn: sqlite3.Connection, mode: str = "TRUNCATE") -> tuple[int, int, int]:
    """Fold the WAL back into the main file so it does not grow between runs.

    An open transaction is committed first, as in 0.0.7: a checkpoint cannot run inside
    one ("database table is locked").

    Returns:
        SQLite's (busy, wal pages, checkpointed pages) triple.
    """
    if mode.upper() not in {"PASSIVE", "FULL", "RESTART", "TRUNCATE"}:
        raise ValueError(f"checkpoint mode {mode!r}: use PASSIVE, FULL, RESTART or TRUNCATE")
    if conn.in_transaction:
        conn.commit()
    row = conn.execute(f"PRAGMA wal_checkpoint({mode.upper()})").fetchone()
    if row is None:
        return (0, 0, 0)
    return (int(row[0]), int(row[1]), int(row[2]))
