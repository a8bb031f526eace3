"""The whole history of pipeloom's schema as one sqlite-utils migration set.

Each migration is a frozen copy of the DDL of its time, never an import of core's current
statements: a file upgraded years later must go through the same steps as one upgraded today.
Every migration is idempotent, so applying the set to a file that core created (which already
holds the current schema but has no ``_sqlite_migrations`` record) only records the names.
A test keeps the set's end state equal to ``pipeloom.schema.SCHEMA_STATEMENTS``.

`upgrade` is the way to apply them: it refuses a file where a table named like one of
pipeloom's belongs to another program (a migration would rebuild or extend it), and it leaves
``PRAGMA user_version`` as it found it (m002, frozen history, stamps it with 2; since schema 3
the version lives in ``pipeloom_schema`` and ``user_version`` is the application's).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from pipeloom.errors import DatabaseError
from pipeloom.messages import utc_now
from pipeloom.schema import SCHEMA_VERSION, conflict_error, inspect_schema
from pipeloom_observe._sqlite import read_only, require_file
from pipeloom_observe._version import __version__

__all__ = [
    "MIGRATION_SET",
    "applied",
    "migrations",
    "pending",
    "upgrade",
]

MIGRATION_SET: Final = "pipeloom"
"""Name of the set in ``_sqlite_migrations``; never rename it, old files record it."""

BUSY_TIMEOUT_S: Final = 10.0
"""How long an upgrade waits for another process's lock before giving up."""

migrations = Migrations(MIGRATION_SET)
"""pipeloom's schema history; apply with ``migrations.apply(Database(...))`` or `upgrade`."""


@migrations(name="m001_single_run_task_runs")
def m001_single_run_task_runs(db: Database) -> None:
    """Create the seed's single-run layout: one row per task, ``id`` is the task id."""
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS task_runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            progress REAL NOT NULL DEFAULT 0.0,
            message TEXT,
            started_at TEXT,
            finished_at TEXT,
            result TEXT
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_task_runs_status ON task_runs (status)")


_V2_PIPELINE_RUNS: Final = """
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
        params TEXT
    )
    """

_V2_TASK_RUNS: Final = """
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
    """

_V2_REST: Final[tuple[str, ...]] = (
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

_SYNTHETIC_RUN_NAME: Final = "imported single-run history"

# The seed kept no run, so its tasks become one synthetic run. Its status follows the tasks:
# anything still queued or running belongs to a process that is long gone.
_INSERT_SYNTHETIC_RUN: Final = """
    INSERT INTO pipeline_runs (name, status, started_at, finished_at, tasks_total, tasks_done,
                               tasks_error, tasks_cancelled, pipeloom_version, params)
    SELECT
        ?,
        CASE
            WHEN SUM(status IN ('queued', 'running')) > 0 THEN 'interrupted'
            WHEN SUM(status = 'error') > 0 THEN 'error'
            WHEN SUM(status = 'cancelled') > 0 THEN 'cancelled'
            ELSE 'done'
        END,
        COALESCE(MIN(started_at), MIN(finished_at), ?),
        MAX(finished_at),
        COUNT(*),
        SUM(status = 'done'),
        SUM(status = 'error'),
        SUM(status = 'cancelled'),
        ?,
        '{"imported_from": "single-run task_runs layout (migration m001)"}'
    FROM _task_runs_v1
    """

# The seed wrote an error's text to ``message``; copy it to ``error`` so failure queries
# find it too.
_COPY_V1_TASKS: Final = """
    INSERT INTO task_runs (run_id, task_id, name, status, progress, message, started_at,
                           finished_at, result, error)
    SELECT ?, id, name, status, progress, message, started_at, finished_at, result,
           CASE WHEN status = 'error' THEN message END
    FROM _task_runs_v1
    ORDER BY id
    """


def _columns(db: Database, table: str) -> set[str]:
    return {str(row[1]) for row in db.execute(f"PRAGMA table_info([{table}])").fetchall()}


def _add_columns(db: Database, table: str, columns: tuple[tuple[str, str], ...]) -> set[str]:
    """Add the columns ``table`` lacks (idempotent); return the names added, for backfills."""
    have = _columns(db, table)
    added = set()
    for column, kind in columns:
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            added.add(column)
    return added


@migrations(name="m002_run_history")
def m002_run_history(db: Database) -> None:
    """Add run history: ``pipeline_runs``, run ids on ``task_runs``, attempts, dead letters.

    A single-run ``task_runs`` is rebuilt in place: its ``id`` (the task id) becomes
    ``task_id`` and every row is attached to one synthetic run, statuses kept. A file that
    already has run ids (core created it) is left as it is.
    """
    db.execute(_V2_PIPELINE_RUNS)
    if "run_id" not in _columns(db, "task_runs"):
        # Renaming first moves the old indexes with the table, so their names are free
        # again once the old table is dropped.
        db.execute("ALTER TABLE task_runs RENAME TO _task_runs_v1")
        db.execute(_V2_TASK_RUNS)
        (count,) = db.execute("SELECT COUNT(*) FROM _task_runs_v1").fetchone()
        if count:
            cursor = db.execute(
                _INSERT_SYNTHETIC_RUN, [_SYNTHETIC_RUN_NAME, utc_now(), __version__]
            )
            db.execute(_COPY_V1_TASKS, [cursor.lastrowid])
        db.execute("DROP TABLE _task_runs_v1")
    for statement in _V2_REST:
        db.execute(statement)
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version < 2:
        db.execute("PRAGMA user_version = 2")


_V3_RUN_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("error", "TEXT"),
    ("note", "TEXT"),
    ("heartbeat_at", "TEXT"),
    ("lease_s", "REAL"),
    ("owner", "TEXT"),
)


