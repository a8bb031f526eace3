"""The SQL that writes folded task changes to ``task_runs``.

One batch's fold becomes at most a few statements, whatever its size: the sqlite3 module
releases the GIL around every statement it steps, and while workers hold the GIL each
re-acquisition can wait a whole switch interval (5 ms). A writer that ran one statement per
row, or a dozen per batch, spent most of a busy run waiting to get the GIL back (100,000 rows by
executemany: 0.6 s alone, 12.7 s beside four busy threads). So:

- rows the fold saw begin (a first attempt's Started) are nearly always new to the run: they
  go in with one multi-row INSERT per chunk, no conflict check;
- every other row (a task begun in an earlier batch, a retry, a finish without a start) goes
  through one multi-row INSERT into a temp "inbox" table whose trigger upserts each row into
  ``task_runs`` (`_upsert`, the one statement of the merge rules) and then drops it, so the
  inbox never holds a row;
- chunks are padded with empty rows up to one of a few sizes, so each size's statement is
  prepared once and a batch of any size takes one or two statements.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any

from pipeloom.record._fold import _ATTEMPT, _STARTED, _Fold
from pipeloom.status import TERMINAL, sql_in

__all__ = ["prepare", "upsert_tasks"]

_COLUMNS = (
    "task_id",
    "task_key",
    "name",
    "status",
    "progress",
    "step",
    "total",
    "message",
    "started_at",
    "finished_at",
    "result",
    "error",
    "attempt",
    "stage",
    "upstream_stage",
    "upstream_task_id",
)
"""A folded row's values, in the fold's column order after the task id."""
_WIDTH = len(_COLUMNS)
_COLUMN_LIST = ", ".join(_COLUMNS)


def _upsert(value: Callable[[str], str], run_id: str) -> str:
    """The merge rules as one upsert; ``value(column)`` is the SQL giving a change's value.

    A None value means "leave the stored value". A task whose row is terminal keeps it unless
    the change is a later attempt; a duplicate or late message never reopens a finished task.
    The row tells its latest attempt: a later attempt's start replaces the earlier start (each
    earlier attempt keeps its own in ``task_attempts``).
    SQLite evaluates every SET expression against the old row, so their order is free.
    """
    v = value
    keep = f"(status IN {sql_in(TERMINAL)} AND coalesce({v('attempt')}, attempt) <= attempt)"
    return f"""
INSERT INTO task_runs (run_id, {_COLUMN_LIST})
VALUES ({run_id}, {v("task_id")}, {v("task_key")}, coalesce({v("name")}, 'task ' || {v("task_id")}),
        coalesce({v("status")}, 'running'), coalesce({v("progress")}, 0.0), {v("step")},
        {v("total")}, {v("message")}, {v("started_at")}, {v("finished_at")}, {v("result")},
        {v("error")}, coalesce({v("attempt")}, 1), {v("stage")}, {v("upstream_stage")},
        {v("upstream_task_id")})
ON CONFLICT (run_id, task_id) DO UPDATE SET
    task_key = coalesce({v("task_key")}, task_key),
    name = coalesce({v("name")}, name),
    progress = CASE WHEN {keep} THEN progress ELSE coalesce({v("progress")}, progress) END,
    step = CASE WHEN {keep} THEN step ELSE coalesce({v("step")}, step) END,
    total = CASE WHEN {keep} THEN total ELSE coalesce({v("total")}, total) END,
    message = CASE WHEN {keep} THEN message ELSE coalesce({v("message")}, message) END,
    started_at = CASE WHEN coalesce({v("attempt")}, attempt) > attempt
        THEN coalesce({v("started_at")}, started_at)
        ELSE coalesce(started_at, {v("started_at")}) END,
    finished_at = CASE WHEN {keep} THEN finished_at ELSE {v("finished_at")} END,
    result = CASE WHEN {keep} THEN result ELSE coalesce({v("result")}, result) END,
    error = CASE WHEN {keep} THEN error ELSE coalesce({v("error")}, error) END,
    status = CASE WHEN {keep} THEN status ELSE coalesce({v("status")}, status) END,
    attempt = max(attempt, coalesce({v("attempt")}, attempt)),
    stage = coalesce({v("stage")}, stage),
    upstream_stage = coalesce({v("upstream_stage")}, upstream_stage),
    upstream_task_id = coalesce({v("upstream_task_id")}, upstream_task_id)"""


_INBOX = "pipeloom_task_inbox"
# Temp objects live with the connection, outside any transaction: a rolled-back batch cannot
# take them away. The WHEN keeps the padding rows out; the SELECT below never offers them.
_CREATE_INBOX = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_INBOX} (run_id, {_COLUMN_LIST})",
    f"""CREATE TEMP TRIGGER IF NOT EXISTS {_INBOX}_upsert BEFORE INSERT ON {_INBOX}
