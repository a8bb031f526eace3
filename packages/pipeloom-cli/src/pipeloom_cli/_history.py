"""Run history for ``pipeloom status``: `pipeloom.history`'s reader, with the CLI's errors.

The reader lives in core (`pipeloom.history.HistoryReader`, read-only, no Rich; every
document one snapshot); this module only turns what it raises into one-line usage errors
that say what to type next (which databases sit beside a missing one, how to list a file's
runs or a run's tasks, the task keys closest to a mistyped one).
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from pipeloom import history
from pipeloom._text import printable
from pipeloom.errors import SchemaOutdatedError
from pipeloom.history import (
    AttemptInfo,
    DeadLetterInfo,
    HistoryReader,
    LogInfo,
    RunInfo,
    Snapshot,
    TaskChanges,
    TaskInfo,
)
from pipeloom_cli._errors import UsageError

__all__ = [
    "AttemptInfo",
    "DeadLetterInfo",
    "HistoryReader",
    "LogInfo",
    "RunInfo",
    "Snapshot",
    "TaskChanges",
    "TaskInfo",
    "get_run",
    "get_task",
    "open_history",
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


def open_history(db: Path) -> HistoryReader:
    """Open ``db`` read-only as a `pipeloom.history.HistoryReader` (one snapshot a document).

    Raises:
        UsageError: the file is missing, not a pipeloom database, or older.
        DatabaseError: the file is not a regular file, not SQLite, damaged or unreadable.
    """
    if not os.path.lexists(db):
        raise UsageError(f"{db}: no such database file; {_suggest_databases(db.parent)}")
    try:
        return HistoryReader(db)
    except SchemaOutdatedError as exc:
        quoted = shlex.quote(str(db))
        raise UsageError(
            str(exc).replace(f"`pipeloom db upgrade {db}`", f"`pipeloom db upgrade {quoted}`")
        ) from exc
    except history.HistoryError as exc:
        raise UsageError(str(exc)) from exc


def get_run(snap: Snapshot, db: Path, run_id: int | None) -> RunInfo | None:
    """Return run ``run_id`` (the latest when None); None when the file has no runs.

    Raises:
        UsageError: ``run_id`` is not in the file.
    """
    try:
        return snap.run(run_id)
    except history.RunNotFoundError as exc:
        raise UsageError(
            f"--run {run_id}: no such run in {db}; {exc.have} "
            f"(list them with `pipeloom status {shlex.quote(str(db))} --runs`)"
        ) from exc


def get_task(snap: Snapshot, db: Path, run: RunInfo, ref: str) -> TaskInfo:
    """Return task ``ref`` of ``run``: a task id, a task key (``load:data/a.csv``) or a name.

    Raises:
        UsageError: the run has no such task (the message names the run, the keys closest to
            ``ref`` and its task ids), or several tasks share that name.
    """
    where = f"run {run.id} ({printable(run.name)}) of {db}"
    listing = f"list them with `pipeloom status {shlex.quote(str(db))} --run {run.id}`"
    try:
        return snap.task(run.id, ref)
    except history.TaskNotFoundError as exc:
        raise UsageError(
            f"--task {printable(ref)}: no such task in {where}; {exc.have} ({listing})"
        ) from exc
    except history.HistoryError as exc:
        raise UsageError(f"--task {printable(ref)}: {exc} ({listing})") from exc
