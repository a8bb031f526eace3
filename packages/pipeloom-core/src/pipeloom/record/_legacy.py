"""Upgrading a file written by pipeloom 0.0.7 in place, from core alone.

0.0.7 kept one ``task_runs`` table for a single run: ``id`` was the task id, with name,
status, progress, message, timestamps and result, and no run table. Re-running on the same
file overwrote it. The current layout keeps every run, so the old rows become one run of
their own (named ``imported single-run history``) and later runs are added after it.

The writer does this when it opens such a file (through `pipeloom.db.init_schema`), so a
``uv add pipeloom-core`` user never needs another package. It is written against
`pipeloom.schema`'s public functions only (`create_schema`), so it follows wherever that
module records the schema version. ``pipeloom db upgrade`` (pipeloom-cli, through
pipeloom-observe's migration set) does the same and records its migrations too.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Final

from pipeloom._version import __version__
from pipeloom.messages import utc_now
from pipeloom.schema import create_schema, inspect_schema
from pipeloom.status import ACTIVE, decide_run_status, sql_in

__all__ = ["IMPORTED_RUN_NAME", "is_original_layout", "upgrade_original_layout"]

log = logging.getLogger("pipeloom.db")

IMPORTED_RUN_NAME: Final = "imported single-run history"
"""The name of the run that a 0.0.7 file's task rows are attached to."""

_OLD: Final = "_pipeloom_task_runs_0_0_7"


def is_original_layout(conn: sqlite3.Connection) -> bool:
    """Tell whether the file holds 0.0.7's single-run ``task_runs`` and no run history.

    `pipeloom.schema.inspect_schema` decides: only the exact old shape qualifies (schema
    version 0), so an application's own table that happens to be called ``task_runs``, or an
    old table with columns someone added, is left alone (the writer then refuses the file).
    """
    state = inspect_schema(conn)
    return state.layout == "outdated" and state.version == 0


def upgrade_original_layout(conn: sqlite3.Connection, db_label: str) -> int | None:
    """Move a 0.0.7 file to the current layout in one transaction, keeping every row.

    Task rows keep their task id (0.0.7's ``id``), name, status, progress, message,
    timestamps and result; an ``error`` row's message is also copied to ``error``. A row
    still ``queued`` or ``running`` belonged to a process that is gone and becomes
    ``interrupted``. Nothing else in the file is touched.

    Args:
        conn: a connection in autocommit mode (pipeloom's `pipeloom.db.connect`).
        db_label: the path as the user typed it, for the log line.

    Returns:
        The id of the run holding the old rows; None when there was nothing to upgrade (the
        file had already been upgraded, by another process for example) or no rows.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not is_original_layout(conn):
            conn.execute("COMMIT")
            return None
        conn.execute(f"ALTER TABLE task_runs RENAME TO {_OLD}")
        # The old index moved with the table under its old name; free the name for the
        # index create_schema makes on the new table.
        conn.execute("DROP INDEX IF EXISTS idx_task_runs_status")
        create_schema(conn)
        run_id = _import_rows(conn)
        conn.execute(f"DROP TABLE {_OLD}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if run_id is None:
        log.warning("%s: upgraded from the pipeloom 0.0.7 layout (it held no task rows)", db_label)
    else:
        log.warning(
            "%s: upgraded from the pipeloom 0.0.7 layout; its task rows are kept as run %d (%r)",
            db_label,
            run_id,
            IMPORTED_RUN_NAME,
        )
    return run_id


def _import_rows(conn: sqlite3.Connection) -> int | None:
    now = utc_now()
    conn.execute(
        f"UPDATE {_OLD} SET status = 'interrupted', finished_at = COALESCE(finished_at, ?) "
        f"WHERE status IN {sql_in(ACTIVE)}",
        (now,),
    )
    counts = {
        str(status): int(n)
        for status, n in conn.execute(f"SELECT status, COUNT(*) FROM {_OLD} GROUP BY status")
    }
    if not counts:
        return None
    started, finished = conn.execute(
        f"SELECT COALESCE(MIN(started_at), MIN(finished_at), ?), MAX(finished_at) FROM {_OLD}",
        (now,),
    ).fetchone()
    cur = conn.execute(
        "INSERT INTO pipeline_runs (name, status, started_at, finished_at, tasks_total, "
        "tasks_done, tasks_error, tasks_cancelled, pipeloom_version, params) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            IMPORTED_RUN_NAME,
            decide_run_status(counts),
            started,
            finished,
            sum(counts.values()),
            counts.get("done", 0),
            counts.get("error", 0),
            counts.get("cancelled", 0),
            __version__,
            json.dumps({"imported_from": "pipeloom 0.0.7 single-run task_runs"}),
        ),
    )
    run_id = cur.lastrowid
    conn.execute(
        "INSERT INTO task_runs (run_id, task_id, name, status, progress, message, started_at, "
        "finished_at, result, error) "
        "SELECT ?, id, name, status, progress, message, started_at, finished_at, result, "
        f"CASE WHEN status = 'error' THEN message END FROM {_OLD} ORDER BY id",
        (run_id,),
    )
    return run_id
