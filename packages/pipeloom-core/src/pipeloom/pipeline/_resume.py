"""Resume: reading an earlier run back to tell which task keys it already finished.

A run that is still live (its writer holds an unexpired lease, `pipeloom.lease`) is never
resumed: its unfinished tasks would run a second time alongside it. Resume refuses it in one
line, or waits for it to end when asked (``wait_for_live``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Final

from pipeloom._text import printable, storable
from pipeloom.db import MEMORY, connect_readonly
from pipeloom.errors import PipelineError
from pipeloom.history import RunInfo, done_in_run, live_runs, one_read
from pipeloom.schema import check_schema

__all__ = ["Previous", "open_previous"]

log = logging.getLogger("pipeloom.pipeline")

WAIT_POLL_S: Final = 0.2
"""How often a resume that waits for a live run looks at the file again."""


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
            return done_in_run(result) or self.run_id
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


def open_previous(
    db: str | Path, name: str, resume: bool | int | str, wait_for_live: bool | float = False
) -> Previous | None:
    """Find the run to resume before the writer starts (and before it adds a new run).

    The run to resume, and whether it or any other run of ``name`` is still live, are read in
    one read transaction, so they agree.

    Args:
        db: the run database.
        name: the pipeline's name (``resume=True`` resumes its latest run).
        resume: False, True (the latest run of ``name``) or a run id.
        wait_for_live: False refuses to resume while a run of ``name`` (or the run asked for)
            is live; True waits until it ends (or its lease expires); a number of seconds
            waits at most that long, then refuses.

    Raises:
        PipelineError: ``resume`` names a run that does not exist, a run is still live (and
            ``wait_for_live`` is False or ran out), or the database is missing or in memory.
    """
    if resume is False or resume is None:
        if wait_for_live is not False:
            raise PipelineError(
                f"wait_for_live={wait_for_live!r} waits for a live run before a resume; "
                "pass resume=True (or a run id) with it, or drop it"
            )
        return None
    patience = _patience(wait_for_live)
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
        deadline = None if patience is None else time.monotonic() + patience
        waiting = False
        while True:
            with one_read(conn):  # the run to resume and who is live, from one moment
                found = _find(conn, path, name, resume)
                live = [] if found is None else live_runs(conn, name=name, run_id=found)
            if not live:
                break
            if patience == 0 or (deadline is not None and time.monotonic() >= deadline):
                raise PipelineError(_refusal(path, live, waited=patience))
            if not waiting:
                log.warning(
                    "resume: %s; waiting for it to end (wait_for_live)",
                    _describe(path, live),
                )
                waiting = True
            time.sleep(WAIT_POLL_S)
        if found is None:
            conn.close()
            return None
        return Previous(conn, found)
    except BaseException:
        conn.close()
        raise


def _patience(wait_for_live: bool | float) -> float | None:
    """Seconds a resume may wait for a live run: 0 none, None as long as it takes."""
    if wait_for_live is True:
        return None
    if wait_for_live is False:
        return 0.0
    if (
        isinstance(wait_for_live, int | float)
        and not isinstance(wait_for_live, bool)
        and wait_for_live >= 0
    ):
        return float(wait_for_live)
    raise PipelineError(
        f"wait_for_live={wait_for_live!r}: pass False (refuse a live run), True (wait until it "
        "ends) or a number of seconds to wait at most"
    )


def _find(conn: sqlite3.Connection, path: Path, name: str, resume: bool | int) -> int | None:
    """The id of the run to resume (None: there is none, so every task runs)."""
    if not check_schema(conn, str(path)):
        if resume is True:
            return None
        raise PipelineError(f"{path}: holds no pipeloom runs, so run {resume} cannot resume")
    if resume is True:
        latest = conn.execute(
            "SELECT id FROM pipeline_runs WHERE name = ? ORDER BY id DESC LIMIT 1",
            (storable(name),),  # the form the writer stored
        ).fetchall()
        if not latest:
            log.info("resume: no earlier run of %r in %s, so every task runs", name, path)
            return None
        return int(latest[0][0])
    row = conn.execute("SELECT name FROM pipeline_runs WHERE id = ?", (resume,)).fetchall()
    if not row:
        last = conn.execute("SELECT max(id) FROM pipeline_runs").fetchone()[0]
        known = f"runs go up to {last}" if last is not None else "it holds no runs yet"
        raise PipelineError(
            f"{path}: has no run {resume} to resume ({known}); "
            f"`pipeloom status {path}` lists them, or pass resume=True for the latest"
        )
    if row[0][0] != name:
        log.warning("resume: run %d of %s was pipeline %r, not %r", resume, path, row[0][0], name)
    return resume


def _describe(path: Path, live: list[RunInfo]) -> str:
    run = live[0]
    more = f" (and {len(live) - 1} more live run(s) of it)" if len(live) > 1 else ""
    expires = run.lease_expires_at or "?"
    return (
        f"{path}: run {run.id} ({printable(run.name)!r}) is still live{more}: pid {run.pid} on "
        f"{printable(run.host or '?')}, its lease runs to {expires[:19].replace('T', ' ')} UTC "
        "and is renewed while its writer lives"
    )


def _refusal(path: Path, live: list[RunInfo], waited: float | None) -> str:
    after = f" after waiting {waited:g} s" if waited else ""
    return (
        f"{_describe(path, live)}; resuming now would run its unfinished tasks a second time "
        f"alongside it, so resume refused{after}: let it end first, or pass wait_for_live=True "
        "(`pipeloom run ... --resume --wait`) to wait for it"
    )


def _run_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PipelineError(
            f"resume={text!r}: pass True (the latest run), a run id such as 3, or False"
        ) from None
