"""What ``pipeloom db info`` reports about a run database, gathered without writing to it.

Which migrations a file has is not only what ``_sqlite_migrations`` records: core creates
the current schema on a new file and stamps its version in ``pipeloom_schema``, without a
record. A migration is *in effect* when it is recorded, or when the version stamped in the
file's ``pipeloom_schema`` already holds what it brings; only the others are pending. (Files
from before that table are told apart by their columns alone, which says nothing of their
indexes, so for them the record decides.) The version each migration
brings is found by applying the set one step at a time to a scratch database in memory, so
nothing here repeats the set's names or versions.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from sqlite_utils import Database

from pipeloom.db import describe_error
from pipeloom.schema import SCHEMA_VERSION, VERSION_TABLE, Layout, SchemaState, inspect_schema
from pipeloom_observe._sqlite import read_only
from pipeloom_observe.migrations import migrations

__all__ = ["DatabaseInfo", "database_info", "migration_versions"]


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """A read-only snapshot of one run database."""

    path: Path
    """The file described."""
    size_bytes: int
    """Size of the main file."""
    wal_bytes: int | None
    """Size of the ``-wal`` file beside it, None when there is none."""
    journal_mode: str
    """SQLite's journal mode (``wal`` for files pipeloom writes)."""
    schema_version: int
    """pipeloom's schema version in the file (0: none); this pipeloom's is `SCHEMA_VERSION`."""
    layout: Layout
    """Whether the file holds the current pipeloom schema, an older one, or no pipeloom tables."""
    conflict: str | None = None
    """For a ``conflict`` layout: which table is not pipeloom's, and why."""
    applied: list[tuple[str, str]] = field(default_factory=list)
    """(name, applied_at) of recorded migrations."""
    pending: list[str] = field(default_factory=list)
    """Migrations neither recorded nor in effect: what `db upgrade` would change."""
    runs: int | None = None
    """Rows in ``pipeline_runs``; None when the table is missing."""
    tasks_by_status: dict[str, int] = field(default_factory=dict)
    """Rows in ``task_runs`` per status."""
    unrecorded: list[str] = field(default_factory=list)
    """Migrations in effect without a record: the file's schema version already holds them
    (a file core created at the current version holds them all)."""

    @property
    def in_effect(self) -> list[str]:
        """Every migration the file holds, recorded or not, in the set's order."""
        done = {name for name, _ in self.applied} | set(self.unrecorded)
        return [name for name, _ in migration_versions() if name in done]

    @property
    def tasks(self) -> int:
        """Rows in ``task_runs`` in all."""
        return sum(self.tasks_by_status.values())

    @property
    def current_version(self) -> int:
        """The schema version this pipeloom writes."""
        return SCHEMA_VERSION


def _count(conn: sqlite3.Connection, sql: str) -> list[tuple[str, int]]:
    try:
        return [(str(row[0]), int(row[1])) for row in conn.execute(sql).fetchall()]
    except sqlite3.OperationalError:
        return []


@functools.cache
def migration_versions() -> tuple[tuple[str, int], ...]:
    """Each migration of the set, in order, with the schema version a file is at after it.

    Found by applying the set one migration at a time to a database in memory and reading
    its version back (`pipeloom.schema.inspect_schema`): a few milliseconds, once.
    """
    scratch = Database(memory=True, execute_plugins=False)
    try:
        names = [m.name for m in migrations.pending(scratch)]
        versions = []
        for following in [*names[1:], None]:
            if following is None:
                migrations.apply(scratch)
            else:
                migrations.apply(scratch, stop_before=following)
            versions.append(inspect_schema(scratch.conn).version)
        return tuple(zip(names, versions, strict=True))
    finally:
        scratch.close()


def _outstanding(
    state: SchemaState, stamped: bool, recorded: set[str]
) -> tuple[list[str], list[str]]:
    """(pending, in effect without a record) for a file in ``state`` with ``recorded``."""
    if state.layout in ("conflict", "newer"):
        return [], []  # no migration may run on another program's table or a newer schema
    holds = state.version if stamped and state.layout in ("current", "outdated") else -1
    pending: list[str] = []
    unrecorded: list[str] = []
    for name, brings in migration_versions():
        if name in recorded:
            continue
        (unrecorded if brings <= holds else pending).append(name)
    return pending, unrecorded


def database_info(db_path: str | Path) -> DatabaseInfo:
    """Describe a run database; opens it read-only and never creates it.

    Raises:
        DatabaseError: the file is missing, is not a SQLite database, or is damaged.
    """
    with read_only(db_path) as (conn, path):
        try:
            # One read transaction: the version, the record and the counts from one moment.
            conn.execute("BEGIN")
            state = inspect_schema(conn)
            (journal_mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            db = Database(conn, execute_plugins=False)
            applied = [(m.name, m.applied_at) for m in migrations.applied(db)]
            stamped = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
            ).fetchone()
            pending, unrecorded = _outstanding(
                state, stamped is not None, {name for name, _ in applied}
            )
            runs_rows: list[tuple[str, int]] = []
            statuses: list[tuple[str, int]] = []
            if state.layout != "conflict":  # another program's table: its rows are not runs
                runs_rows = _count(conn, "SELECT 'runs', COUNT(*) FROM pipeline_runs")
                statuses = _count(
                    conn, "SELECT status, COUNT(*) FROM task_runs GROUP BY status ORDER BY status"
                )
        except sqlite3.DatabaseError as exc:  # damaged pages: one line naming the file
            raise describe_error(path, exc) from exc
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # nothing was written: it only ends the read
    wal = path.with_name(path.name + "-wal")
    return DatabaseInfo(
        path=path,
        size_bytes=path.stat().st_size,
        wal_bytes=wal.stat().st_size if wal.exists() else None,
        journal_mode=str(journal_mode),
        schema_version=state.version,
        layout=state.layout,
        conflict=state.conflict,
        applied=applied,
        pending=pending,
        runs=runs_rows[0][1] if runs_rows else None,
        tasks_by_status=dict(statuses),
        unrecorded=unrecorded,
    )