@migrations(name="m003_version_table_and_liveness")
def m003_version_table_and_liveness(db: Database) -> None:
    """Keep the schema version in ``pipeloom_schema``; add the run's lease and outcome columns.

    ``pipeline_runs`` gains ``heartbeat_at``, ``lease_s`` and ``owner`` (liveness as a
    lease), ``error`` and ``note`` (why a run failed as a whole, what was not recorded);
    ``task_attempts`` gains ``discarded`` (messages of a failed attempt that were not
    applied). Columns are added, never rebuilt, so columns a user added stay with their data.
    ``PRAGMA user_version`` is not touched: a file stamped 2 by earlier pipeloom keeps its 2.
    """
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS pipeloom_schema (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )
        """
    )
    _add_columns(db, "pipeline_runs", _V3_RUN_COLUMNS)
    if "discarded" not in _columns(db, "task_attempts"):
        db.execute("ALTER TABLE task_attempts ADD COLUMN discarded INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "INSERT INTO pipeloom_schema (id, version) VALUES (1, 3) "
        "ON CONFLICT (id) DO UPDATE SET version = max(version, excluded.version)"
    )


_V4_TASK_LOGS: Final = """
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
"""

_V4_RUNS_VIEW: Final = """
CREATE VIEW runs AS
SELECT
    id,
    name,
    status,
    started_at,
    finished_at,
    round((julianday(coalesce(finished_at, 'now')) - julianday(started_at)) * 86400.0, 3)
        AS duration_s,
    tasks_total,
    tasks_done,
    tasks_error AS tasks_failed,
    CASE WHEN tasks_total > 0
        THEN round(min(1.0, CAST(tasks_finished AS REAL) / tasks_total), 4) END AS progress,
    CASE WHEN julianday(coalesce(finished_at, 'now')) > julianday(started_at)
        THEN round(tasks_finished
            / ((julianday(coalesce(finished_at, 'now')) - julianday(started_at)) * 86400.0), 3)
        END AS tasks_per_s,
    CASE WHEN status = 'running' AND heartbeat_at IS NOT NULL AND lease_s IS NOT NULL
        AND (julianday('now') - julianday(heartbeat_at)) * 86400.0 > lease_s
        THEN 1 ELSE 0 END AS stale
