"""Real run databases for the observe tests, written by pipeloom itself or in the seed layout."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any, Final

from pipeloom import MsgTaskFinished, MsgTaskStarted, TaskDef, TaskQueue, run_pipeline

FAILED_TASK: Final = 3
ERROR_LINE: Final = "ValueError: partition 3 is corrupt"
TRACEBACK: Final = f'Traceback (most recent call last):\n  File "etl.py", line 9\n{ERROR_LINE}'

SEED_DDL: Final = """
CREATE TABLE IF NOT EXISTS task_runs (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  status TEXT NOT NULL,
  progress REAL NOT NULL DEFAULT 0.0,
  message TEXT,
  started_at TEXT,
  finished_at TEXT,
  result TEXT
);
CREATE INDEX IF NOT EXISTS idx_task_runs_status ON task_runs(status);
"""
"""The single-run layout of the original pipeloom, as it wrote it."""


def _at(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"2026-01-01T10:{minutes:02d}:{secs:02d}.000+00:00"


def known_start(task_id: int) -> str:
    """Task k starts 20 k seconds after 10:00 and runs k + 1 seconds (tasks 0-2 end in 10:00)."""
    return _at(20 * task_id)


def known_finish(task_id: int) -> str:
    return _at(20 * task_id + task_id + 1)


def _scripted_worker(task: TaskDef, msg_q: TaskQueue) -> None:
    """Report fixed times so durations and minutes are known; task 3 fails."""
    msg_q.put(MsgTaskStarted(task.task_id, task.name, known_start(task.task_id)))
    if task.task_id == FAILED_TASK:
        msg_q.put(
            MsgTaskFinished(
                task.task_id,
                "error",
                known_finish(task.task_id),
                message=ERROR_LINE,
                error=TRACEBACK,
            )
        )
        return
    msg_q.put(
        MsgTaskFinished(
            task.task_id, "done", known_finish(task.task_id), result=f"rows={task.task_id}"
        )
    )


def make_run_db(path: Path) -> Path:
    """Two runs written by run_pipeline: run 1 (2 tasks, done), run 2 (6 tasks, task 3 fails)."""
    run_pipeline(
        [TaskDef(i, f"warmup-{i}") for i in range(2)],
        path,
        worker_fn=_scripted_worker,
        workers=1,
        progress=False,
        run_name="warmup",
        handle_signals=False,
    )
    run_pipeline(
        [TaskDef(i, f"partition-{i}") for i in range(6)],
        path,
        worker_fn=_scripted_worker,
        workers=2,
        progress=False,
        run_name="nightly",
        handle_signals=False,
    )
    return path


SEED_STATUSES: Final = ("done", "error", "cancelled", "running", "queued")


def make_seed_db(path: Path, rows: int = 100) -> list[tuple[Any, ...]]:
    """Write the original single-run layout with ``rows`` tasks; return the rows written."""
    written = [
        (
            task_id,
            f"task-{task_id}",
            SEED_STATUSES[task_id % len(SEED_STATUSES)],
            (task_id % 10) / 10,
            f"boom {task_id}" if task_id % len(SEED_STATUSES) == 1 else None,
            _at(task_id),
            _at(task_id + 1) if task_id % len(SEED_STATUSES) < 3 else None,
            f'{{"n": {task_id}}}' if task_id % 2 == 0 else None,
        )
        for task_id in range(1, rows + 1)
    ]
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SEED_DDL)
        conn.executemany("INSERT INTO task_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", written)
        conn.commit()
    finally:
        conn.close()
    return written


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalised_schema(conn: sqlite3.Connection) -> dict[str, Any]:
    """Describe tables, indexes and views by what SQLite reports, not by the text of their DDL.

    Skips SQLite's own tables and sqlite-utils' ``_sqlite_migrations`` record.
    """
    tables = [
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name != '_sqlite_migrations' ORDER BY name"
        )
    ]
    schema: dict[str, Any] = {"user_version": conn.execute("PRAGMA user_version").fetchone()[0]}
    for table in tables:
        columns = [tuple(row) for row in conn.execute(f"PRAGMA table_xinfo([{table}])")]
        foreign_keys = sorted(
            (row[2], row[3], row[4]) for row in conn.execute(f"PRAGMA foreign_key_list([{table}])")
        )
        indexes = {}
        for _seq, name, unique, origin, partial in conn.execute(f"PRAGMA index_list([{table}])"):
            cols = [row[2] for row in conn.execute(f"PRAGMA index_info([{name}])")]
            indexes[name] = (unique, origin, partial, cols)
        schema[table] = {"columns": columns, "foreign_keys": foreign_keys, "indexes": indexes}
    for (view,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name"):
        schema[f"view {view}"] = [
            tuple(row) for row in conn.execute(f"PRAGMA table_xinfo([{view}])")
        ]
    return schema


def schema_of(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        return normalised_schema(conn)
    finally:
        conn.close()
