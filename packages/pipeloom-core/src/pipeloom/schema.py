"""The run-history schema pipeloom creates on a new file, and telling what a file holds.

The same schema is the end state of the migration set in pipeloom-observe; a test keeps the
two equal. pipeloom keeps its schema version in a table of its own, ``pipeloom_schema``, so
core can refuse an older file with a pointer to ``pipeloom db upgrade`` instead of failing on
a missing column. ``PRAGMA user_version`` belongs to the application whose file it is:
pipeloom never reads or writes it (pipeloom up to schema 2 stamped it with 2; such files are
recognised by their columns, and their ``user_version`` is left as it is).

A table named like one of pipeloom's but not created by pipeloom (an application's own
``task_runs``) is told apart by its columns and refused with a clear error: pipeloom never
writes to, rebuilds or drops a table it did not create.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from pipeloom.errors import DatabaseError, SchemaOutdatedError
from pipeloom.lease import stale_sql
from pipeloom.status import FAILED, sql_in

__all__ = [
    "PIPELOOM_TABLES",
    "RUNS_SELECT",
    "RUNS_VIEW",
    "SCHEMA_STATEMENTS",
    "SCHEMA_VERSION",
    "VERSION_TABLE",
    "Layout",
    "SchemaState",
    "check_schema",
    "conflict_error",
    "create_runs_view",
    "create_schema",
    "inspect_schema",
    "layout",
    "schema_version",
]

SCHEMA_VERSION: Final = 7
"""Bump together with a new migration in pipeloom_observe.migrations."""

VERSION_TABLE: Final = "pipeloom_schema"
"""pipeloom's own record of its schema version: one row, ``id = 1``."""

PIPELOOM_TABLES: Final = (
    "pipeline_runs",
    "task_runs",
    "task_attempts",
    "dead_letters",
    "task_logs",
    "pipeloom_state",
    VERSION_TABLE,
)

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
        note TEXT,
        heartbeat_at TEXT,
        lease_s REAL,
        owner TEXT,
        tasks_finished INTEGER NOT NULL DEFAULT 0,
        tasks_planned INTEGER,
        tasks_taken INTEGER,
        tasks_not_started INTEGER,
        tasks_skipped INTEGER NOT NULL DEFAULT 0,
        stop_reason TEXT,
        request TEXT
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
        attempt INTEGER NOT NULL DEFAULT 1,
        stage TEXT,
        upstream_stage TEXT,
        upstream_task_id INTEGER,
        fingerprint TEXT,
        cached_from_run INTEGER,
        cached_from_task INTEGER
    )
    """,
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_task_runs_run_task ON task_runs (run_id, task_id)",
    "CREATE INDEX IF NOT EXISTS idx_task_runs_status ON task_runs (status)",
    "CREATE INDEX IF NOT EXISTS idx_task_runs_key ON task_runs (task_key)",
    "CREATE INDEX IF NOT EXISTS idx_task_runs_finished ON task_runs (finished_at)",
    # Failed tasks of a run, for observe's failure pages; partial, so writes of the tasks that
    # succeed never touch it. Spelled as sql_in(FAILED) spells the set, so queries match it.
    f"CREATE INDEX IF NOT EXISTS idx_task_runs_failed ON task_runs (run_id, finished_at) "
    f"WHERE status IN {sql_in(FAILED)}",
    """
    CREATE TABLE IF NOT EXISTS task_attempts (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES pipeline_runs(id),
        task_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT,
        discarded INTEGER NOT NULL DEFAULT 0
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
        error TEXT NOT NULL,
        task_id INTEGER,
        attempt INTEGER
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_dead_letters_run ON dead_letters (run_id)",
    "CREATE INDEX IF NOT EXISTS idx_dead_letters_run_task ON dead_letters (run_id, task_id)",
    """
    CREATE TABLE IF NOT EXISTS task_logs (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES pipeline_runs(id),
        task_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        level TEXT NOT NULL,
        logger TEXT,
        message TEXT NOT NULL,
        dropped INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_task_logs_run_task ON task_logs (run_id, task_id)",
    """
    CREATE TABLE IF NOT EXISTS pipeloom_state (
        pipeline TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        run_id INTEGER,
        task_id INTEGER,
        task_key TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (pipeline, key)
    )
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    )
    """,
)
"""Idempotent DDL for the current schema's tables and indexes, in dependency order."""

