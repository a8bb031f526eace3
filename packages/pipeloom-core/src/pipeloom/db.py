"""Opening the run database with pipeloom's pragmas, creating its schema, checkpointing.

Only the writer thread writes; these helpers are also used by read-only tools (the CLI's
status command) so every connection gets the same busy timeout and error messages.
"""

from __future__ import annotations

import logging
import os
import shlex
import sqlite3
import stat
import time
from pathlib import Path
from typing import Literal, get_args

from pipeloom.errors import DatabaseError
from pipeloom.record._legacy import is_original_layout, upgrade_original_layout
from pipeloom.schema import check_schema, create_schema

__all__ = [
    "DEFAULT_DB",
    "MEMORY",
    "Synchronous",
    "check_existing",
    "check_path",
    "connect",
    "connect_readonly",
    "db_label",
    "describe_error",
    "init_schema",
    "wal_checkpoint",
]

log = logging.getLogger("pipeloom.db")

DEFAULT_DB = "pipeloom.db"
"""The run database's file name where a call names none (``run_pipeline``, `Pipeline`)."""
MEMORY = ":memory:"
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits on another process's lock before SQLite reports busy."""


def db_label(db_path: str | Path) -> str:
    """Return the path as users typed it, for error messages."""
    return str(db_path)


def _stat(path: Path) -> os.stat_result | None:
    """Stat ``path`` (None when missing), turning any other failure into one clear line."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:
        raise DatabaseError(
            f"{path}: a part of this path is a file, not a folder; choose another path"
        ) from exc
    except OSError as exc:
        raise DatabaseError(
            f"{path}: cannot look at it ({exc.strerror}); check the permissions of its folders"
        ) from exc


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _refuse_special(path: Path, info: os.stat_result) -> None:
    """Refuse anything but a regular file: SQLite (or a header check) would block on a FIFO."""
    if stat.S_ISDIR(info.st_mode):
        raise DatabaseError(
            f"{path}: is a directory, not a database file; pass a file path such as "
            f"{path / DEFAULT_DB}"
        )
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise DatabaseError(
            f"{path}: is {kind}, not a database file; pass the path of a regular file"
        )


def _folder(path: Path) -> str:
    return os.path.abspath(path.parent)


def check_path(db_path: str | Path) -> None:
    """Refuse a path no database can be written at, before anything is opened.

    SQLite writes a ``-wal`` (or ``-journal``) file beside the database, so the folder must
    be writable even when the file itself is; saying so here beats SQLite's "unable to open
    database file" later.

    Raises:
        DatabaseError: the path is a directory, a FIFO or another non-regular file, the
            file cannot be written, its folder does not exist, or its folder is not writable.
    """
    if str(db_path) == MEMORY:
        return
    path = Path(db_path)
    info = _stat(path)
    if info is not None:
        _refuse_special(path, info)
        if not os.access(path, os.R_OK | os.W_OK):
            raise DatabaseError(
                f"{path}: no permission to write the file; check its permissions (and "
                "`lsattr` for the immutable flag) or choose another path"
            )
    folder = _stat(path.parent)
    if folder is None or not stat.S_ISDIR(folder.st_mode):
        raise DatabaseError(
            f"{path}: folder {path.parent} does not exist; create it or choose another path"
        )
    # os.access also answers for root, read-only mounts and immutable folders (EROFS, EPERM).
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise DatabaseError(
            f"{path}: folder {_folder(path)} is not writable, and SQLite must create "
            f"{path.name}-wal or -journal beside the database to write it; make the folder "
            "writable or choose a path in a writable folder"
        )


def check_existing(db_path: str | Path) -> Path:
    """Return the path of an existing regular file to read; never create one.

    Raises:
        DatabaseError: the path is missing, a directory, a FIFO or another non-regular file.
    """
    path = Path(db_path)
    info = _stat(path)
    if info is None:
        raise DatabaseError(
            f"{path}: no such database file; check the path or run a pipeline (nothing was created)"
        )
    _refuse_special(path, info)
    return path


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
        raise describe_error(db_path, exc, writing=True) from exc
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
        raise describe_error(db_path, exc, writing=True) from exc
    return conn


def describe_error(
    db_path: str | Path, exc: sqlite3.Error, *, writing: bool = False
) -> DatabaseError:
    """Turn a SQLite error on ``db_path`` into one line naming the file, the cause and the fix.

    Chosen by SQLite's error code, so a damaged page, a file that is not SQLite, a lock held
    too long and a folder SQLite cannot create its side files in each get their own advice.
    """
    path = Path(db_path)
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_BUSY:
        return DatabaseError(
            f"{path}: another connection kept it locked for over "
            f"{BUSY_TIMEOUT_MS // 1000} s ({exc}); try again once that is done"
        )
    if code == sqlite3.SQLITE_CORRUPT:
        quoted = shlex.quote(str(path))
        return DatabaseError(
            f"{path}: the file is damaged ({exc}); see `sqlite3 {quoted} 'PRAGMA "
            "integrity_check'`, then restore it from a copy or rescue what is left with "
            "sqlite3's `.recover`"
        )
    if code == sqlite3.SQLITE_NOTADB:
        fix = "choose another path or move the file away" if writing else "check the path"
        return DatabaseError(f"{path}: is not a SQLite database ({exc}); {fix}")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        if os.path.exists(path) and not os.access(path, os.R_OK | (os.W_OK if writing else 0)):
            mode = "write" if writing else "read"
            return DatabaseError(
                f"{path}: no permission to {mode} the file ({exc}); check its permissions"
            )
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return DatabaseError(
                f"{path}: folder {_folder(path)} is not writable, and SQLite must create "
                f"{path.name}-wal, -shm or -journal beside the database ({exc}); make the "
                "folder writable or copy the file (with any -wal beside it) to a writable folder"
            )
    action = "write" if writing else "read"
    return DatabaseError(f"{path}: cannot {action} this database ({exc})")


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


def connect_readonly(db_path: str | Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open an existing database read-only; never creates or changes a file.

    A WAL file is read through its ``-shm`` index, which SQLite creates beside it when
    missing; in a folder nobody can write (a read-only mount, a shared archive) that fails
    with "unable to open database file" although the data is fine. Then, and only when no
    ``-wal`` file with commits in it is beside the database, the file is opened
    ``immutable=1``: no writer can change it there (writing needs a ``-wal`` or ``-journal``
    in that same folder), so reading without locks shows exactly what it holds. ``nolock=1``
    does not help: SQLite still needs the ``-shm`` for a WAL file.

    Args:
        db_path: an existing SQLite file.
        check_same_thread: False lets another thread use the connection (Datasette does).

    Raises:
        DatabaseError: the file is missing, a directory or another non-regular file, is not
            a SQLite database, is damaged, or cannot be read.
    """
    path = check_existing(db_path)
    uri = path.resolve().as_uri()  # percent-escapes '#', '?' and '%' in the name
    try:
        return _open_readonly(f"{uri}?mode=ro", check_same_thread)
    except sqlite3.DatabaseError as exc:
        if not _needs_immutable(path, exc):
            raise describe_error(path, exc) from exc
        log.debug("%s: folder not writable and no -wal beside it; reading immutable", path)
        try:
            return _open_readonly(f"{uri}?mode=ro&immutable=1", check_same_thread)
        except sqlite3.DatabaseError as again:
            raise describe_error(path, again) from again


def _open_readonly(uri: str, check_same_thread: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=check_same_thread
    )
    try:
        # Belt and braces over mode=ro: nothing a reader runs may change the file.
        conn.execute("PRAGMA query_only = 1")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _needs_immutable(path: Path, exc: sqlite3.DatabaseError) -> bool:
    """True when only the missing ``-shm`` (in a folder SQLite cannot write) stops reading."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_CANTOPEN:
        return False
    real = path.resolve()  # SQLite keeps -wal and -shm beside the file a symlink names
    if os.access(real.parent, os.W_OK | os.X_OK) or not os.access(real, os.R_OK):
        return False
    wal = _stat(real.with_name(real.name + "-wal"))
    return wal is None or wal.st_size == 0


def init_schema(
    conn: sqlite3.Connection,
    db_path: str | Path = MEMORY,
    *,
    store_task_status: bool = True,
) -> None:
    """Create pipeloom's tables on a new file; accept a file that already has them.

    A file written by pipeloom 0.0.7 (its single-run ``task_runs``) is upgraded in place,
    its rows kept as one run (see `pipeloom.record._legacy`).

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
