"""Real run databases for the observe tests, written by pipeloom itself or in the seed layout."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pipeloom import (
    MsgTaskFinished,
    MsgTaskStarted,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)

if TYPE_CHECKING:
    from datasette.app import Datasette

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


# -- A mixed history written by real pipelines: done, error, timeout, retried, cancelled ------

MIXED_ITEMS: Final = tuple(range(8))
MIXED_ERROR_ITEM: Final = 3
MIXED_TIMEOUT_ITEM: Final = 5
MIXED_RETRIED_ITEM: Final = 6
MIXED_BAD_ROW_ITEM: Final = 1
MIXED_CHATTY_ITEM: Final = 7
MIXED_LOG_LIMIT: Final = 5
"""Log records kept per task; partition 7 of run 2 logs more, the rest are counted."""
MIXED_ERROR_LINE: Final = "ValueError: partition 3 has a corrupt header"


@dataclass(frozen=True)
class LoadedRow:
    """A domain row a task emits; a negative ``rows`` is refused by the handler."""

    task_id: int
    rows: int


def _store_rows(conn: sqlite3.Connection, msgs: list[LoadedRow]) -> None:
    for msg in msgs:
        if msg.rows < 0:
            raise ValueError(f"rows={msg.rows}: a partition cannot have negative rows")
        conn.execute("INSERT INTO loaded (task_id, rows) VALUES (?, ?)", (msg.task_id, msg.rows))


def _loaded_schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS loaded (task_id INTEGER, rows INTEGER)")


_ATTEMPTS: dict[tuple[str, int], int] = {}


MIXED_CANCELLED_FROM: Final = 5


def _cancelled_run(path: Path) -> None:
    """Run 4 of ``etl``: its worker withdraws partitions 5-7 before they start (cancelled)."""

    def work(task: TaskDef, q: TaskQueue) -> None:
        if task.task_id >= MIXED_CANCELLED_FROM:
            q.put(
                MsgTaskFinished(
                    task.task_id,
                    "cancelled",
                    utc_now(),
                    message="withdrawn",
                    name=task.name,
                    key=task.key,
                )
            )
            return
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now(), key=task.key))
        _pause.wait(0.02)
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    run_pipeline(
        [TaskDef(i, f"load:{i}", key=f"load:{i}") for i in MIXED_ITEMS],
        path,
        worker_fn=work,
        workers=2,
        progress=False,
        run_name="etl",
        handle_signals=False,
    )


_pause = threading.Event()


def make_mixed_db(path: Path) -> Path:
    """Three runs of pipeline ``etl`` over 8 partitions, then a one-task run of ``report``.

    Run 1: everything done. Run 2: partition 3 raises (a traceback), 5 times out, 6 fails once
    and is retried, 1 sends a row the handler refuses (a dead letter), 7 logs more than
    ``task_log_limit``. Run 3: fail_fast stops
    at partition 2. Run 4: partitions 5-7 are cancelled. Tasks log through ``ctx.log``.
    """
    from pipeloom import Pipeline, RunOptions

    for run in (1, 2, 3):
        pipe = Pipeline(
            "etl",
            db=path,
            workers=1 if run == 3 else 2,
            handlers={LoadedRow: _store_rows},
            schema=_loaded_schema,
            fail_fast=run == 3,
            params={"run": run, "source": "s3://bucket/nightly", "partitions": len(MIXED_ITEMS)},
            options=RunOptions(task_log_limit=MIXED_LOG_LIMIT),
        )

        @pipe.task(name="load", retries=1, backoff=0.0, timeout=5.0 if run != 2 else None)
        def load(ctx: Any, item: int, run: int = run) -> dict[str, int]:
            ctx.log.info("reading partition %d", item)
            # Visible bars in the Gantt: tasks take 20-60 ms (no test reads these times).
            _pause.wait(0.02 * (1 + item % 3))
            if run == 2 and item == MIXED_ERROR_ITEM:
                ctx.log.warning("partition %d: header checksum mismatch", item)
                raise ValueError(MIXED_ERROR_LINE.removeprefix("ValueError: "))
            if run == 3 and item == 2:
                raise OSError("partition 2: connection reset by peer")
            if run == 2 and item == MIXED_RETRIED_ITEM:
                key = (str(path), item)
                _ATTEMPTS[key] = _ATTEMPTS.get(key, 0) + 1
                if _ATTEMPTS[key] == 1:
                    raise ConnectionError("partition 6: throttled, try again")
            if run == 2 and item == MIXED_BAD_ROW_ITEM:
                ctx.emit(LoadedRow(ctx.task_id, -1))
            if run == 2 and item == MIXED_CHATTY_ITEM:
                for batch in range(MIXED_LOG_LIMIT):
                    ctx.log.info("partition %d: batch %d loaded", item, batch)
            ctx.log.info("partition %d: %d rows", item, 100 * item)
            return {"rows": 100 * item}

        @pipe.task(name="slow", timeout=0.3)
        def slow(ctx: Any, item: int) -> None:
            ctx.log.info("waiting for the upstream export of %d", item)
            ctx.cancelled.wait(30)  # returns as soon as the timeout abandons the attempt

        if run == 2:
            pipe.map(load, [i for i in MIXED_ITEMS if i != MIXED_TIMEOUT_ITEM])
            pipe.map(slow, [MIXED_TIMEOUT_ITEM])
        else:
            pipe.map(load, list(MIXED_ITEMS))
        pipe.run(progress=False)
    _cancelled_run(path)
    report = Pipeline("report", db=path, workers=1)

    @report.task
    def render(ctx: Any, item: str) -> str:
        ctx.log.info("rendering %s", item)
        return item

    report.map(render, ["summary.html"])
    report.run(progress=False)
    return path


async def started(path: Path, extra: dict[str, Any] | None = None) -> Datasette:
    """A Datasette over ``path`` as ``pipeloom observe`` builds it, its startup hooks run."""
    import pipeloom_observe

    ds = pipeloom_observe.build_datasette(path, metadata_extra=extra)
    await ds.invoke_startup()
    return ds


async def rows(ds: Datasette, path: str) -> list[dict[str, Any]]:
    """The JSON rows a page answers with (it must answer 200)."""
    response = await ds.client.get(path)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result