RUNS_VIEW: Final = "runs"
"""The name of the view over `RUNS_SELECT`, created only where no other object has it."""

RUNS_SELECT: Final = f"""
SELECT
    id,
    name,
    status,
    started_at,
    finished_at,
    round((julianday(ended_at) - julianday(started_at)) * 86400.0, 3) AS duration_s,
    tasks_total,
    tasks_done,
    tasks_error AS tasks_failed,
    CASE WHEN tasks_total > 0
        THEN round(min(1.0, CAST(tasks_finished AS REAL) / tasks_total), 4) END AS progress,
    CASE WHEN julianday(ended_at) > julianday(started_at)
        THEN round(tasks_finished
            / ((julianday(ended_at) - julianday(started_at)) * 86400.0), 3)
        END AS tasks_per_s,
    stale,
    tasks_skipped,
    tasks_not_started,
    stop_reason,
    CASE WHEN stale = 1 THEN 'stale' ELSE status END AS shown_status,
    heartbeat_at
FROM (
    SELECT *,
        coalesce(finished_at, CASE WHEN stale = 1 THEN heartbeat_at
            ELSE strftime('%Y-%m-%dT%H:%M:%f', 'now') END) AS ended_at
    FROM (SELECT *, CASE WHEN {stale_sql()} THEN 1 ELSE 0 END AS stale FROM pipeline_runs)
)
"""
"""One row per run, read at a glance: the body of the ``runs`` view.

``duration_s`` runs to now while a run is in progress, and to its last sign of life (its
heartbeat, refreshed by every commit) once it is stale; ``tasks_total`` is the planned total
when the source has a length, else the tasks taken; ``tasks_done`` counts ``skipped`` too (a
resumed run that had nothing left to do is done); ``progress`` is the share of its tasks in a
terminal status; ``stale`` is 1 for a ``running`` run whose heartbeat is older than its lease
(``shown_status`` then says ``stale``); ``tasks_not_started`` and ``stop_reason`` say whether
and why it stopped early. pipeloom's own readers use this text, not the view, which a file
whose application already has an object named ``runs`` does not get.
"""


Layout: TypeAlias = Literal["current", "outdated", "newer", "empty", "foreign", "conflict"]
"""What a file holds: pipeloom's current schema, an older or newer one, nothing, only other
applications' tables, or (``conflict``) a table named like one of pipeloom's that pipeloom
did not create."""

_ORIGINAL_TASK_RUNS: Final = frozenset(
    {"id", "name", "status", "progress", "message", "started_at", "finished_at", "result"}
)
"""Columns of the single-run ``task_runs`` of the original pipeloom (0.0.7)."""

_V2_COLUMNS: Final[dict[str, frozenset[str]]] = {
    "pipeline_runs": frozenset(
        {"id", "name", "status", "started_at", "finished_at", "workers", "tasks_total"}
        | {"tasks_done", "tasks_error", "tasks_cancelled", "messages", "host", "pid"}
        | {"pipeloom_version", "params"}
    ),
    "task_runs": frozenset(
        {"id", "run_id", "task_id", "task_key", "name", "status", "progress", "step", "total"}
        | {"message", "started_at", "finished_at", "result", "error", "attempt"}
    ),
    "task_attempts": frozenset(
        {"id", "run_id", "task_id", "attempt", "status", "started_at", "finished_at", "error"}
    ),
    "dead_letters": frozenset({"id", "run_id", "created_at", "msg_type", "payload", "error"}),
}
"""Columns every pipeloom table had at schema 2 (the last version kept in user_version)."""


