"""A run's own rows, written by the writer thread at the run's landmarks.

The writer opens a run (`insert_run`), keeps it alive (`beat`), moves its counts with each
commit (`LiveCounts`), closes it (`close_run`), and, when it stops early or finds another
writer gone, marks a run interrupted (`interrupt_run`, `mark_dead_runs`). Everything here runs
on the writer's connection inside the transaction its caller opened, except where a function
says it opens its own. Reading runs back is `pipeloom.history`'s job.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from pipeloom._control import RunEnd
from pipeloom._idset import IdSet
from pipeloom._text import storable
from pipeloom._version import __version__
from pipeloom.lease import STALE_SQL, owner_identity, provable_owner
from pipeloom.messages import utc_now
from pipeloom.record._fileid import pid_alive
from pipeloom.record._fold import AppliedBatch
from pipeloom.status import (
    ACTIVE,
    FAILED,
    TERMINAL,
    count_failed,
    count_succeeded,
    decide_run_status,
    sql_in,
)

__all__ = [
    "FAILED_SAMPLE",
    "ClosedRun",
    "LiveCounts",
    "beat",
    "close_run",
    "dead_runs",
    "insert_run",
    "interrupt_run",
    "mark_dead_runs",
    "store_counts",
]

log = logging.getLogger("pipeloom.writer")

FAILED_SAMPLE = 5
"""Failed tasks named in a run's summary (the rest are a ``pipeloom status`` away)."""


