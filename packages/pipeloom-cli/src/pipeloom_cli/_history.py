"""Reading run history (``pipeline_runs``, ``task_runs``) for ``pipeloom status``.

Everything here reads through a read-only connection: status must be safe to point at a
database a pipeline is writing right now, and must never create or change a file.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pipeloom.db import connect_readonly, describe_error
from pipeloom.lease import stale_sql
from pipeloom.schema import SCHEMA_VERSION, inspect_schema
from pipeloom.status import FAILED, TERMINAL, sql_in
from pipeloom_cli._errors import UsageError

__all__ = [
    "ACTIVE_STATUSES",
    "FAILED_STATUSES",
    "RunInfo",
    "TaskInfo",
    "get_run",
    "list_runs",
    "open_history",
    "run_tasks",
    "stage_counts",
]

log = logging.getLogger("pipeloom.cli")

ACTIVE_STATUSES: Final = frozenset({"running", "queued"})
FAILED_STATUSES: Final = tuple(sorted(FAILED))
"""`pipeloom.status.FAILED`: what the bar, `RunResult` and observe count as failed too."""
TERMINAL_STATUSES: Final = tuple(sorted(TERMINAL))


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    began = _parse_time(start)
    if began is None:
        return None
    ended = _parse_time(end) or datetime.now(UTC)
    return max(0.0, (ended - began).total_seconds())


@dataclass
class RunInfo:
    """One ``pipeline_runs`` row plus live task counts."""

    id: int
    name: str
    status: str
    started_at: str
    finished_at: str | None
    workers: int | None
    tasks_total: int
    counts: dict[str, int]
    messages: int
    params: Any
    host: str | None
    pid: int | None
    heartbeat_at: str | None = None
    """When the run's writer last said it was alive (None: written before leases)."""
    lease_s: float | None = None
    """Seconds after ``heartbeat_at`` that the run counts as stale."""
    stale: bool = False
    """Still ``running`` in the file, but its lease expired: its writer is gone or stuck."""
    elapsed: float | None = None
    """Seconds from start to finish (to now while running; to the last heartbeat if stale)."""
    finished: int = 0
    """Tasks in a terminal status."""
    throughput: float | None = None
    """Finished tasks per second."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Derive elapsed time and throughput from the row."""
        end = self.heartbeat_at if self.stale else self.finished_at
        self.elapsed = _seconds_between(self.started_at, end)
        self.finished = sum(n for s, n in self.counts.items() if s in TERMINAL_STATUSES)
        self.tasks_total = max(self.tasks_total, sum(self.counts.values()))
        if self.elapsed:
            self.throughput = self.finished / self.elapsed

    @property
    def active(self) -> bool:
        """True while the run may still change (a stale run's writer is gone)."""
        return self.status in ACTIVE_STATUSES and not self.stale

    @property
    def shown_status(self) -> str:
        """The status to print: ``stale`` for a running run whose lease expired."""
        return "stale" if self.stale else self.status

    def as_json(self) -> dict[str, Any]:
        """Plain data for ``--format json``."""
        data = asdict(self)
        data.pop("extra")
        return data


@dataclass
class TaskInfo:
    """One ``task_runs`` row."""

    task_id: int
    name: str
    status: str
    progress: float
    step: int | None
    total: int | None
    message: str | None
    started_at: str | None
    finished_at: str | None
    attempt: int
    result: str | None
    error: str | None

    @property
    def elapsed(self) -> float | None:
        """Seconds the task ran (so far, while running)."""
        return _seconds_between(self.started_at, self.finished_at)

    def as_json(self) -> dict[str, Any]:
        """Plain data for ``--format json``."""
        return {**asdict(self), "elapsed": self.elapsed}


def _suggest_databases(folder: Path) -> str:
    """Name the .db files beside a missing one: demo writes wal_demo.db, not pipeloom.db."""
    try:
        found = sorted(p.name for p in folder.glob("*.db") if p.is_file())
    except OSError as exc:
        log.debug("cannot list %s for suggestions: %s", folder, exc)
        found = []
    if not found:
        return (
            "pass the file a pipeline wrote, e.g. `pipeloom status ./wal_demo.db` "
            "after `pipeloom demo`"
        )
    example = shlex.quote(str(folder / found[0]))
    shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    return f"databases in {folder}: {shown} (e.g. `pipeloom status {example}`)"


