"""The SQL that writes folded task changes to ``task_runs``.

Two paths apply the same rules: a per-row upsert (``executemany``) for small folds, and a
temp-table stage for big ones.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from pipeloom._fold import _ATTEMPT, _STARTED, _Fold
from pipeloom.status import TERMINAL, sql_in

__all__ = ["task_rows", "upsert_tasks"]

_KEEP_FINISHED = f"(status IN {sql_in(TERMINAL)} AND coalesce(?14, attempt) <= attempt)"
_UPSERT_TASK = f"""
INSERT INTO task_runs (run_id, task_id, task_key, name, status, progress, step, total,
                       message, started_at, finished_at, result, error, attempt,
                       stage, upstream_stage, upstream_task_id)
VALUES (?1, ?2, ?3, coalesce(?4, 'task ' || ?2), coalesce(?5, 'running'), coalesce(?6, 0.0),
        ?7, ?8, ?9, ?10, ?11, ?12, ?13, coalesce(?14, 1), ?15, ?16, ?17)
ON CONFLICT (run_id, task_id) DO UPDATE SET
    task_key = coalesce(?3, task_key),
    name = coalesce(?4, name),
    progress = CASE WHEN {_KEEP_FINISHED} THEN progress ELSE coalesce(?6, progress) END,
    step = CASE WHEN {_KEEP_FINISHED} THEN step ELSE coalesce(?7, step) END,
    total = CASE WHEN {_KEEP_FINISHED} THEN total ELSE coalesce(?8, total) END,
    message = CASE WHEN {_KEEP_FINISHED} THEN message ELSE coalesce(?9, message) END,
    started_at = coalesce(started_at, ?10),
    finished_at = CASE WHEN {_KEEP_FINISHED} THEN finished_at ELSE ?11 END,
    result = CASE WHEN {_KEEP_FINISHED} THEN result ELSE coalesce(?12, result) END,
    error = CASE WHEN {_KEEP_FINISHED} THEN error ELSE coalesce(?13, error) END,
    status = CASE WHEN {_KEEP_FINISHED} THEN status ELSE coalesce(?5, status) END,
    attempt = max(attempt, coalesce(?14, attempt)),
    stage = coalesce(?15, stage),
    upstream_stage = coalesce(?16, upstream_stage),
    upstream_task_id = coalesce(?17, upstream_task_id)
"""
# SQLite evaluates every SET expression against the old row, so the order above is safe.

# A big batch goes through a temp table instead of executemany: the sqlite3 module releases
# the GIL around every row's step, and while workers hold the GIL each re-acquisition can wait
# a whole switch interval (5 ms), so a 5,000-row executemany crawled whenever workers were busy
# (100,000 rows: 0.6 s alone, 12.7 s beside four busy threads). Multi-row INSERTs into the
# stage plus one UPDATE and one INSERT ... SELECT release it a few dozen times instead.
# The UPDATE and INSERT apply exactly the rules of _UPSERT_TASK above.
_STAGE_COLUMNS = (
    "task_id, task_key, name, status, progress, step, total, message, started_at, "
    "finished_at, result, error, attempt, stage, upstream_stage, upstream_task_id"
)
_STAGE_WIDTH = 16
_STAGE_MIN_ROWS = 16
"""Smaller folds use executemany: fewer statements, and few GIL hand-offs anyway."""
_STAGE_MAX_CHUNK = 256
"""Most rows per multi-row INSERT (256 x 16 parameters, far below SQLite's limit)."""
_CREATE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS pipeloom_batch "
    f"(task_id INTEGER PRIMARY KEY, {_STAGE_COLUMNS.removeprefix('task_id, ')})"
)
_KEEP_STAGED = f"(t.status IN {sql_in(TERMINAL)} AND coalesce(b.attempt, t.attempt) <= t.attempt)"
# Written as "rows whose task_id is IN the stage, each set from its stage row" rather than
# UPDATE ... FROM: the join form let the planner scan task_runs whole once stale statistics
# (from a tiny earlier run's PRAGMA optimize) called it tiny, which made the next big run 15x
# slower. This form always searches task_runs by (run_id, task_id) and the stage by its key.
_UPDATE_FROM_STAGE = f"""
UPDATE task_runs AS t SET
    (task_key, name, progress, step, total, message, started_at, finished_at, result, error,
     status, attempt, stage, upstream_stage, upstream_task_id) =
    (SELECT
        coalesce(b.task_key, t.task_key),
        coalesce(b.name, t.name),
        CASE WHEN {_KEEP_STAGED} THEN t.progress ELSE coalesce(b.progress, t.progress) END,
        CASE WHEN {_KEEP_STAGED} THEN t.step ELSE coalesce(b.step, t.step) END,
        CASE WHEN {_KEEP_STAGED} THEN t.total ELSE coalesce(b.total, t.total) END,
        CASE WHEN {_KEEP_STAGED} THEN t.message ELSE coalesce(b.message, t.message) END,
        coalesce(t.started_at, b.started_at),
        CASE WHEN {_KEEP_STAGED} THEN t.finished_at ELSE b.finished_at END,
        CASE WHEN {_KEEP_STAGED} THEN t.result ELSE coalesce(b.result, t.result) END,
        CASE WHEN {_KEEP_STAGED} THEN t.error ELSE coalesce(b.error, t.error) END,
        CASE WHEN {_KEEP_STAGED} THEN t.status ELSE coalesce(b.status, t.status) END,
        max(t.attempt, coalesce(b.attempt, t.attempt)),
        coalesce(b.stage, t.stage),
        coalesce(b.upstream_stage, t.upstream_stage),
        coalesce(b.upstream_task_id, t.upstream_task_id)
     FROM temp.pipeloom_batch AS b WHERE b.task_id = t.task_id)
WHERE t.run_id = ?1 AND t.task_id IN (SELECT task_id FROM temp.pipeloom_batch)
"""
_INSERT_FROM_STAGE = """
INSERT INTO task_runs (run_id, task_id, task_key, name, status, progress, step, total,
                       message, started_at, finished_at, result, error, attempt,
                       stage, upstream_stage, upstream_task_id)
SELECT ?1, b.task_id, b.task_key, coalesce(b.name, 'task ' || b.task_id),
       coalesce(b.status, 'running'), coalesce(b.progress, 0.0), b.step, b.total, b.message,
       b.started_at, b.finished_at, b.result, b.error, coalesce(b.attempt, 1),
       b.stage, b.upstream_stage, b.upstream_task_id
FROM temp.pipeloom_batch AS b
WHERE NOT EXISTS (SELECT 1 FROM task_runs AS t WHERE t.run_id = ?1 AND t.task_id = b.task_id)
ORDER BY b.rowid
"""
_CAN_STAGE = sqlite3.sqlite_version_info >= (3, 33, 0)  # UPDATE AS alias, row values