def insert_run(
    conn: sqlite3.Connection,
    *,
    name: str,
    workers: int | None,
    tasks_total: int | None,
    params: Mapping[str, Any],
    lease: float,
    request: Mapping[str, Any] | None = None,
) -> int:
    """Add this run's row, ``running``, with its owner and a first heartbeat; return its id.

    ``request`` is what the run was asked beyond its parameters (rerun patterns, a forced
    parameter change), kept as JSON so ``status`` can say why the run did what it did.
    """
    now = utc_now()
    cur = conn.execute(
        "INSERT INTO pipeline_runs (name, status, started_at, workers, tasks_total, "
        "tasks_planned, host, pid, pipeloom_version, params, heartbeat_at, lease_s, owner, "
        "request) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            name,
            now,
            workers,
            tasks_total or 0,
            tasks_total,
            socket.gethostname(),
            os.getpid(),
            __version__,
            json.dumps(dict(params), default=str),
            now,
            lease,
            owner_identity(),
            json.dumps(dict(request), default=str) if request else None,
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def beat(conn: sqlite3.Connection, run_id: int) -> None:
    """Refresh the run's heartbeat in a tiny transaction of its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE pipeline_runs SET heartbeat_at = ? WHERE id = ?", (utc_now(), run_id))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def store_counts(conn: sqlite3.Connection, run_id: int) -> dict[str, int]:
    """Count the run's rows by status and store the counts on its row; return them."""
    counts = {
        str(status): int(n)
        for status, n in conn.execute(
            "SELECT status, count(*) FROM task_runs WHERE run_id = ? GROUP BY status",
            (run_id,),
        )
    }
    # The planned total stays: a stopped run still says how much it was meant to do.
    conn.execute(
        "UPDATE pipeline_runs SET tasks_total = max(coalesce(tasks_planned, 0), ?), "
        "tasks_done = ?, tasks_skipped = ?, tasks_error = ?, tasks_cancelled = ?, "
        "tasks_finished = ? WHERE id = ?",
        (
            sum(counts.values()),
            count_succeeded(counts),
            counts.get("skipped", 0),
            count_failed(counts),
            counts.get("cancelled", 0),
            sum(n for status, n in counts.items() if status in TERMINAL),
            run_id,
        ),
    )
    return counts


def interrupt_run(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    why: str,
    task_message: str | None = None,
    messages: int | None = None,
    cause: str = "crashed",
) -> None:
    """Mark the run and its unfinished tasks ``interrupted`` (in the caller's transaction).

    A run whose process died (``cause="crashed"``) ends at its last sign of life, its
    heartbeat (every commit refreshes it), and so do its unfinished tasks: the moment another
    writer noticed would add minutes that never ran to its duration and to theirs.

    Args:
        conn: the writer's connection, inside a write transaction.
        run_id: the run.
        why: stored in ``pipeline_runs.error`` unless an error is there already.
        task_message: stored on each task row it closes (their message is kept if None).
        messages: the run's message count, when this writer knows it.
        cause: the `pipeloom.status.StopReason` recorded (``writer_failed`` when the run's
            own writer gives up: it ends now).
    """
    now = utc_now()
    if cause == "crashed":
        row = conn.execute(
            "SELECT heartbeat_at FROM pipeline_runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is not None and isinstance(row[0], str) and row[0] < now:
            now = row[0]
    # A task that started after the last heartbeat (between beats) ends where it started.
    conn.execute(
        "UPDATE task_runs SET status = 'interrupted', "
        "finished_at = max(?, coalesce(started_at, ?)), message = coalesce(?, message) "
        f"WHERE run_id = ? AND status IN {sql_in(ACTIVE)}",
        (now, now, None if task_message is None else storable(task_message), run_id),
    )
    store_counts(conn, run_id)
    conn.execute(
        "UPDATE pipeline_runs SET status = 'interrupted', finished_at = ?, "
        "error = coalesce(error, ?), messages = coalesce(?, messages), "
        "stop_reason = coalesce(stop_reason, ?) WHERE id = ?",
        (now, storable(why), messages, cause, run_id),
    )


def dead_runs(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """Find runs still ``running`` whose writer is provably gone, with the reason.

    A run with a lease is gone once its heartbeat is older than the lease, or sooner when its
    owner is this very host, PID namespace and boot and its pid no longer exists. A run
    written before leases existed keeps the old rule: its pid is gone on this host.
    """
    host = socket.gethostname()
    rows = conn.execute(
        "SELECT id, host, pid, owner, heartbeat_at, lease_s, "
        f"{STALE_SQL} FROM pipeline_runs WHERE status = 'running'"
    ).fetchall()
    dead: list[tuple[int, str]] = []
    for run_id, run_host, pid, owner, heartbeat, lease_s, expired in rows:
        gone = pid is not None and not pid_alive(int(pid))
        if heartbeat is not None and lease_s is not None:
            if expired:
                dead.append((run_id, f"no heartbeat since {heartbeat} (lease {lease_s} s)"))
            elif gone and provable_owner(owner):
                dead.append((run_id, f"its process {pid} is gone"))
        elif run_host == host and gone:
            dead.append((run_id, f"its process {pid} on {host} is gone"))
    return dead


def mark_dead_runs(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """Mark every run whose writer is gone ``interrupted``, in a transaction of its own.

    Returns:
        (run id, why) of each run marked.
    """
    if not dead_runs(conn):
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Again under the write lock: a run may have beaten or finished since the first look.
        dead = dead_runs(conn)
        for run_id, why in dead:
            interrupt_run(conn, run_id, why=f"the writer stopped: {why}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return dead


@dataclass(slots=True)
class ClosedRun:
    """What `close_run` decided and recorded."""

    status: str
    """The run's final status (`pipeloom.status.decide_run_status`)."""
    counts: dict[str, int]
    """Tasks per status, counted from the rows."""
    failed_task_ids: list[int] = field(default_factory=list)
    """Every failed task's id, in id order."""
    failed_sample: list[tuple[int, str, str]] = field(default_factory=list)
    """(task_id, name, one-line error) of the first `FAILED_SAMPLE` failed tasks."""


def close_run(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    end: RunEnd | None,
    stop_hint: str | None,
    messages: int,
) -> ClosedRun:
    """Close the run: settle tasks left active, count, decide its status, say what is missing.

    Runs in a transaction of its own. ``end`` is the engine's account of the run (None for
    a bare writer, whose owner may only hint that it was stopped).
    """
    # IMMEDIATE: this transaction reads before it writes, and a deferred one would fail at
    # once (SQLITE_BUSY, no busy wait) if another process committed in between.
    conn.execute("BEGIN IMMEDIATE")
    try:
        now = utc_now()
        # A task still active in a finished run never got its finish (its worker never sent
        # one, or it was lost): say so on its row rather than leave it looking alive.
        # "+run_id": found through the status index (few rows are active by now), not by
        # visiting every row of the run (100,000 rows: ~0.1 s).
        left = conn.execute(
            "UPDATE task_runs SET status = 'interrupted', finished_at = ?, "
            "message = 'no finish was recorded for this task (its worker never reported one)' "
            f"WHERE +run_id = ? AND status IN {sql_in(ACTIVE)}",
            (now, run_id),
        ).rowcount
        counts = store_counts(conn, run_id)
        status = decide_run_status(
            counts,
            taken=end.taken if end is not None else None,
            stop=end.stop if end is not None else stop_hint,
            source_failed=end is not None and end.error is not None,
        )
        notes = [end.note] if end is not None and end.note else []
        if left:
            notes.append(f"{left} task(s) had no finish recorded and were marked interrupted")
        missing = (end.taken if end is not None else 0) - sum(
            n for st, n in counts.items() if st in TERMINAL
        )
        if missing > 0:
            notes.append(
                f"{missing} task(s) taken from the source have no row (their messages were "
                "dead-lettered; see dead_letters)"
            )
        conn.execute(
            "UPDATE pipeline_runs SET status = ?, finished_at = ?, messages = ?, error = ?, "
            "note = ?, stop_reason = ?, tasks_taken = ?, tasks_not_started = ? WHERE id = ?",
            (
                status,
                now,
                messages,
                storable(end.error) if end is not None and end.error else None,
                "; ".join(notes) or None,
                end.cause if end is not None else None,
                end.taken if end is not None else None,
                end.not_started if end is not None else None,
                run_id,
            ),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if not count_failed(counts):  # nothing to list; each query visits every row of the run
        return ClosedRun(status, counts)
    failed = sql_in(FAILED)
    return ClosedRun(
        status,
        counts,
        [
            int(r[0])
            for r in conn.execute(
                f"SELECT task_id FROM task_runs WHERE run_id = ? AND status IN {failed} "
                "ORDER BY task_id",
                (run_id,),
            )
        ],
        [
            (int(r[0]), str(r[1]), str(r[2] or ""))
            for r in conn.execute(
                "SELECT task_id, name, coalesce(message, status) FROM task_runs WHERE run_id = ? "
                f"AND status IN {failed} ORDER BY task_id LIMIT ?",
                (run_id, FAILED_SAMPLE),
            )
        ],
    )


class LiveCounts:
    """The run's task counts as batches commit, for a live ``pipeline_runs`` row.

    Kept from what each batch applied rather than counted in SQL (a count over the run's
    rows per commit grows with the run). A task counts once, on its first terminal row (ids in
    an `IdSet`, about a bit each); if a later, higher attempt changes a finished task's
    status, the split between statuses is put right when the run closes and counts its rows.
    ``tasks_total`` is the planned total when the source has a length, else the tasks seen so
    far (finished, plus started and not finished).
    """

    __slots__ = ("active", "by_status", "finished", "new", "planned")

    def __init__(self, planned: int | None) -> None:
        """Start a run's counts at zero (``planned``: its task count, if known)."""
        self.planned = planned
        self.by_status: dict[str, int] = {}
        self.finished = IdSet()
        """Tasks counted, shared by every generation; see `adopt`."""
        self.new: list[tuple[int, str]] = []
        """(task_id, status) this generation counts that ``finished`` does not hold yet."""
        self.active: set[int] = set()

    def after(self, applied: AppliedBatch) -> LiveCounts:
        """The counts once ``applied`` commits; nothing changes until `adopt`."""
        new = LiveCounts(self.planned)
        new.finished = finished = self.finished
        by_status = new.by_status = dict(self.by_status)
        active = new.active = set(self.active)
        ended_pairs = applied.finished
        ended = {task_id for task_id, _status in ended_pairs}
        # Most tasks start and finish in one batch: set arithmetic leaves only the others to
        # look up one by one.
        for task_id in {task_id for task_id, _name in applied.started} - ended:
            if task_id not in finished:
                active.add(task_id)
        active.difference_update(ended)
        fresh = new.new = finished.fresh(ended_pairs, unique=len(ended) == len(ended_pairs))
        for status, n in Counter(map(itemgetter(1), fresh)).items():
            by_status[status] = by_status.get(status, 0) + n
        return new

    def adopt(self) -> LiveCounts:
        """Make these the counts, once their batch committed."""
        self.finished.add_all(map(itemgetter(0), self.new))
        self.new = []
        return self

    def write(self, conn: sqlite3.Connection, run_id: int) -> None:
        """Store the counts on the run's row (in the batch's transaction)."""
        counts = self.by_status
        finished = sum(n for status, n in counts.items() if status in TERMINAL)
        seen = finished + len(self.active)
        total = max(self.planned, seen) if self.planned is not None else seen
        conn.execute(
            "UPDATE pipeline_runs SET tasks_total = ?, tasks_done = ?, tasks_skipped = ?, "
            "tasks_error = ?, tasks_cancelled = ?, tasks_finished = ?, heartbeat_at = ? "
            "WHERE id = ?",
            (
                total,
                count_succeeded(counts),
                counts.get("skipped", 0),
                count_failed(counts),
                counts.get("cancelled", 0),
                finished,
                utc_now(),  # a commit is a sign of life: a crashed run ends at its last one
                run_id,
            ),
        )


# -- Reading ------------------------------------------------------------------------------
