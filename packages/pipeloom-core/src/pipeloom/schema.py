"""The run-history schema pipeloom creates on a new file.

The same schema is the end state of the migration set in pipeloom-observe; a test keeps the
two equal. ``PRAGMA user_version`` records which schema a file holds, so core can refuse an
older file with a pointer to ``pipeloom db upgrade`` instead of failing on a missing column.
"""

from __future__ import annotations

import sqlite3
from typing import Final, Literal, TypeAlias

from pipeloom.errors import DatabaseError, SchemaOutdatedError

__all__ = [
    "PIPELOOM_TABLES",
    "SCHEMA_STATEMENTS",
    "SCHEMA_VERSION",
    "Layout",
    "check_schema",
    "create_schema",
    "layout",
    "schema_version",
]

SCHEMA_VERSION: Final = 2
"""Bump together with a new migration in pipeloom_observe.migrations."""

PIPELOOM_TABLES: Final = ("pipeline_runs", "task_runs", "task_attempts", "dead_letters")

SCHEMA_STATEMENTS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE IF NOT EXISTS pipeline_runs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        workers INTEGER,
        tasks_total INTEGER NOT NULL DEFAULT 0,
        tasks_done INTEGER NOT NULL DEFAULT 0,
        tasks_error INTEGER NOT NULL DEFAULT 0,
        tasks_cancelled INTEGER NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0,
        host TEXT,
        pid INTEGER,
        pipeloom_version TEXT,
        params TEXT,
        error TEXT,
        note TEXT
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS task_runs (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES pipeline_runs(id),
        task_id INTEGER NOT NULL,
        task_key TEXT,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        progress REAL NOT NULL DEFAULT 0.0,
        step INTEGER,
        total INTEGER,
        message TEXT,
        started_at TEXT,
        finished_at TEXT,
        result TEXT,
        error TEXT,
        attempt INTEGER NOT NULL DEFAULT 1
    )
    """,
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_task_runs_run_task ON task_runs (run_id, task_id)",
    "CREATE INDEX IF NOT EXISTS idx_task_runs_status ON task_runs (status)",
    "CREATE INDEX IF NOT EXISTS idx_task_runs_key ON task_runs (task_key)",
    "CREATE INDEX IF NOT EXISTS idx_task_runs_finished ON task_runs (finished_at)",
    """
    CREATE TABLE IF NOT EXISTS task_attempts (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES pipeline_runs(id),
        task_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_task_attempts_run_task ON task_attempts (run_id, task_id)",
    """
    CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES pipeline_runs(id),
        created_at TEXT NOT NULL,
        msg_type TEXT NOT NULL,
        payload TEXT,
        error TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_dead_letters_run ON dead_letters (run_id)",
)
"""Idempotent DDL for the current schema, in dependency order."""


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the schema version recorded in the file (0 for a file pipeloom never stamped)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


Layout: TypeAlias = Literal["current", "outdated", "newer", "empty", "foreign"]
"""What a file holds: pipeloom's current schema, an older or newer one, nothing, or other tables."""


def _read_layout(conn: sqlite3.Connection) -> tuple[Layout, int]:
    # One statement is one read snapshot: read separately, the version and the table list
    # can straddle another process's schema-creating commit and look like an old layout.
    version, run_tables, any_tables = conn.execute(
        "SELECT (SELECT user_version FROM pragma_user_version), "
        "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' "
        "AND name IN ('task_runs', 'pipeline_runs')), "
        "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table')"
    ).fetchone()
    version = int(version)
    if run_tables:
        if version == SCHEMA_VERSION:
            return "current", version
        return ("newer" if version > SCHEMA_VERSION else "outdated"), version
    return ("foreign" if any_tables else "empty"), version


def layout(conn: sqlite3.Connection) -> Layout:
    """Classify the file, so each tool can say what it can and cannot do with it.

    Raises:
        sqlite3.DatabaseError: the file is not a SQLite database.
    """
    return _read_layout(conn)[0]


def check_schema(conn: sqlite3.Connection, db_label: str) -> bool:
    """Tell whether the file already holds the current schema.

    Returns:
        True when the current schema is present, False when the file has no pipeloom tables
        yet (so `create_schema` may create them).

    Raises:
        SchemaOutdatedError: the file holds an older pipeloom layout.
        DatabaseError: the file was written by a newer pipeloom (or another program stamped a
            higher ``user_version``, which pipeloom must not overwrite).
    """
    kind, version = _read_layout(conn)
    if kind == "current":
        return True
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{db_label}: schema version {version} is newer than this pipeloom understands "
            f"({SCHEMA_VERSION}); upgrade pipeloom to open it"
        )
    if kind == "outdated":
        raise SchemaOutdatedError(
            f"{db_label}: holds an older pipeloom schema (version {version}, current "
            f"{SCHEMA_VERSION}); run `pipeloom db upgrade {db_label}` to upgrade it in place"
        )
    return False


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every pipeloom table and index and stamp the schema version."""
    for statement in SCHEMA_STATEMENTS:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