BEGIN
{_upsert(lambda column: f"NEW.{column}", "NEW.run_id")};
SELECT RAISE(IGNORE);
END""",
)

_NULL = float("nan")
"""What is bound where a value is None. SQLite stores a NaN as NULL, and the sqlite3 module binds
a float at once, while for None it first looks for an adapter (raising and catching two
AttributeErrors inside the module, ~3,000 instructions a value): that lookup was a fifth of
the writer's work for tiny tasks. A real value is never NaN (the fold keeps finite numbers)."""

_SIZES = (8, 64, 512, 2040)
"""Rows per statement: a chunk is padded up to the next of these (2,040 x 16 parameters stays
below SQLite's usual 32,766; `_max_rows` lowers it where a build allows fewer)."""


def prepare(conn: sqlite3.Connection) -> None:
    """Create the connection's temp inbox and its trigger (once, outside a transaction)."""
    for sql in _CREATE_INBOX:
        conn.execute(sql)


def _max_rows(conn: sqlite3.Connection) -> int:
    return min(_SIZES[-1], conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _WIDTH)


def _values(rows: int) -> str:
    one = "(" + ", ".join("?" * _WIDTH) + ")"
    return ", ".join([one] * rows)


_DEFAULTS = (
    None,
    None,
    "'task ' || column1",
    "'running'",
    "0.0",
    *[None] * 7,
    "1",
    None,
    None,
    None,
)
"""What a new row holds where its change has no value (the columns of `_upsert`'s VALUES)."""
assert len(_DEFAULTS) == _WIDTH


@functools.lru_cache(maxsize=32)
def _insert_new_sql(run_id: int, rows: int) -> str:
    # "column1 IS NOT NULL" drops the padding rows (a task id is never NULL).
    picked = ", ".join(
        f"coalesce(column{i}, {default})" if default else f"column{i}"
        for i, default in enumerate(_DEFAULTS, start=1)
    )
    return (
        f"INSERT INTO task_runs (run_id, {_COLUMN_LIST}) SELECT {int(run_id)}, {picked} "
        f"FROM (VALUES {_values(rows)}) WHERE column1 IS NOT NULL"
    )


@functools.lru_cache(maxsize=32)
def _inbox_sql(run_id: int | None, rows: int) -> str:
    run = "NULL" if run_id is None else str(int(run_id))
    return (
        f"INSERT INTO temp.{_INBOX} SELECT {run}, * FROM (VALUES {_values(rows)}) "
        "WHERE column1 IS NOT NULL"
    )


def _chunks(conn: sqlite3.Connection, flat: list[Any], n: int) -> list[tuple[int, int, list[Any]]]:
    """Split ``n`` rows of ``flat`` into (first row, statement size, parameters), padded."""
    limit = _max_rows(conn)
    out = []
    done = 0
    while done < n:
        take = min(limit, n - done)
        size = next((s for s in _SIZES if s >= take and s <= limit), limit)
        chunk = flat[done * _WIDTH : (done + take) * _WIDTH]
        params = [_NULL if value is None else value for value in chunk]
        if take < size:
            params.extend([_NULL] * ((size - take) * _WIDTH))
        out.append((done, size, params))
        done += take
    return out


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
    for first, size, params in _chunks(conn, flat, len(new)):
        try:
            conn.execute(_insert_new_sql(run_id, size), params)
        except sqlite3.IntegrityError:
            # One of them has a row already (a duplicate Started): SQLite undid this chunk
            # whole, and it and every later row take the upsert, which gives the same rows.
            rest.update((task_id, rows[task_id]) for task_id in new[first:])
            return rest
    return rest


_NEW_ROWS = True
"""Take the plain INSERT for rows the fold saw begin (tests turn it off to compare)."""


def upsert_tasks(conn: sqlite3.Connection, run_id: int | None, fold: _Fold) -> None:
    """Write one row change per task of ``fold``: new rows inserted, the rest upserted.

    ``conn`` must have been through `prepare`.
    """
    rows = fold.rows
    if _NEW_ROWS and run_id is not None and len(rows) > 1:
        rows = _insert_new(conn, run_id, rows)
        if not rows:
            return
    flat: list[Any] = []
    append, extend = flat.append, flat.extend
    for task_id, row in rows.items():
        append(task_id)
        extend(row)
    for _first, size, params in _chunks(conn, flat, len(rows)):
        conn.execute(_inbox_sql(run_id, size), params)
