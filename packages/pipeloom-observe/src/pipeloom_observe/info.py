"""What ``pipeloom db info`` reports about a run database, gathered without writing to it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from sqlite_utils import Database

from pipeloom.db import describe_error
from pipeloom.schema import SCHEMA_VERSION, Layout, inspect_schema
from pipeloom_observe._sqlite import read_only
from pipeloom_observe.migrations import migrations

__all__ = ["DatabaseInfo", "database_info"]


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
    """Migrations not recorded yet."""
    runs: int | None = None
    """Rows in ``pipeline_runs``; None when the table is missing."""
    tasks_by_status: dict[str, int] = field(default_factory=dict)
    """Rows in ``task_runs`` per status."""

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


def database_info(db_path: str | Path) -> DatabaseInfo:
    """Describe a run database; opens it read-only and never creates it.

    Raises:
        DatabaseError: the file is missing, is not a SQLite database, or is damaged.
    """
    with read_only(db_path) as (conn, path):
        try:
            state = inspect_schema(conn)
            (journal_mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            db = Database(conn, execute_plugins=False)
            applied = [(m.name, m.applied_at) for m in migrations.applied(db)]
            # Another program's table: no migration may run, so none is pending.
            pending = [] if state.layout == "conflict" else [m.name for m in migrations.pending(db)]
            runs_rows: list[tuple[str, int]] = []
            statuses: list[tuple[str, int]] = []
            if state.layout != "conflict":  # another program's table: its rows are not runs
                runs_rows = _count(conn, "SELECT 'runs', COUNT(*) FROM pipeline_runs")
                statuses = _count(
                    conn, "SELECT status, COUNT(*) FROM task_runs GROUP BY status ORDER BY status"
                )
        except sqlite3.DatabaseError as exc:  # damaged pages: one line naming the file
            raise describe_error(path, exc) from exc
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
    )