def _stage_sql(rows: int) -> str:
    values = "(" + ", ".join("?" * _STAGE_WIDTH) + ")"
    return f"INSERT INTO temp.pipeloom_batch VALUES {', '.join([values] * rows)}"


_STAGE_SQL = {1 << k: _stage_sql(1 << k) for k in range(_STAGE_MAX_CHUNK.bit_length())}


# Rows the fold saw begin (a first attempt's Started) are nearly always new to the run: they
# go in with one multi-row INSERT per chunk of up to 1,024 rows, no conflict check and no stage
# (100,000 x 1 user-like tasks in 5,000-message batches: 880 statements -> 440, and 10-15%
# less CPU in SQL). The rest (tasks begun in an earlier batch) take the upsert. A row that
# exists after all (a duplicate Started) fails its chunk, which SQLite undoes whole; that
# chunk and every later row then take the upsert, which gives the same row either way.
_NEW_MAX_CHUNK = 1024
"""Most rows per INSERT of new rows (1,024 x 16 parameters, below SQLite's 32,766)."""
_NEW_ROWS = True
"""Take the INSERT path for rows the fold saw begin (tests turn it off to compare)."""


@functools.lru_cache(maxsize=64)
def _insert_new_sql(run_id: int, rows: int) -> str:
    values = "(" + ", ".join("?" * _STAGE_WIDTH) + ")"
    return f"""
INSERT INTO task_runs (run_id, task_id, task_key, name, status, progress, step, total,
                       message, started_at, finished_at, result, error, attempt,
                       stage, upstream_stage, upstream_task_id)
SELECT {int(run_id)}, column1, column2, coalesce(column3, 'task ' || column1),
       coalesce(column4, 'running'), coalesce(column5, 0.0), column6, column7, column8,
       column9, column10, column11, column12, coalesce(column13, 1), column14, column15,
       column16
FROM (VALUES {", ".join([values] * rows)})
"""


def _insert_new(
    conn: sqlite3.Connection, run_id: int, rows: dict[int, list[Any]]
) -> dict[int, list[Any]]:
    """INSERT the rows begun in this fold; return the rows left for the upsert."""
    flat: list[Any] = []
    append, extend = flat.append, flat.extend
    rest: dict[int, list[Any]] = {}
    new: list[int] = []
    for task_id, row in rows.items():
        if row[_STARTED] is not None and row[_ATTEMPT] == 1:
            new.append(task_id)
            append(task_id)
            extend(row)
        else:
            rest[task_id] = row
    n, done, size = len(new), 0, _NEW_MAX_CHUNK
    while done < n:
        while size > n - done:
            size >>= 1
        try:
            conn.execute(
                _insert_new_sql(run_id, size),
                flat[done * _STAGE_WIDTH : (done + size) * _STAGE_WIDTH],
            )
        except sqlite3.IntegrityError:  # one of them has a row already: upsert from here on
            rest.update((task_id, rows[task_id]) for task_id in new[done:])
            return rest
        done += size
    return rest


def task_rows(run_id: int | None, fold: _Fold) -> list[tuple[Any, ...]]:
    """Parameters of `_UPSERT_TASK` for every task in the fold."""
    return [(run_id, task_id, *row) for task_id, row in fold.rows.items()]


def upsert_tasks(conn: sqlite3.Connection, run_id: int | None, fold: _Fold) -> None:
    """Write one row change per task: new rows inserted, the rest upserted.

    Upserts go by executemany when few, through the temp stage when many.
    """
    rows = fold.rows
    if _NEW_ROWS and run_id is not None and len(rows) >= _STAGE_MIN_ROWS:
        rows = _insert_new(conn, run_id, rows)
        if not rows:
            return
    if len(rows) < _STAGE_MIN_ROWS or not _CAN_STAGE:
        conn.executemany(_UPSERT_TASK, [(run_id, task_id, *row) for task_id, row in rows.items()])
        return
    conn.execute(_CREATE_STAGE)
    flat: list[Any] = []
    append, extend = flat.append, flat.extend
    for task_id, row in rows.items():
        append(task_id)
        extend(row)
    n, done, size = len(rows), 0, _STAGE_MAX_CHUNK
    while done < n:
        while size > n - done:
            size >>= 1
        conn.execute(_STAGE_SQL[size], flat[done * _STAGE_WIDTH : (done + size) * _STAGE_WIDTH])
        done += size
    conn.execute(_UPDATE_FROM_STAGE, (run_id,))
    conn.execute(_INSERT_FROM_STAGE, (run_id,))
    conn.execute("DELETE FROM temp.pipeloom_batch")