def open_history(db: Path) -> sqlite3.Connection:
    """Open ``db`` read-only and check it holds pipeloom's current run history.

    Raises:
        UsageError: the file is missing, not a pipeloom database, or older.
        DatabaseError: the file is not a regular file, not SQLite, damaged or unreadable.
    """
    quoted = shlex.quote(str(db))
    if not os.path.lexists(db):
        raise UsageError(f"{db}: no such database file; {_suggest_databases(db.parent)}")
    conn = connect_readonly(db)
    try:
        state = inspect_schema(conn)
    except sqlite3.DatabaseError as exc:  # a damaged schema page
        conn.close()
        raise describe_error(db, exc) from exc
    kind, version = state.layout, state.version
    if kind == "current":
        return conn
    conn.close()
    if kind == "conflict":
        raise UsageError(f"{db}: holds no pipeloom runs: {state.conflict}")
    if kind in ("empty", "foreign"):
        raise UsageError(f"{db}: holds no pipeloom runs (no task_runs table); check the path")
    if kind == "newer":
        raise UsageError(f"{db}: was written by a newer pipeloom; upgrade pipeloom to read it")
    raise UsageError(
        f"{db}: holds an older pipeloom schema (version {version}, current "
        f"{SCHEMA_VERSION}); run `pipeloom db upgrade {quoted}` first"
    )


_RUN_COLUMNS = (
    "id, name, status, started_at, finished_at, workers, tasks_total, messages, params, host, "
    f"pid, heartbeat_at, lease_s, {stale_sql()}"
)


def _live_counts(conn: sqlite3.Connection, run_id: int) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM task_runs WHERE run_id = ? GROUP BY status", (run_id,)
    )
    return {str(status): int(n) for status, n in rows}


def _run_from_row(conn: sqlite3.Connection, row: tuple[Any, ...]) -> RunInfo:
    run_id, name, status, started, finished, workers, total, messages, params, host = row[:10]
    pid, heartbeat_at, lease_s, stale = row[10:]
    # Counted from task_runs: pipeline_runs' count columns are only written when a run ends.
    counts = _live_counts(conn, run_id)
    try:
        parsed = json.loads(params) if params else None
    except ValueError:
        parsed = params
    return RunInfo(
        id=int(run_id),
        name=str(name),
        status=str(status),
        started_at=str(started),
        finished_at=finished,
        workers=workers,
        tasks_total=int(total or 0),
        counts=counts,
        messages=int(messages or 0),
        params=parsed,
        host=host,
        pid=pid,
        heartbeat_at=heartbeat_at,
        lease_s=lease_s,
        stale=bool(stale),
    )


def get_run(conn: sqlite3.Connection, db: Path, run_id: int | None) -> RunInfo | None:
    """Return run ``run_id`` (the latest when None); None when the file has no runs.

    Raises:
        UsageError: ``run_id`` is not in the file.
    """
    if run_id is None:
        row = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM pipeline_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _run_from_row(conn, row)
    row = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM pipeline_runs WHERE id = ?", (run_id,)
    ).fetchone()
    if row is None:
        low, high = conn.execute("SELECT min(id), max(id) FROM pipeline_runs").fetchone()
        have = f"runs there are {low}..{high}" if low is not None else "it holds no runs"
        raise UsageError(
            f"--run {run_id}: no such run in {db}; {have} "
            f"(list them with `pipeloom status {shlex.quote(str(db))} --runs`)"
        )
    return _run_from_row(conn, row)


def list_runs(conn: sqlite3.Connection, limit: int) -> list[RunInfo]:
    """Return the most recent runs, newest first."""
    rows = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM pipeline_runs ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [_run_from_row(conn, row) for row in rows]


def stage_counts(conn: sqlite3.Connection, run_id: int) -> dict[str, dict[str, int]]:
    """A run's task counts per stage and status, stages in the order their first task ran.

    Empty for a run without stages (a low-level ``run_pipeline``, which records none).
    """
    per_stage: dict[str, dict[str, int]] = {}
    first: dict[str, int] = {}
    sql = (
        "SELECT stage, status, count(*), min(task_id) FROM task_runs "
        "WHERE run_id = ? AND stage IS NOT NULL GROUP BY stage, status"
    )
    for stage, status, n, low in conn.execute(sql, (run_id,)):
        name = str(stage)
        per_stage.setdefault(name, {})[str(status)] = int(n)
        first[name] = min(first.get(name, low), low)
    return {name: per_stage[name] for name in sorted(per_stage, key=first.__getitem__)}


def run_tasks(conn: sqlite3.Connection, run_id: int, limit: int | None) -> list[TaskInfo]:
    """Return a run's tasks, failures first, then running ones, then by task id."""
    order = (
        f"CASE WHEN status IN {sql_in(FAILED)} THEN 0 "
        "WHEN status IN ('running', 'queued') THEN 1 ELSE 2 END, task_id"
    )
    sql = (
        "SELECT task_id, name, status, progress, step, total, message, started_at, "
        f"finished_at, attempt, result, error FROM task_runs WHERE run_id = ? ORDER BY {order}"
    )
    params: tuple[Any, ...] = (run_id,)
    if limit is not None:
        sql += " LIMIT ?"
        params = (run_id, limit)
    return [TaskInfo(*row) for row in conn.execute(sql, params)]
