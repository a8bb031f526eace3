"""Resume: reading an earlier run back to tell which task keys it already finished."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pipeloom._text import storable
from pipeloom.db import MEMORY, connect_readonly
from pipeloom.errors import PipelineError
from pipeloom.schema import check_schema

__all__ = ["Previous", "open_previous"]

log = logging.getLogger("pipeloom.pipeline")


class Previous:
    """Read-only view of the run being resumed: which keys it (or its own source) finished.

    Looked up one key at a time from the task generator (and, for stages, from completions
    on executor threads: one lock serialises them), so resuming a run of millions of tasks
    does not load millions of keys into memory.
    """

    def __init__(self, conn: sqlite3.Connection, run_id: int) -> None:
        self.conn = conn
        self.run_id = run_id
        self.lock = threading.Lock()

    def done_in(self, key: str) -> int | None:
        """Return the run that finished ``key`` (None when it must run again)."""
        try:
            with self.lock:
                rows = self._done_rows(key)
        except sqlite3.Error as exc:
            log.warning(
                "resume: cannot look up %r in run %d (%s); running it", key, self.run_id, exc
            )
            return None
        if not rows:
            return None
        status, result = rows[0]
        if status == "skipped":
            return _pointer(result) or self.run_id
        return self.run_id

    def result_of(self, key: str, run_id: int) -> tuple[bool, Any]:
        """Read back the result ``key`` stored in ``run_id`` (the run that did the work).

        Results of tasks that feed other tasks are stored as JSON; one stored as its
        ``repr`` (not JSON-able) or cut (too long) cannot be read back.

        Returns:
            (True, the value) when it could be read back, else (False, None).
        """
        try:
            with self.lock:
                rows = self.conn.execute(
                    "SELECT result FROM task_runs WHERE run_id = ? AND task_key = ? "
                    "AND status = 'done' LIMIT 1",
                    (run_id, storable(key)),
                ).fetchall()
        except sqlite3.Error as exc:
            log.warning("resume: cannot read the result of %r in run %d (%s)", key, run_id, exc)
            return False, None
        if not rows:
            return False, None
        text = rows[0][0]
        if text is None:
            return True, None
        try:
            return True, json.loads(text)
        except ValueError:
            return False, None

    def _done_rows(self, key: str) -> list[Any]:
        return self.conn.execute(
            "SELECT status, result FROM task_runs WHERE run_id = ? AND task_key = ? "
            "AND status IN ('done', 'skipped') LIMIT 1",
            (self.run_id, storable(key)),  # the form the writer stored
        ).fetchall()  # fetchall ends the statement, so no read stays open during the run

    def close(self) -> None:
        self.conn.close()


def _pointer(result: str | None) -> int | None:
    """The run a skipped row points to (skipped rows store ``{"done_in_run": N}``)."""
    try:
        data = json.loads(result or "")
    except ValueError:
        return None
    run = data.get("done_in_run") if isinstance(data, dict) else None
    return run if isinstance(run, int) else None


def open_previous(db: str | Path, name: str, resume: bool | int | str) -> Previous | None:
    """Find the run to resume before the writer starts (and before it adds a new run).

    Raises:
        PipelineError: ``resume`` names a run that does not exist, or the database is missing
            or in memory.
    """
    if resume is False or resume is None:
        return None
    if isinstance(resume, str):
        resume = True if resume.strip().lower() in ("", "latest", "true") else _run_number(resume)
    if str(db) == MEMORY:
        raise PipelineError(
            f"{db}: an in-memory database keeps no history to resume; use a file for db="
        )
    path = Path(db)
    if not path.is_file():
        if resume is True:
            log.info("resume: %s does not exist yet, so every task runs", path)
            return None
        raise PipelineError(
            f"{path}: no such database, so run {resume} cannot be resumed; check the db path"
        )
    # The same read-only opener as `pipeloom status`: escaped URI, query_only, read-only
    # folders; its errors name the file.
    conn = connect_readonly(path, check_same_thread=False)
    try:
        if not check_schema(conn, str(path)):
            conn.close()
            if resume is True:
                return None
            raise PipelineError(f"{path}: holds no pipeloom runs, so run {resume} cannot resume")
        if resume is True:
            found = conn.execute(
                "SELECT id FROM pipeline_runs WHERE name = ? ORDER BY id DESC LIMIT 1",
                (storable(name),),  # the form the writer stored
            ).fetchall()
            if not found:
                log.info("resume: no earlier run of %r in %s, so every task runs", name, path)
                conn.close()
                return None
            return Previous(conn, int(found[0][0]))
        found = conn.execute("SELECT name FROM pipeline_runs WHERE id = ?", (resume,)).fetchall()
        if not found:
            last = conn.execute("SELECT max(id) FROM pipeline_runs").fetchone()[0]
            known = f"runs go up to {last}" if last is not None else "it holds no runs yet"
            raise PipelineError(
                f"{path}: has no run {resume} to resume ({known}); "
                f"`pipeloom status {path}` lists them, or pass resume=True for the latest"
            )
        if found[0][0] != name:
            log.warning(
                "resume: run %d of %s was pipeline %r, not %r", resume, path, found[0][0], name
            )
        return Previous(conn, resume)
    except BaseException:
        conn.close()
        raise


def _run_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PipelineError(
            f"resume={text!r}: pass True (the latest run), a run id such as 3, or False"
        ) from None