_ADDED_IN: Final[dict[str, int]] = {"task_logs": 4, "pipeloom_state": 7}
"""Tables pipeloom creates only from a schema version on: in an older file such a table is
an application's own, unless it has exactly pipeloom's columns (an interrupted upgrade)."""

_ADDED_COLUMNS: Final[dict[str, frozenset[str]]] = {
    "task_logs": frozenset(
        {"id", "run_id", "task_id", "attempt", "created_at", "level", "logger", "message"}
        | {"dropped"}
    ),
    "pipeloom_state": frozenset(
        {"pipeline", "key", "value", "run_id", "task_id", "task_key", "updated_at"}
    ),
}


def _same(conn: sqlite3.Connection, table: str) -> bool:
    return _columns(conn, table) == _ADDED_COLUMNS[table]


def _added_later(table: str, since: int) -> str:
    return (
        f"table {table} was not created by pipeloom (pipeloom creates it from schema {since} on, "
        "and this file's pipeloom schema is older)"
    )


@dataclass(frozen=True, slots=True)
class SchemaState:
    """What `inspect_schema` found in a file."""

    layout: Layout
    """The kind of file (see `Layout`)."""
    version: int
    """pipeloom's schema version in the file; 0 when pipeloom has no schema in it."""
    conflict: str | None = None
    """For ``conflict``: which table is not pipeloom's and why, in one sentence."""


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[0]) for row in conn.execute("SELECT name FROM pragma_table_info(?)", (table,))}


def _names(columns: set[str] | frozenset[str]) -> str:
    return ", ".join(sorted(columns))


def _not_ours(conn: sqlite3.Connection, table: str) -> str | None:
    """Say why ``table`` (present, named like one of pipeloom's) is not pipeloom's, or None."""
    have = _columns(conn, table)
    if table == "task_runs" and have > _ORIGINAL_TASK_RUNS and "run_id" not in have:
        return (
            f"table task_runs has the original pipeloom layout plus columns pipeloom did not "
            f"create ({_names(have - _ORIGINAL_TASK_RUNS)}); upgrading rebuilds that table, "
            "which would lose them, so it is refused (move those columns to a table of your "
            "own first)"
        )
    missing = _V2_COLUMNS[table] - have
    if not missing:
        return None
    return (
        f"table {table} was not created by pipeloom (its columns: {_names(have)}; pipeloom's "
        f"{table} also has {_names(missing)})"
    )