FROM pipeline_runs
"""


@migrations(name="m004_task_logs_and_runs_view")
def m004_task_logs_and_runs_view(db: Database) -> None:
    """Add task logs, a live count of finished tasks and the ``runs`` view.

    ``pipeline_runs.tasks_finished`` is filled from the rows of runs already recorded, so the
    view's progress is right for old runs too. The view is created only where no other object
    is named ``runs`` (an application's own table keeps the name).
    """
    if "tasks_finished" not in _columns(db, "pipeline_runs"):
        db.execute("ALTER TABLE pipeline_runs ADD COLUMN tasks_finished INTEGER NOT NULL DEFAULT 0")
        db.execute(
            "UPDATE pipeline_runs SET tasks_finished = (SELECT count(*) FROM task_runs t "
            "WHERE t.run_id = pipeline_runs.id AND t.status IN ('done', 'error', 'cancelled', "
            "'timeout', 'skipped', 'interrupted'))"
        )
    db.execute(_V4_TASK_LOGS)
    db.execute("CREATE INDEX IF NOT EXISTS idx_task_logs_run_task ON task_logs (run_id, task_id)")
    taken = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs' COLLATE NOCASE").fetchone()
    if taken is None:
        db.execute(_V4_RUNS_VIEW)
    db.execute(
        "INSERT INTO pipeloom_schema (id, version) VALUES (1, 4) "
        "ON CONFLICT (id) DO UPDATE SET version = max(version, excluded.version)"
    )


_V5_TASK_COLUMNS: Final = (
    ("stage", "TEXT"),
    ("upstream_stage", "TEXT"),
    ("upstream_task_id", "INTEGER"),
)


@migrations(name="m005_task_stages")
def m005_task_stages(db: Database) -> None:
    """Record stages: which stage a task belongs to and whose result it consumed.

    ``task_runs`` gains ``stage`` (the declarative task's name), ``upstream_stage`` and
    ``upstream_task_id`` (the task of this run whose result it consumed; for a fan-in only
    the stage, plus the first upstream task that failed when it was blocked). Three columns
    on the row, not a row per edge, so a chain of a million items costs no extra rows; older
    rows keep NULL. Added, never rebuilt.
    """
    _add_columns(db, "task_runs", _V5_TASK_COLUMNS)
    db.execute(
        "INSERT INTO pipeloom_schema (id, version) VALUES (1, 5) "
        "ON CONFLICT (id) DO UPDATE SET version = max(version, excluded.version)"
    )


_V6_RUN_COLUMNS: Final = (
    ("tasks_planned", "INTEGER"),
    ("tasks_taken", "INTEGER"),
    ("tasks_not_started", "INTEGER"),
    ("tasks_skipped", "INTEGER NOT NULL DEFAULT 0"),
    ("stop_reason", "TEXT"),
)

_V6_DEAD_LETTER_COLUMNS: Final = (("task_id", "INTEGER"), ("attempt", "INTEGER"))

_V6_RUNS_VIEW: Final = """
CREATE VIEW runs AS
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
    FROM (SELECT *, CASE WHEN (status = 'running' AND heartbeat_at IS NOT NULL
        AND lease_s IS NOT NULL AND (julianday('now') - julianday(heartbeat_at)) * 86400.0
        > lease_s) THEN 1 ELSE 0 END AS stale FROM pipeline_runs)
)
"""


@migrations(name="m006_stops_and_traceable_dead_letters")
def m006_stops_and_traceable_dead_letters(db: Database) -> None:
    """Say why a run stopped and what it left undone; tie every dead letter to its task.

    ``pipeline_runs`` gains ``stop_reason`` (sigint, sigterm, fail_fast, crashed, ...),
    ``tasks_planned``, ``tasks_taken``, ``tasks_not_started`` and ``tasks_skipped``;
    ``tasks_done`` of older runs gains their skipped tasks (done means the work is done).
    ``dead_letters`` gains ``task_id`` and ``attempt``, filled for older rows from the
    "task N:" prefix their error text carried. The ``runs`` view (when it is pipeloom's) is
    recreated with the new columns and a stale run's duration ending at its last heartbeat.
    """
    if "tasks_skipped" in _add_columns(db, "pipeline_runs", _V6_RUN_COLUMNS):
        db.execute(
            "UPDATE pipeline_runs SET tasks_skipped = (SELECT count(*) FROM task_runs t "
            "WHERE t.run_id = pipeline_runs.id AND t.status = 'skipped')"
        )
        db.execute("UPDATE pipeline_runs SET tasks_done = tasks_done + tasks_skipped")
    if "task_id" in _add_columns(db, "dead_letters", _V6_DEAD_LETTER_COLUMNS):
        db.execute(
            "UPDATE dead_letters SET task_id = CAST(substr(error, 6, "
            "instr(error, ':') - 6) AS INTEGER) WHERE error GLOB 'task [0-9]*:*'"
        )
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_dead_letters_run_task ON dead_letters (run_id, task_id)"
    )
    view = db.execute(
        "SELECT type, sql FROM sqlite_master WHERE name = 'runs' COLLATE NOCASE"
    ).fetchone()
    sql = str(view[1] or "") if view is not None else ""
    if view is not None and view[0] == "view" and "tasks_per_s" in sql and "stop_reason" not in sql:
        db.execute("DROP VIEW runs")  # pipeloom's view of schema 4 or 5
        view = None
    if view is None:
        db.execute(_V6_RUNS_VIEW)
    db.execute(
        "INSERT INTO pipeloom_schema (id, version) VALUES (1, 6) "
        "ON CONFLICT (id) DO UPDATE SET version = max(version, excluded.version)"
    )


_V7_RUN_COLUMNS: Final = (("request", "TEXT"),)

_V7_TASK_COLUMNS: Final = (
    ("fingerprint", "TEXT"),
    ("cached_from_run", "INTEGER"),
    ("cached_from_task", "INTEGER"),
)


@migrations(name="m007_state_requests_and_cache")
def m007_state_requests_and_cache(db: Database) -> None:
    """Keep a pipeline's incremental state, what each run was asked, where cached work came from.

    ``pipeloom_state`` holds one JSON value per (pipeline, key) and the run and task that
    last set it; ``pipeline_runs`` gains ``request`` (rerun patterns, ``--from``, refresh,
    a forced parameter change, as JSON); ``task_runs`` gains ``fingerprint`` (the input a
    cached task was recognised by) and ``cached_from_run``/``cached_from_task`` (where a
    cached task's result came from). Added, never rebuilt. A partial index on the failed
    tasks of each run (``idx_task_runs_failed``) serves observe's failure pages.
    """
    db.execute(
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
        """
    )
    _add_columns(db, "pipeline_runs", _V7_RUN_COLUMNS)
    _add_columns(db, "task_runs", _V7_TASK_COLUMNS)
    # Observe's failure pages find a run's failed tasks without visiting its other rows
    # (10M rows: failures across runs 772 -> 18 ms); a partial index, so no writer cost.
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_task_runs_failed ON task_runs (run_id, finished_at) "
        "WHERE status IN ('error', 'interrupted', 'timeout')"
    )
    db.execute(
        "INSERT INTO pipeloom_schema (id, version) VALUES (1, 7) "
        "ON CONFLICT (id) DO UPDATE SET version = max(version, excluded.version)"
    )


def _refuse_unusable(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a file no migration may touch: not SQLite, a newer pipeloom, another's table."""
    try:
        state = inspect_schema(conn)
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(
            f"{path}: is not a SQLite database ({exc}); pass a pipeloom run database"
        ) from exc
    if state.layout == "newer":
        raise DatabaseError(
            f"{path}: pipeloom schema version {state.version} is newer than this pipeloom "
            f"understands ({SCHEMA_VERSION}); upgrade pipeloom-observe to work with it"
        )
    if state.layout == "conflict":
        raise conflict_error(str(path), state)


def applied(db_path: str | Path) -> list[tuple[str, str]]:
    """Return ``(name, applied_at)`` of each recorded migration, oldest first; read-only.

    Raises:
        DatabaseError: the file is missing or is not a SQLite database.
    """
    with read_only(db_path) as (conn, _):
        return [(m.name, m.applied_at) for m in migrations.applied(Database(conn))]


def pending(db_path: str | Path) -> list[str]:
    """Return the names of migrations not yet recorded in the file; read-only.

    A file that core created holds the current schema but no record, so all names are
    pending; `upgrade` then records them without changing anything.

    Raises:
        DatabaseError: the file is missing or is not a SQLite database.
    """
    with read_only(db_path) as (conn, _):
        return [m.name for m in migrations.pending(Database(conn))]


def upgrade(db_path: str | Path) -> list[str]:
    """Apply every pending migration to an existing file, all in one transaction.

    Returns:
        The names of the migrations applied, in order (empty when the file was current).

    Raises:
        DatabaseError: the file is missing (it is not created), is not SQLite, was written by
            a newer pipeloom, or a migration failed (then nothing is changed).
    """
    path = require_file(db_path)
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise DatabaseError(f"{path}: cannot open database ({exc})") from exc
    try:
        _refuse_unusable(conn, path)
        db = Database(conn, execute_plugins=False)
        if not migrations.pending(db):
            return []
        try:
            # One write lock for the whole upgrade: it waits for another writer (busy
            # timeout) instead of failing on a stale read snapshot, and the file ends at
            # either the old or the new schema. Each migration nests as a savepoint.
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Again under the lock: another process may have changed the file since.
                _refuse_unusable(conn, path)
                names = [m.name for m in migrations.pending(db)]
                (found,) = conn.execute("PRAGMA user_version").fetchone()
                migrations.apply(db)
                # m002 stamps user_version 2 (frozen history); the value is the app's, so
                # it is put back as it was. Read only for that, never interpreted.
                if conn.execute("PRAGMA user_version").fetchone()[0] != found:
                    conn.execute(f"PRAGMA user_version = {int(found)}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise DatabaseError(
                f"{path}: schema upgrade failed ({exc}); nothing was changed, check that the "
                "file is writable and that no other program holds a lock on it"
            ) from exc
        return names
    finally:
        conn.close()
