"""Run history: the one place that writes a run's own rows, and reads a file's runs back.

Writing: the writer thread calls these at a run's landmarks: it opens a run (`insert_run`),
keeps it alive (`beat`), moves its counts with each commit (`LiveCounts`), closes it
(`close_run`), and, when it stops early or finds another writer gone, marks a run
interrupted (`interrupt_run`, `mark_dead_runs`). Everything here runs on the writer's
connection inside the transaction its caller opened, except where a function says it opens
its own.

Reading: `HistoryReader` opens a file read-only (safe beside a pipeline that is writing it,
and it never creates a file) and reads it one *document* at a time: each `snapshot` is one
read transaction, so everything read through it (a run's counts, its task rows, its stages)
is the file at one moment, however fast a live run commits. ``pipeloom status`` (each table,
JSON document and ``--watch`` frame) and resume read through it; so can a script::

    from pipeloom.history import HistoryReader
    from pipeloom.status import FAILED

    with HistoryReader("runs.db") as reader, reader.snapshot() as snap:
        run = snap.run()  # the latest run
        failed = [t for t in snap.tasks(run.id) if t.status in FAILED]

The functions underneath (`get_run`, `list_runs`, `run_tasks`, `get_task`, `find_task`,
`task_attempts`, `task_logs`, `stage_counts`, `live_runs`, `TaskChanges`) take a connection
from `open_history`; each reads in one transaction of its own unless the caller has one open.
Nothing here imports Rich; readers never write.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shlex
import socket
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar

from pipeloom._control import RunEnd
from pipeloom._idset import IdSet
from pipeloom._text import printable, storable
from pipeloom._version import __version__
from pipeloom.db import connect_readonly, describe_error
from pipeloom.errors import (
    HistoryError,
    RunNotFoundError,
    SchemaOutdatedError,
    TaskNotFoundError,
)
from pipeloom.lease import STALE_SQL, owner_identity, provable_owner, stale_sql
from pipeloom.messages import utc_now
from pipeloom.record._fileid import pid_alive
from pipeloom.record._fold import AppliedBatch
from pipeloom.schema import SCHEMA_VERSION, inspect_schema
from pipeloom.status import (
    ACTIVE,
    FAILED,
    STOP_TEXT,
    TERMINAL,
    count_failed,
    count_succeeded,
    decide_run_status,
    sql_in,
)

__all__ = [
    "FAILED_SAMPLE",
    "AttemptInfo",
    "ClosedRun",
    "DeadLetterInfo",
    "HistoryError",
    "HistoryReader",
    "LiveCounts",
    "LogInfo",
    "RunInfo",
    "RunNotFoundError",
    "Snapshot",
    "TaskChanges",
    "TaskInfo",
    "TaskNotFoundError",
    "beat",
    "close_run",
    "dead_runs",
    "find_task",
    "get_run",
    "get_task",
    "insert_run",
    "interrupt_run",
    "list_runs",
    "live_runs",
    "mark_dead_runs",
    "one_read",
    "open_history",
    "run_tasks",
    "stage_counts",
    "store_counts",
    "task_attempts",
    "task_dead_letters",
    "task_logs",
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
) -> int:
    """Add this run's row, ``running``, with its owner and a first heartbeat; return its id."""
    now = utc_now()
    cur = conn.execute(
        "INSERT INTO pipeline_runs (name, status, started_at, workers, tasks_total, "
        "tasks_planned, host, pid, pipeloom_version, params, heartbeat_at, lease_s, owner) "
        "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    began = _parse_time(start)
    if began is None:
        return None
    ended = _parse_time(end) or datetime.now(UTC)
    return max(0.0, (ended - began).total_seconds())


@dataclass
class RunInfo:
    """One ``pipeline_runs`` row, with its task counts as the task rows hold them now."""

    id: int
    name: str
    status: str
    started_at: str
    finished_at: str | None
    workers: int | None
    tasks_total: int
    counts: dict[str, int]
    """Tasks per status, counted from ``task_runs``."""
    messages: int
    params: Any
    host: str | None
    pid: int | None
    heartbeat_at: str | None = None
    """When the run's writer last said it was alive (None: written before leases)."""
    lease_s: float | None = None
    """Seconds after ``heartbeat_at`` that the run counts as stale."""
    stale: bool = False
    """Still ``running`` in the file, but its lease expired: its writer is gone or stuck."""
    elapsed: float | None = None
    """Seconds from start to finish (to now while running; to the last heartbeat if stale)."""
    finished: int = 0
    """Tasks in a terminal status."""
    throughput: float | None = None
    """Finished tasks per second."""
    stop_reason: str | None = None
    """What stopped the run early (a `pipeloom.status.StopReason`), None if nothing did."""
    not_started: int | None = 0
    """Tasks the run never started because it stopped early (None: unknown)."""
    planned: int | None = None
    """Tasks it was planned with (None: its source had no length)."""

    def __post_init__(self) -> None:
        """Derive elapsed time and throughput from the row."""
        end = self.heartbeat_at if self.stale else self.finished_at
        self.elapsed = _seconds_between(self.started_at, end)
        self.finished = sum(n for s, n in self.counts.items() if s in TERMINAL)
        self.tasks_total = max(self.tasks_total, sum(self.counts.values()))
        if self.elapsed:
            self.throughput = self.finished / self.elapsed

    @property
    def active(self) -> bool:
        """True while the run may still change (a stale run's writer is gone)."""
        return self.status in ACTIVE and not self.stale

    @property
    def failed(self) -> int:
        """Tasks in a `pipeloom.status.FAILED` status."""
        return count_failed(self.counts)

    @property
    def lease_expires_at(self) -> str | None:
        """When the lease runs out unless the writer beats again (ISO UTC; None: no lease)."""
        beat = _parse_time(self.heartbeat_at)
        if beat is None or self.lease_s is None:
            return None
        return (beat + timedelta(seconds=self.lease_s)).isoformat(timespec="seconds")

    @property
    def shown_status(self) -> str:
        """The status to show: ``stale`` for a running run whose lease expired."""
        return "stale" if self.stale else self.status

    @property
    def done(self) -> int:
        """Tasks whose work is done: ``done`` plus ``skipped`` (done by an earlier run)."""
        return count_succeeded(self.counts)

    @property
    def stopped(self) -> str | None:
        """Why the run stopped early, in words (None when it ran to the end of its source)."""
        if self.stop_reason is None:
            return STOP_TEXT["crashed"] if self.stale else None  # its lease says so already
        return STOP_TEXT.get(self.stop_reason, self.stop_reason)

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON (with ``done`` and ``stopped``)."""
        return {**asdict(self), "done": self.done, "stopped": self.stopped}


class _Timed:
    """What a row with a start and a finish answers: how long it ran, and itself as JSON.

    A mixin without fields, so each dataclass keeps its own field order.
    """

    __dataclass_fields__: ClassVar[dict[str, Any]]  # each subclass is a dataclass
    started_at: str | None
    finished_at: str | None

    @property
    def elapsed(self) -> float | None:
        """Seconds it ran (so far, while running)."""
        return _seconds_between(self.started_at, self.finished_at)

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON, with ``elapsed``."""
        return {**asdict(self), "elapsed": self.elapsed}


@dataclass
class TaskInfo(_Timed):
    """One ``task_runs`` row: a task as its run left it (or as it stands, while running)."""

    task_id: int
    name: str
    status: str
    progress: float
    step: int | None
    total: int | None
    message: str | None
    started_at: str | None
    finished_at: str | None
    attempt: int
    result: str | None
    error: str | None
    """The traceback of a failure, as text."""
    key: str | None = None
    """The task's stable key (``load:data/a.csv``); its name may be a shortened form of it."""
    stale_at: str | None = None
    """For a task left active by a stale run: the run's last sign of life, where its time
    ends (it is not running on, whatever the row says)."""

    @property
    def elapsed(self) -> float | None:
        """Seconds it ran (so far while running; up to its run's last sign of life if stale)."""
        return _seconds_between(self.started_at, self.finished_at or self.stale_at)

    @property
    def label(self) -> str:
        """What to call the task on screen: its full key when it has one, else its name."""
        return self.key or self.name


@dataclass
class AttemptInfo(_Timed):
    """One ``task_attempts`` row: an attempt that failed (the last one is the task's row)."""

    attempt: int
    status: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    discarded: int
    """Messages the attempt sent that were dropped with it (a failed attempt's output)."""

    @property
    def error_line(self) -> str:
        """The error's last non-blank line (``ValueError: bad row``), for one table cell."""
        lines = [line for line in (self.error or "").splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


@dataclass
class LogInfo:
    """One ``task_logs`` row: a record logged inside a task."""

    created_at: str
    level: str
    logger: str | None
    message: str
    attempt: int
    dropped: int
    """More than 0 on the row that counts the records dropped beyond the bound."""

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def open_history(db: str | Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open ``db`` read-only and check it holds run history this pipeloom can read.

    Safe beside a pipeline that is writing the file; never creates or changes it. Read a
    document that must agree with itself (a run and its tasks) through `HistoryReader`, or
    inside one transaction of your own.

    Args:
        db: the run database.
        check_same_thread: False lets another thread use the connection (resume's lookups).

    Raises:
        HistoryError: the file is missing, holds no pipeloom runs, or a newer schema.
        SchemaOutdatedError: it holds an older schema (``pipeloom db upgrade PATH``).
        DatabaseError: it is not a regular file, not SQLite, damaged or unreadable.
    """
    path = Path(db)
    if not os.path.lexists(path):
        raise HistoryError(f"{path}: no such database file")
    conn = connect_readonly(path, check_same_thread=check_same_thread)
    try:
        state = inspect_schema(conn)
    except sqlite3.DatabaseError as exc:  # a damaged schema page
        conn.close()
        raise describe_error(path, exc) from exc
    if state.layout == "current":
        return conn
    conn.close()
    if state.layout == "conflict":
        raise HistoryError(f"{path}: holds no pipeloom runs: {state.conflict}")
    if state.layout in ("empty", "foreign"):
        raise HistoryError(f"{path}: holds no pipeloom runs (no task_runs table); check the path")
    if state.layout == "newer":
        raise HistoryError(f"{path}: was written by a newer pipeloom; upgrade pipeloom to read it")
    raise SchemaOutdatedError(
        f"{path}: holds an older pipeloom schema (version {state.version}, current "
        f"{SCHEMA_VERSION}); run `pipeloom db upgrade {shlex.quote(str(path))}` first"
    )


@contextmanager
def one_read(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one read transaction, or in the caller's if one is open.

    A deferred ``BEGIN`` on a WAL reader: the first statement fixes the snapshot every later
    statement of the block reads, while the writer goes on committing. Without it each
    statement reads the file as it is at that statement, so a run's counts and its task rows,
    read one after the other, disagree by whatever committed in between (14,603 done in the
    counts, 14,733 in the rows of the same document). Ended at once: an open read stops
    checkpoints from recycling the WAL.
    """
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # nothing was written: it only ends the read


class Snapshot:
    """The file at one moment: what a `HistoryReader.snapshot` block reads through.

    Usable only inside its block; reading through it afterwards raises, so a document cannot
    mix rows from two moments.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        """Read through ``conn``, which the caller keeps in one read transaction."""
        self._conn: sqlite3.Connection | None = conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, inside this snapshot's transaction.

        Raises:
            HistoryError: the snapshot's block has ended.
        """
        if self._conn is None:
            raise HistoryError(
                "this snapshot's block has ended; read inside `with reader.snapshot() as snap:`"
            )
        return self._conn

    def end(self) -> None:
        """Refuse every later read (its transaction is over)."""
        self._conn = None

    def run(self, run_id: int | None = None) -> RunInfo | None:
        """`get_run`: run ``run_id``, or the latest; None when the file has no runs."""
        return get_run(self.conn, run_id)

    def runs(self, limit: int = 20) -> list[RunInfo]:
        """`list_runs`: the most recent runs, newest first."""
        return list_runs(self.conn, limit)

    def tasks(
        self, run_id: int, limit: int | None = None, *, skipped: bool = True
    ) -> list[TaskInfo]:
        """`run_tasks`: a run's tasks, the most interesting first."""
        return run_tasks(self.conn, run_id, limit, skipped=skipped)

    def task(self, run_id: int, ref: int | str) -> TaskInfo:
        """`find_task`: one task of a run, by id or key."""
        return find_task(self.conn, run_id, ref)

    def attempts(self, run_id: int, task_id: int) -> list[AttemptInfo]:
        """`task_attempts`: a task's failed attempts before its last."""
        return task_attempts(self.conn, run_id, task_id)

    def logs(self, run_id: int, task_id: int) -> list[LogInfo]:
        """`task_logs`: the log records stored for a task."""
        return task_logs(self.conn, run_id, task_id)

    def stages(self, run_id: int) -> dict[str, dict[str, int]]:
        """`stage_counts`: a run's task counts per stage and status."""
        return stage_counts(self.conn, run_id)

    def follow(self, run_id: int) -> TaskChanges:
        """Start following a run's changed rows from this moment (see `changed`)."""
        changes = TaskChanges(self.conn, run_id)
        changes.start()
        return changes

    def changed(self, changes: TaskChanges) -> list[TaskInfo]:
        """The rows of a followed run that changed between its last look and this moment."""
        if changes.conn is not self.conn:
            raise HistoryError("follow a run and read its changes through one HistoryReader")
        return changes.changed()


class HistoryReader:
    """A run database opened read-only, read one document at a time (see `snapshot`).

    Use it as a context manager, or call `close`.
    """

    def __init__(self, db: str | Path, *, check_same_thread: bool = True) -> None:
        """Open ``db`` with `open_history` (same checks, same errors).

        Raises:
            HistoryError: the file is missing, holds no pipeloom runs, or a newer schema.
            SchemaOutdatedError: it holds an older schema (``pipeloom db upgrade PATH``).
            DatabaseError: it is not a regular file, not SQLite, damaged or unreadable.
        """
        self.path = Path(db)
        self._conn = open_history(db, check_same_thread=check_same_thread)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """One document: every read in the block sees the file at one moment.

        Raises:
            HistoryError: a snapshot is already open on this reader (they do not nest).
        """
        if self._conn.in_transaction:
            raise HistoryError(f"{self.path}: a snapshot is already open; snapshots do not nest")
        with one_read(self._conn):
            snap = Snapshot(self._conn)
            try:
                yield snap
            finally:
                snap.end()

    def close(self) -> None:
        """Close the file."""
        self._conn.close()

    def __enter__(self) -> HistoryReader:
        """Return the reader itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the file."""
        self.close()


_RUN_COLUMNS = (
    "id, name, status, started_at, finished_at, workers, tasks_total, messages, params, host, "
    f"pid, heartbeat_at, lease_s, {stale_sql()}, stop_reason, tasks_not_started, tasks_planned"
)


def _run_from_row(conn: sqlite3.Connection, row: tuple[Any, ...]) -> RunInfo:
    run_id, name, status, started, finished, workers, total, messages, params, host = row[:10]
    pid, heartbeat_at, lease_s, stale, stop_reason, not_started, planned = row[10:]
    # Per status from task_runs: the row's own counts group every failure under tasks_error.
    counts = {
        str(s): int(n)
        for s, n in conn.execute(
            "SELECT status, count(*) FROM task_runs WHERE run_id = ? GROUP BY status", (run_id,)
        )
    }
    try:
        parsed = json.loads(params) if params else None
    except ValueError:
        parsed = params
    return RunInfo(
        id=int(run_id),
        name=str(name),
        status=str(status),
        started_at=str(started),
        finished_at=finished,
        workers=workers,
        tasks_total=int(total or 0),
        counts=counts,
        messages=int(messages or 0),
        params=parsed,
        host=host,
        pid=pid,
        heartbeat_at=heartbeat_at,
        lease_s=lease_s,
        stale=bool(stale),
        stop_reason=stop_reason,
        not_started=not_started if status != "running" else 0,
        planned=planned,
    )


def get_run(conn: sqlite3.Connection, run_id: int | None = None) -> RunInfo | None:
    """Return run ``run_id`` (the latest when None); None when the file has no runs.

    Raises:
        RunNotFoundError: ``run_id`` is not in the file.
    """
    with one_read(conn):  # the row and its counts from one moment
        if run_id is None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM pipeline_runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
            return None if row is None else _run_from_row(conn, row)
        row = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM pipeline_runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            first, last = conn.execute("SELECT min(id), max(id) FROM pipeline_runs").fetchone()
            raise RunNotFoundError(run_id, first, last)
        return _run_from_row(conn, row)


def list_runs(conn: sqlite3.Connection, limit: int = 20) -> list[RunInfo]:
    """Return the most recent runs, newest first."""
    with one_read(conn):
        rows = conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM pipeline_runs ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [_run_from_row(conn, row) for row in rows]


def live_runs(
    conn: sqlite3.Connection, *, name: str | None = None, run_id: int | None = None
) -> list[RunInfo]:
    """Return the runs whose writer is alive: ``running``, with a lease that has not expired.

    A run whose owner is provably this host, PID namespace and boot, and whose pid is gone,
    is not alive even within its lease (as `dead_runs` decides). A run written before leases
    existed (no heartbeat) is never alive here: no current writer leaves one. With ``name``
    and ``run_id``, only the runs of that pipeline name or with that id, oldest first.
    """
    where = f"status = 'running' AND heartbeat_at IS NOT NULL AND NOT {STALE_SQL}"
    params: list[Any] = []
    if name is not None or run_id is not None:
        where += " AND (name = ? OR id = ?)"
        params += [None if name is None else storable(name), run_id]
    with one_read(conn):
        found = conn.execute(
            f"SELECT id, pid, owner FROM pipeline_runs WHERE {where} ORDER BY id", params
        ).fetchall()
        alive = [
            int(found_id)
            for found_id, pid, owner in found
            if not (pid is not None and provable_owner(owner) and not pid_alive(int(pid)))
        ]
        runs = [get_run(conn, found_id) for found_id in alive]
    return [run for run in runs if run is not None]


_TASK_COLUMNS = (
    "task_id, name, status, progress, step, total, message, started_at, finished_at, attempt, "
    "result, error, task_key, "
    # A task still active in a stale run stopped at the run's last sign of life.
    f"CASE WHEN status IN {sql_in(ACTIVE)} THEN (SELECT r.heartbeat_at FROM pipeline_runs r "
    f"WHERE r.id = task_runs.run_id AND {stale_sql('r')}) END"
)

_INTEREST = (
    f"CASE WHEN status IN {sql_in(FAILED)} THEN 0 WHEN status IN {sql_in(ACTIVE)} THEN 1 "
    "WHEN status = 'done' THEN 2 WHEN status = 'skipped' THEN 4 ELSE 3 END"
)
"""Most interesting first: failed, running, done, did not run (cancelled, upstream failed),
then skipped (an earlier run's work, hundreds of rows in a resumed run)."""


def run_tasks(
    conn: sqlite3.Connection, run_id: int, limit: int | None = None, *, skipped: bool = True
) -> list[TaskInfo]:
    """Return a run's tasks, the most interesting first, then by task id.

    Failed tasks first, then running ones, then done ones, then those that did not run
    (cancelled, upstream failed), and ``skipped`` tasks last: in a resumed run, the dozen
    tasks that ran come before the hundreds an earlier run had done.

    Args:
        conn: from `open_history`.
        run_id: the run.
        limit: at most this many tasks.
        skipped: False leaves ``skipped`` tasks out (a table summarises them in one line).
    """
    where = "WHERE run_id = ?" + ("" if skipped else " AND status != 'skipped'")
    sql = f"SELECT {_TASK_COLUMNS} FROM task_runs {where} ORDER BY {_INTEREST}, task_id"
    params: tuple[Any, ...] = (run_id,)
    if limit is not None:
        sql += " LIMIT ?"
        params = (run_id, limit)
    return [TaskInfo(*row) for row in conn.execute(sql, params)]


def get_task(conn: sqlite3.Connection, run_id: int, task_id: int) -> TaskInfo:
    """Return task ``task_id`` of run ``run_id``.

    Raises:
        TaskNotFoundError: the run has no such task.
    """
    with one_read(conn):
        row = conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM task_runs WHERE run_id = ? AND task_id = ?",
            (run_id, task_id),
        ).fetchone()
        if row is not None:
            return TaskInfo(*row)
        first, last = conn.execute(
            "SELECT min(task_id), max(task_id) FROM task_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
    raise TaskNotFoundError(run_id, task_id, first, last)


def _as_id(ref: int | str) -> int | None:
    if isinstance(ref, int):
        return ref
    try:
        return int(ref.strip())
    except ValueError:
        return None


_CLOSE_MATCHES = 5
_NEIGHBOURS = 50
"""Keys on each side of a missing key, in sort order, offered to the close-match search."""
_CANDIDATES = 2000
"""At most this many keys share a missing key's last part (so a run of a million stays fast)."""


def find_task(conn: sqlite3.Connection, run_id: int, ref: int | str) -> TaskInfo:
    """Return a task of run ``run_id`` by id, key or name.

    Ids differ between runs; a key (``load:data/a.csv``) names the same work in every run.
    ``ref`` is tried as an id (when it is a number), then as a key, then as a name that only
    one task of the run has.

    Raises:
        TaskNotFoundError: no task matches; it names the keys closest to ``ref``.
        HistoryError: several tasks of the run have that name (it names their ids).
    """
    with one_read(conn):
        task_id = _as_id(ref)
        if task_id is not None:
            row = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM task_runs WHERE run_id = ? AND task_id = ?",
                (run_id, task_id),
            ).fetchone()
            if row is not None:
                return TaskInfo(*row)
            if isinstance(ref, int):
                return get_task(conn, run_id, task_id)  # raises, naming the run's ids
        text = storable(str(ref))  # the form the writer stored
        for column in ("task_key", "name"):
            rows = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM task_runs WHERE run_id = ? AND {column} = ? "
                "ORDER BY task_id LIMIT 6",
                (run_id, text),
            ).fetchall()
            if len(rows) == 1:
                return TaskInfo(*rows[0])
            if rows:
                ids = ", ".join(str(row[0]) for row in rows[:5]) + (
                    ", ..." if len(rows) > 5 else ""
                )
                raise HistoryError(
                    f"task {printable(text)!r} names several tasks of run {run_id} "
                    f"(ids {ids}); pass an id or a key"
                )
        first, last = conn.execute(
            "SELECT min(task_id), max(task_id) FROM task_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        matches = _close_keys(conn, run_id, text)
    raise TaskNotFoundError(run_id, str(ref), first, last, matches)


def _close_keys(conn: sqlite3.Connection, run_id: int, text: str) -> list[str]:
    """The run's keys (or names) closest to ``text``, best first, without reading them all.

    Candidates: the keys next to it in sort order (a slip near the end), and those that
    contain its last part (``a.csv`` of ``lod:data/a.csv``: a slip near the start).
    """
    label = "coalesce(task_key, name)"
    last = text.replace("\\", "/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] or text
    pool: set[str] = set()
    for sql, params in (
        (
            f"SELECT {label} FROM task_runs WHERE run_id = ? AND {label} >= ? "
            f"ORDER BY {label} LIMIT ?",
            (run_id, text, _NEIGHBOURS),
        ),
        (
            f"SELECT {label} FROM task_runs WHERE run_id = ? AND {label} < ? "
            f"ORDER BY {label} DESC LIMIT ?",
            (run_id, text, _NEIGHBOURS),
        ),
        (
            f"SELECT {label} FROM task_runs WHERE run_id = ? "
            f"AND instr(lower({label}), lower(?)) > 0 LIMIT ?",
            (run_id, last, _CANDIDATES),
        ),
    ):
        pool.update(str(row[0]) for row in conn.execute(sql, params))
    return difflib.get_close_matches(text, sorted(pool), n=_CLOSE_MATCHES, cutoff=0.6)


def task_attempts(conn: sqlite3.Connection, run_id: int, task_id: int) -> list[AttemptInfo]:
    """Return a task's recorded failed attempts (``task_attempts``), first attempt first.

    The attempt that ended the task is its ``task_runs`` row, not one of these.
    """
    rows = conn.execute(
        "SELECT attempt, status, started_at, finished_at, error, discarded FROM task_attempts "
        "WHERE run_id = ? AND task_id = ? ORDER BY attempt, id",
        (run_id, task_id),
    )
    return [AttemptInfo(*row) for row in rows]


@dataclass
class DeadLetterInfo:
    """One ``dead_letters`` row of a task: a message it sent that could not be applied."""

    id: int
    attempt: int | None
    created_at: str
    msg_type: str
    error: str
    payload: str | None

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def task_dead_letters(
    conn: sqlite3.Connection, run_id: int, task_id: int, limit: int = 200
) -> tuple[list[DeadLetterInfo], int]:
    """Return a task's first ``limit`` dead letters and how many it has in all.

    Found by their ``run_id`` and ``task_id`` columns (schema 6), never by their text.
    """
    rows = conn.execute(
        "SELECT id, attempt, created_at, msg_type, error, payload FROM dead_letters "
        "WHERE run_id = ? AND task_id = ? ORDER BY id LIMIT ?",
        (run_id, task_id, limit),
    ).fetchall()
    total = len(rows)
    if total == limit:
        (total,) = conn.execute(
            "SELECT count(*) FROM dead_letters WHERE run_id = ? AND task_id = ?",
            (run_id, task_id),
        ).fetchone()
    return [DeadLetterInfo(*row) for row in rows], int(total)


def task_logs(conn: sqlite3.Connection, run_id: int, task_id: int) -> list[LogInfo]:
    """Return the log records stored for a task, oldest first.

    A row with ``dropped`` above 0 counts the records dropped beyond the task's bound.
    """
    rows = conn.execute(
        "SELECT created_at, level, logger, message, attempt, dropped FROM task_logs "
        "WHERE run_id = ? AND task_id = ? ORDER BY created_at, id",
        (run_id, task_id),
    )
    return [LogInfo(*row) for row in rows]


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


_IDS_PER_QUERY = 500
"""Row ids per ``IN (...)`` list: far below SQLite's limit on bound parameters."""


class TaskChanges:
    """Which of a run's task rows changed since the last look, without rereading them all.

    A row in a terminal status never changes again (one terminal row per task), so each look
    reads only the rows added since (by ``task_runs.id``) and those that were still open,
    however many tasks the run holds. Read it through one `HistoryReader`
    (`Snapshot.follow`, `Snapshot.changed`), so each look agrees with the run's counts read
    in the same snapshot; called on its own, each look is one read transaction.
    """

    def __init__(self, conn: sqlite3.Connection, run_id: int) -> None:
        """Follow ``run_id``'s rows through ``conn``."""
        self.conn = conn
        self.run_id = run_id
        self.last_row = 0
        self.open: dict[int, TaskInfo] = {}

    def start(self) -> None:
        """Remember where the run stands now: its last row and its rows not yet terminal."""
        with one_read(self.conn):
            row = self.conn.execute(
                "SELECT max(id) FROM task_runs WHERE run_id = ?", (self.run_id,)
            ).fetchone()
            self.last_row = int(row[0] or 0)
            self.open = dict(
                self._read(f"WHERE run_id = ? AND status NOT IN {sql_in(TERMINAL)}", (self.run_id,))
            )

    def changed(self) -> list[TaskInfo]:
        """The rows added or changed since the last call (or `start`), by task id."""
        with one_read(self.conn):
            rows = self._read("WHERE run_id = ? AND id > ?", (self.run_id, self.last_row))
            ids = list(self.open)
            for i in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[i : i + _IDS_PER_QUERY]
                marks = ", ".join("?" * len(chunk))
                rows += self._read(f"WHERE id IN ({marks})", tuple(chunk))
        changed = []
        for row_id, task in rows:
            self.last_row = max(self.last_row, row_id)
            if self.open.get(row_id) == task:
                continue
            changed.append(task)
            if task.status in TERMINAL:
                self.open.pop(row_id, None)
            else:
                self.open[row_id] = task
        return sorted(changed, key=lambda t: t.task_id)

    def _read(self, where: str, params: tuple[Any, ...]) -> list[tuple[int, TaskInfo]]:
        sql = f"SELECT id, {_TASK_COLUMNS} FROM task_runs {where}"
        return [(int(row[0]), TaskInfo(*row[1:])) for row in self.conn.execute(sql, params)]