def _inspect(conn: sqlite3.Connection) -> SchemaState:
    tables = {
        str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if VERSION_TABLE in tables:
        version = None
        if "version" in _columns(conn, VERSION_TABLE):
            version = conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()[0]
        if not isinstance(version, int):
            return SchemaState(
                "conflict", 0, f"table {VERSION_TABLE} holds no pipeloom schema version"
            )
        if version == SCHEMA_VERSION:
            return SchemaState("current", version)
        if version > SCHEMA_VERSION:
            return SchemaState("newer", version)
        for table, since in _ADDED_IN.items():
            if version < since and table in tables and not _same(conn, table):
                return SchemaState("conflict", version, _added_later(table, since))
        return SchemaState("outdated", version)
    ours = [table for table in PIPELOOM_TABLES if table in tables]
    if not ours:
        return SchemaState("foreign" if tables else "empty", 0)
    for table, since in _ADDED_IN.items():
        if table in tables and not _same(conn, table):
            return SchemaState("conflict", 0, _added_later(table, since))
    # Written before the version table existed: schema 0 (the original single-run layout) or
    # schema 2, told apart from other applications' tables by their columns alone.
    if ours == ["task_runs"] and _columns(conn, "task_runs") == _ORIGINAL_TASK_RUNS:
        return SchemaState("outdated", 0)
    for table in ours:
        problem = _not_ours(conn, table)
        if problem is not None:
            return SchemaState("conflict", 0, problem)
    return SchemaState("outdated", 2)


def inspect_schema(conn: sqlite3.Connection) -> SchemaState:
    """Classify the file and read pipeloom's schema version; never writes.

    Everything is read in one read transaction: read separately, the version and the table
    list could straddle another process's schema-creating commit and look like an old layout.

    Raises:
        sqlite3.DatabaseError: the file is not a SQLite database.
    """
    if conn.in_transaction:
        return _inspect(conn)
    conn.execute("BEGIN")
    try:
        return _inspect(conn)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def layout(conn: sqlite3.Connection) -> Layout:
    """Classify the file, so each tool can say what it can and cannot do with it.

    Raises:
        sqlite3.DatabaseError: the file is not a SQLite database.
    """
    return inspect_schema(conn).layout


def schema_version(conn: sqlite3.Connection) -> int:
    """Return pipeloom's schema version in the file (0 when pipeloom has no schema in it)."""
    return inspect_schema(conn).version


def conflict_error(db_label: str, state: SchemaState) -> DatabaseError:
    """The error for a file where a table named like one of pipeloom's is someone else's."""
    return DatabaseError(
        f"{db_label}: {state.conflict}. pipeloom never changes a table it did not create: "
        "record runs in another file, or pass store_task_status=False to keep only your own "
        "handlers' tables in this one"
    )


def check_schema(conn: sqlite3.Connection, db_label: str) -> bool:
    """Tell whether the file already holds the current schema.

    Returns:
        True when the current schema is present, False when the file has no pipeloom tables
        yet (so `create_schema` may create them beside any other tables).

    Raises:
        SchemaOutdatedError: the file holds an older pipeloom layout.
        DatabaseError: the file was written by a newer pipeloom, or a table named like one
            of pipeloom's was created by another program.
    """
    state = inspect_schema(conn)
    if state.layout == "current":
        return True
    if state.layout == "newer":
        raise DatabaseError(
            f"{db_label}: pipeloom schema version {state.version} is newer than this pipeloom "
            f"understands ({SCHEMA_VERSION}); upgrade pipeloom to open it"
        )
    if state.layout == "conflict":
        raise conflict_error(db_label, state)
    if state.layout == "outdated":
        raise SchemaOutdatedError(
            f"{db_label}: holds an older pipeloom schema (version {state.version}, current "
            f"{SCHEMA_VERSION}); run `pipeloom db upgrade {db_label}` to upgrade it in place"
        )
    return False


def create_runs_view(conn: sqlite3.Connection) -> bool:
    """Create the ``runs`` view unless the name is taken; True when the view is there.

    The name belongs to whoever had it first: an application's own ``runs`` table or view is
    left alone (pipeloom's readers do not need the view, they use `RUNS_SELECT`).
    """
    row = conn.execute(
        "SELECT type, sql FROM sqlite_master WHERE name = ? COLLATE NOCASE", (RUNS_VIEW,)
    ).fetchone()
    if row is None:
        conn.execute(f"CREATE VIEW {RUNS_VIEW} AS {RUNS_SELECT}")
        return True
    return row[0] == "view" and "tasks_per_s" in str(row[1] or "")


def replace_runs_view(conn: sqlite3.Connection) -> None:
    """Recreate pipeloom's own ``runs`` view with `RUNS_SELECT` (never another's object)."""
    row = conn.execute(
        "SELECT type, sql FROM sqlite_master WHERE name = ? COLLATE NOCASE", (RUNS_VIEW,)
    ).fetchone()
    if row is not None and row[0] == "view" and "tasks_per_s" in str(row[1] or ""):
        conn.execute(f"DROP VIEW {RUNS_VIEW}")
    create_runs_view(conn)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every pipeloom table and index and record the schema version in its table.

    ``PRAGMA user_version`` is left alone: it belongs to the application.
    """
    for statement in SCHEMA_STATEMENTS:
        conn.execute(statement)
    create_runs_view(conn)
    conn.execute(
        f"INSERT OR REPLACE INTO {VERSION_TABLE} (id, version) VALUES (1, ?)", (SCHEMA_VERSION,)
    )
