"""Run history for ``pipeloom status``: `pipeloom.history`'s readers, with the CLI's errors.

The readers live in core (`pipeloom.history`, read-only, no Rich); this module only turns
what they raise into one-line usage errors that say what to type next (which databases sit
beside a missing one, how to list a file's runs or a run's tasks).
"""

from __future__ import annotations

import logging
import os
import shlex
import sqlite3
from pathlib import Path

from pipeloom import history
from pipeloom.errors import SchemaOutdatedError
from pipeloom.history import (
    AttemptInfo,
    LogInfo,
    RunInfo,
    TaskChanges,
    TaskInfo,
    list_runs,
    run_tasks,
    task_attempts,
    task_logs,
)
from pipeloom_cli._errors import UsageError

__all__ = [
    "AttemptInfo",
    "LogInfo",
    "RunInfo",
    "TaskChanges",
    "TaskInfo",
    "get_run",
    "get_task",
    "list_runs",
    "open_history",
    "run_tasks",
    "stage_counts",
    "task_attempts",
    "task_logs",
]

log = logging.getLogger("pipeloom.cli")


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


def open_history(db: Path) -> sqlite3.Connection:
    """Open ``db`` read-only with `pipeloom.history.open_history`.

    Raises:
        UsageError: the file is missing, not a pipeloom database, or older.
        DatabaseError: the file is not a regular file, not SQLite, damaged or unreadable.
    """
    if not os.path.lexists(db):
        raise UsageError(f"{db}: no such database file; {_suggest_databases(db.parent)}")
    try:
        return history.open_history(db)
    except SchemaOutdatedError as exc:
        quoted = shlex.quote(str(db))
        raise UsageError(
            str(exc).replace(f"`pipeloom db upgrade {db}`", f"`pipeloom db upgrade {quoted}`")
        ) from exc
    except history.HistoryError as exc:
        raise UsageError(str(exc)) from exc


def get_run(conn: sqlite3.Connection, db: Path, run_id: int | None) -> RunInfo | None:
    """Return run ``run_id`` (the latest when None); None when the file has no runs.

    Raises:
        UsageError: ``run_id`` is not in the file.
    """
    try:
        return history.get_run(conn, run_id)
    except history.RunNotFoundError as exc:
        raise UsageError(
            f"--run {run_id}: no such run in {db}; {exc.have} "
            f"(list them with `pipeloom status {shlex.quote(str(db))} --runs`)"
        ) from exc


def get_task(conn: sqlite3.Connection, db: Path, run: RunInfo, task_id: int) -> TaskInfo:
    """Return task ``task_id`` of ``run``.

    Raises:
        UsageError: the run has no such task (the message names the run and its task ids).
    """
    try:
        return history.get_task(conn, run.id, task_id)
    except history.TaskNotFoundError as exc:
        raise UsageError(
            f"--task {task_id}: no such task in run {run.id} ({run.name}) of {db}; {exc.have} "
            f"(list them with `pipeloom status {shlex.quote(str(db))} --run {run.id}`)"
        ) from exc
