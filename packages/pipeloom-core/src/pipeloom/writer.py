"""The single writer thread: the only code that ever writes to the run database.

Workers put messages on a queue; the writer drains whatever is waiting (up to a batch
size), applies it in one transaction and commits (group commit). Lifecycle messages of one
task in a batch are folded into one row change; user messages go to the handler registered
for their type, a whole batch at a time. A message that cannot be applied is kept in the
``dead_letters`` table rather than killing the writer. Listeners run after each commit, so
anything fed from them (the progress display) shows only what the database already holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pipeloom._version import __version__
from pipeloom.db import MEMORY, Synchronous, connect, init_schema, wal_checkpoint
from pipeloom.errors import DatabaseError, WriterFailedError
from pipeloom.messages import (
    SENTINEL,
    MsgRunFinished,
    MsgTaskAttempt,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    utc_now,
)

__all__ = [
    "AppliedBatch",
    "Handler",
    "Listener",
    "SQLiteWriter",
]

log = logging.getLogger("pipeloom.writer")

M = TypeVar("M")
Handler = Callable[[sqlite3.Connection, list[Any]], None]
"""``handler(conn, msgs)``: apply a batch of messages of one type, e.g. with executemany."""
SchemaFn = Callable[[sqlite3.Connection], None]

TERMINAL = ("done", "error", "cancelled", "timeout", "skipped", "interrupted")
_TERMINAL_SET = frozenset(TERMINAL)
RUN_STATUSES = ("done", "error", "cancelled", "interrupted")
DEFAULT_BATCH_SIZE = 5_000
DEFAULT_COMMIT_INTERVAL = 0.02
"""Seconds the writer may wait for more messages before committing a small batch."""
_CHECKPOINT_BUSY_MS = 250
"""How long the final WAL checkpoint waits for readers before settling for less."""
_LINGER_TICK = 0.002
"""While lingering, how often the writer looks for more messages (seconds)."""
MAX_PAYLOAD_CHARS = 100_000
"""Dead-letter payloads and error texts longer than this are cut, with a note."""

# SQLite primary result codes after which no further write can succeed.
_FATAL_CODES = frozenset({8, 10, 11, 13, 14, 26})  # READONLY IOERR CORRUPT FULL CANTOPEN NOTADB


class _QueueLike(Protocol):
    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...
    def get_nowait(self) -> Any: ...


@dataclass(slots=True)
class AppliedBatch:
    """What one commit made durable; handed to every listener."""

    started: list[tuple[int, str]] = field(default_factory=list)
    """(task_id, name) of tasks that started."""
    progress: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    """task_id -> (step, total, message): the latest progress of each task."""
    finished: list[tuple[int, str]] = field(default_factory=list)
    """(task_id, status) of tasks that reached a terminal status."""
    messages: int = 0
    """Messages in the batch (applied plus dead-lettered)."""
    dead_letters: int = 0
    """Messages of the batch that were dead-lettered."""


Listener = Callable[[AppliedBatch], None]
"""Called in the writer thread after each commit; must be quick and must not raise."""


def _is_fatal(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _FATAL_CODES


def _truncate(text: str) -> str:
    if len(text) <= MAX_PAYLOAD_CHARS:
        return text
    return text[:MAX_PAYLOAD_CHARS] + f"... [truncated, {len(text)} chars in all]"


def _payload(msg: Any) -> str:
    try:
        if dataclasses.is_dataclass(msg) and not isinstance(msg, type):
            data = {f.name: getattr(msg, f.name, None) for f in dataclasses.fields(msg)}
            return _truncate(json.dumps(data, default=repr))
    except (TypeError, ValueError, RecursionError) as exc:
        log.debug("payload of %s is not JSON (%s); storing its repr", type(msg).__name__, exc)
    try:
        return _truncate(repr(msg))
    except Exception as exc:  # a user __repr__ may raise anything
        return f"<unrepresentable {type(msg).__name__}: {exc!r}>"


def _result_text(result: Any) -> str:
    """A task's result as text: a string as is, else JSON, else its repr (never an error)."""
    if isinstance(result, str):
        return _truncate(result)
    try:
        return _truncate(json.dumps(result))
    except (TypeError, ValueError, RecursionError):
        return _payload(result)


def _progress_of(step: Any, total: Any) -> float | None:
    try:
        value = float(step) / float(total)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if not math.isfinite(value):
        return None
    return min(max(value, 0.0), 1.0)


# Column order of the folded per-task change; None means "leave the stored value".
_KEY, _NAME, _STATUS, _PROGRESS, _STEP, _TOTAL, _MESSAGE = range(7)
_STARTED, _FINISHED, _RESULT, _ERROR, _ATTEMPT = range(7, 12)

_KEEP_FINISHED = f"(status IN {TERMINAL!r} AND coalesce(?14, attempt) <= attempt)"
_UPSERT_TASK = f"""
INSERT INTO task_runs (run_id, task_id, task_key, name, status, progress, step, total,
                       message, started_at, finished_at, result, error, attempt)
VALUES (?1, ?2, ?3, coalesce(?4, 'task ' || ?2), coalesce(?5, 'running'), coalesce(?6, 0.0),
        ?7, ?8, ?9, ?10, ?11, ?12, ?13, coalesce(?14, 1))
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
    attempt = max(attempt, coalesce(?14, attempt))
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
    "finished_at, result, error, attempt"
)
_STAGE_WIDTH = 13
_STAGE_MIN_ROWS = 16
"""Smaller folds use executemany: fewer statements, and few GIL hand-offs anyway."""
_STAGE_MAX_CHUNK = 256
"""Most rows per multi-row INSERT (256 x 13 parameters, far below SQLite's limit)."""
_CREATE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS pipeloom_batch "
    f"(task_id INTEGER PRIMARY KEY, {_STAGE_COLUMNS.removeprefix('task_id, ')})"
)
_KEEP_STAGED = f"(t.status IN {TERMINAL!r} AND coalesce(b.attempt, t.attempt) <= t.attempt)"
# Written as "rows whose task_id is IN the stage, each set from its stage row" rather than
# UPDATE ... FROM: the join form let the planner scan task_runs whole once stale statistics
# (from a tiny earlier run's PRAGMA optimize) called it tiny, which made the next big run 15x
# slower. This form always searches task_runs by (run_id, task_id) and the stage by its key.
_UPDATE_FROM_STAGE = f"""
UPDATE task_runs AS t SET
    (task_key, name, progress, step, total, message, started_at, finished_at, result, error,
     status, attempt) =
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
        max(t.attempt, coalesce(b.attempt, t.attempt))
     FROM temp.pipeloom_batch AS b WHERE b.task_id = t.task_id)
WHERE t.run_id = ?1 AND t.task_id IN (SELECT task_id FROM temp.pipeloom_batch)
"""
_INSERT_FROM_STAGE = """
INSERT INTO task_runs (run_id, task_id, task_key, name, status, progress, step, total,
                       message, started_at, finished_at, result, error, attempt)
SELECT ?1, b.task_id, b.task_key, coalesce(b.name, 'task ' || b.task_id),
       coalesce(b.status, 'running'), coalesce(b.progress, 0.0), b.step, b.total, b.message,
       b.started_at, b.finished_at, b.result, b.error, coalesce(b.attempt, 1)
FROM temp.pipeloom_batch AS b
WHERE NOT EXISTS (SELECT 1 FROM task_runs AS t WHERE t.run_id = ?1 AND t.task_id = b.task_id)
ORDER BY b.rowid
"""
_CAN_STAGE = sqlite3.sqlite_version_info >= (3, 33, 0)  # UPDATE AS alias, row values


def _stage_sql(rows: int) -> str:
    values = "(" + ", ".join("?" * _STAGE_WIDTH) + ")"
    return f"INSERT INTO temp.pipeloom_batch VALUES {', '.join([values] * rows)}"


_STAGE_SQL = {1 << k: _stage_sql(1 << k) for k in range(_STAGE_MAX_CHUNK.bit_length())}


class _Fold:
    """Folds one batch's lifecycle messages into one row change per task.

    Started, Progress and Finished of one task in one batch become a single INSERT.
    Progress is the hot path (a task may report hundreds of steps per batch), so only its
    message text is applied at once; the step/total of a task's latest progress are applied
    when the task finishes or the batch ends, which gives the same row as applying every one.
    """

    __slots__ = ("applied", "pending", "rows")

    def __init__(self) -> None:
        self.rows: dict[int, list[Any]] = {}
        self.applied = AppliedBatch()
        self.pending: dict[int, MsgTaskProgress] = {}
        """task_id -> its latest progress not yet applied to the row."""

    def add(self, msg: Any) -> None:
        self.add_all((msg,))

    def add_all(self, msgs: Iterable[Any]) -> None:
        rows, pending = self.rows, self.pending
        for msg in msgs:
            cls = msg.__class__
            if cls is MsgTaskProgress:
                task_id = msg.task_id
                if type(task_id) is not int:
                    raise TypeError(f"task_id must be an int, got {type(task_id).__name__}")
                row = rows.get(task_id)
                if row is None:
                    row = rows[task_id] = [None] * 12
                elif row[_STATUS] in _TERMINAL_SET:
                    continue
                pending[task_id] = msg
                if msg.message:
                    text = _truncate(str(msg.message))
                    if text:
                        row[_MESSAGE] = text
            elif cls is MsgTaskStarted:
                self._started(msg)
            elif cls is MsgTaskFinished:
                self._finished(msg)
            else:
                raise TypeError(f"not a lifecycle message: {cls.__name__}")
        if pending:
            progress = self.applied.progress
            for task_id, msg in pending.items():
                progress[task_id] = self._apply_progress(rows[task_id], msg)
            pending.clear()

    def _row(self, task_id: Any) -> list[Any]:
        if type(task_id) is not int:
            raise TypeError(f"task_id must be an int, got {type(task_id).__name__}")
        row = self.rows.get(task_id)
        if row is None:
            row = self.rows[task_id] = [None] * 12
        return row

    @staticmethod
    def _apply_progress(row: list[Any], msg: MsgTaskProgress) -> tuple[int, int, str]:
        step, total = msg.step, msg.total
        row[_STEP] = step if isinstance(step, int) else None
        row[_TOTAL] = total if isinstance(total, int) else None
        row[_PROGRESS] = _progress_of(step, total)
        text = _truncate(str(msg.message)) if msg.message else ""
        return (row[_STEP] or 0, row[_TOTAL] or 0, text)

    def _started(self, msg: MsgTaskStarted) -> None:
        task_id = msg.task_id
        row = self._row(task_id)
        attempt = msg.attempt if isinstance(msg.attempt, int) else 1
        if row[_STATUS] in _TERMINAL_SET and attempt <= (row[_ATTEMPT] or 1):
            return  # a late or duplicate start must not reopen a finished task
        row[_KEY] = None if msg.key is None else _truncate(str(msg.key))
        row[_NAME] = _truncate(str(msg.name))
        row[_STATUS] = "running"
        row[_STARTED] = row[_STARTED] or _truncate(str(msg.started_at))
        row[_FINISHED] = None
        row[_ATTEMPT] = attempt
        self.applied.started.append((task_id, row[_NAME]))

    def _finished(self, msg: MsgTaskFinished) -> None:
        task_id = msg.task_id
        row = self._row(task_id)
        earlier = self.pending.pop(task_id, None)
        if earlier is not None:  # progress sent before this finish lands first
            self._apply_progress(row, earlier)
        attempt = msg.attempt if isinstance(msg.attempt, int) else 1
        if row[_STATUS] in _TERMINAL_SET and attempt <= (row[_ATTEMPT] or 1):
            return  # duplicate finish: the first one stands
        status = str(msg.status)
        if status not in _TERMINAL_SET:
            raise ValueError(f"status {status!r} is not one of {', '.join(TERMINAL)}")
        row[_STATUS] = status
        row[_FINISHED] = _truncate(str(msg.finished_at))
        if msg.name is not None and row[_NAME] is None:
            row[_NAME] = _truncate(str(msg.name))
        if status == "done" or status == "skipped":  # skipped: done by an earlier run
            row[_PROGRESS] = 1.0
        if msg.result is not None:
            row[_RESULT] = _result_text(msg.result)
        if msg.message:
            row[_MESSAGE] = _truncate(str(msg.message))
        if msg.error is not None:
            row[_ERROR] = _truncate(str(msg.error))
        row[_ATTEMPT] = attempt
        self.applied.progress.pop(task_id, None)
        self.applied.finished.append((task_id, status))


class SQLiteWriter(threading.Thread):
    """The thread that owns the database connection and applies every message.

    Construct it, register handlers (before ``start``), start it, put messages on
    ``msg_q``, then put ``SENTINEL`` and ``join``. ``run_pipeline`` does all of this.
    """

    def __init__(
        self,
        db_path: str | Path,
        msg_q: _QueueLike,
        *,
        wal: bool = True,
        store_task_status: bool = True,
        task_progress: Any = None,
        task_bar_map: Mapping[int, Any] | None = None,
        handlers: Mapping[type[Any], Handler] | None = None,
        schema: SchemaFn | None = None,
        listeners: Iterable[Listener] = (),
        run_name: str = "pipeline",
        workers: int | None = None,
        tasks_total: int | None = None,
        params: Mapping[str, Any] | None = None,
        synchronous: Synchronous = "NORMAL",
        batch_size: int = DEFAULT_BATCH_SIZE,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> None:
        """Prepare the writer; nothing touches the database until ``start``.

        Args:
            db_path: the SQLite file (``":memory:"`` for a throwaway database).
            msg_q: where workers put messages; anything with ``get``/``get_nowait``.
            wal: use write-ahead logging so readers never block the writer.
            store_task_status: False keeps only user handlers (no pipeloom tables).
            task_progress: a Rich ``Progress`` to update directly (seed compatibility).
            task_bar_map: task_id -> Rich task id inside ``task_progress``.
            handlers: user message type -> batched handler.
            schema: creates user tables once, when the writer starts.
            listeners: called after each commit with what it applied.
            run_name: stored on the ``pipeline_runs`` row.
            workers: worker count, for the run row.
            tasks_total: how many tasks the run expects, if known.
            params: JSON-able parameters stored on the run row.
            synchronous: NORMAL (fast, safe from corruption) or FULL (survives power loss).
            batch_size: most messages applied in one transaction.
            commit_interval: longest wait for more messages before a small batch commits.
        """
        super().__init__(name="pipeloom-writer", daemon=True)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: use at least 1")
        self.db_path = db_path
        self.msg_q = msg_q
        self.wal = wal
        self.store_task_status = store_task_status
        self.synchronous: Synchronous = synchronous
        self.batch_size = batch_size
        self.commit_interval = commit_interval
        self.run_name = run_name
        self.workers = workers
        self.tasks_total = tasks_total
        self.params = dict(params or {})
        self._handlers: dict[type[Any], Handler] = dict(handlers or {})
        self._schema = schema
        self._listeners: list[Listener] = list(listeners)
        if task_progress is not None and task_bar_map is not None:
            self._listeners.append(_seed_bar_listener(task_progress, task_bar_map))
        self.run_id: int | None = None
        self.ready = threading.Event()
        """Set once the database is open and the run row exists (or opening failed)."""
        self.error: BaseException | None = None
        """Why the writer stopped early, if it did."""
        self.messages_applied = 0
        self.messages_dead = 0
        self.status_counts: dict[str, int] = {}
        """Terminal statuses applied, counted as they commit (used when no tables exist)."""
        self.run_status: str | None = None
        self.final_counts: dict[str, int] = {}
        """Tasks per status in the run, read back from the database at shutdown."""
        self.failed_task_ids: list[int] = []
        """task_id of every task that ended in error or timeout."""
        self._conn: sqlite3.Connection | None = None
        self._warned_types: set[type[Any]] = set()

    # -- registration -------------------------------------------------------------------

    def register(
        self, msg_type: type[M], handler: Callable[[sqlite3.Connection, list[M]], None]
    ) -> None:
        """Route messages of ``msg_type`` to ``handler`` (call before ``start``)."""
        if msg_type in (MsgTaskStarted, MsgTaskProgress, MsgTaskFinished, MsgTaskAttempt):
            raise ValueError(f"{msg_type.__name__} is handled by pipeloom itself")
        self._handlers[msg_type] = handler

    def handler(
        self, msg_type: type[M]
    ) -> Callable[
        [Callable[[sqlite3.Connection, list[M]], None]],
        Callable[[sqlite3.Connection, list[M]], None],
    ]:
        """Decorator form of `register`: ``@writer.handler(MsgUpsertUsers)``."""

        def decorate(
            fn: Callable[[sqlite3.Connection, list[M]], None],
        ) -> Callable[[sqlite3.Connection, list[M]], None]:
            self.register(msg_type, fn)
            return fn

        return decorate

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` after every commit (call before ``start``)."""
        self._listeners.append(listener)

    # -- thread body --------------------------------------------------------------------

    def run(self) -> None:
        """Open the database, apply messages until SENTINEL, then close cleanly."""
        try:
            self._open()
        except BaseException as exc:
            self._fail(exc)
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop()
            self._close_run()
        except BaseException as exc:
            self._fail(exc)
            self._abandon_run(exc)
        finally:
            self._close()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        log.error("writer stopped: %s", exc)
        fail = getattr(self.msg_q, "fail", None)
        if callable(fail):
            fail(exc)

    def _abandon_run(self, exc: BaseException) -> None:
        """Best effort: mark the run and its running tasks interrupted after a fatal error.

        Without this the run would look alive (status running, our live pid) until a writer
        in another process opens the file. On a broken connection a fresh one is tried; if
        that fails too (a truly full disk), the next writer elsewhere does it.
        """
        if not self.store_task_status or self.run_id is None:
            return
        conn = self._conn
        try:
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn = None  # closed or broken
        own = conn is None
        try:
            if conn is None:
                if str(self.db_path) == MEMORY:
                    return
                conn = connect(self.db_path, wal=self.wal, synchronous=self.synchronous)
            now = utc_now()
            note = _truncate(f"interrupted: the writer stopped ({exc})")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE task_runs SET status = 'interrupted', finished_at = ?, message = ? "
                "WHERE run_id = ? AND status IN ('running', 'queued')",
                (now, note, self.run_id),
            )
            self._store_counts(conn, self.run_id)
            conn.execute(
                "UPDATE pipeline_runs SET status = 'interrupted', finished_at = ?, messages = ? "
                "WHERE id = ?",
                (now, self.messages_applied + self.messages_dead, self.run_id),
            )
            conn.execute("COMMIT")
            self.run_status = "interrupted"
        except (sqlite3.Error, DatabaseError) as err:
            log.warning(
                "%s: could not mark run %s interrupted after the writer stopped (%s); "
                "the next writer opened by another process will",
                self.db_path,
                self.run_id,
                err,
            )
            try:
                if conn is not None and conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_err:
                log.debug("rollback after failed abandon also failed: %s", rollback_err)
        finally:
            if own and conn is not None:
                conn.close()

    def _open(self) -> None:
        conn = connect(self.db_path, wal=self.wal, synchronous=self.synchronous)
        self._conn = conn
        try:
            if self.store_task_status:
                init_schema(conn, self.db_path)
                self._mark_interrupted(conn)
            if self._schema is not None:
                conn.execute("BEGIN IMMEDIATE")
                self._schema(conn)
                conn.execute("COMMIT")
            if self.store_task_status:
                self.run_id = self._insert_run(conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise DatabaseError(f"{self.db_path}: cannot prepare the database ({exc})") from exc

    def _mark_interrupted(self, conn: sqlite3.Connection) -> None:
        host = socket.gethostname()
        rows = conn.execute(
            "SELECT id, host, pid FROM pipeline_runs WHERE status = 'running'"
        ).fetchall()
        dead = [r[0] for r in rows if r[1] == host and r[2] is not None and not _pid_alive(r[2])]
        if not dead:
            return
        now = utc_now()
        conn.execute("BEGIN IMMEDIATE")
        for run_id in dead:
            conn.execute(
                "UPDATE task_runs SET status = 'interrupted', finished_at = ? "
                "WHERE run_id = ? AND status IN ('running', 'queued')",
                (now, run_id),
            )
            conn.execute(
                "UPDATE pipeline_runs SET status = 'interrupted', finished_at = ? WHERE id = ?",
                (now, run_id),
            )
            self._store_counts(conn, run_id)
        conn.execute("COMMIT")
        log.warning("marked %d run(s) left running by a dead process as interrupted", len(dead))

    def _insert_run(self, conn: sqlite3.Connection) -> int:
        cur = conn.execute(
            "INSERT INTO pipeline_runs (name, status, started_at, workers, tasks_total, host, "
            "pid, pipeloom_version, params) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?)",
            (
                self.run_name,
                utc_now(),
                self.workers,
                self.tasks_total or 0,
                socket.gethostname(),
                os.getpid(),
                __version__,
                json.dumps(self.params, default=str),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _loop(self) -> None:
        get, get_nowait = self.msg_q.get, self.msg_q.get_nowait
        batch_size, interval = self.batch_size, self.commit_interval
        monotonic, sleep = time.monotonic, time.sleep
        while True:
            try:
                first = get(True, 0.5)
            except queue.Empty:
                continue
            if first is SENTINEL:
                return
            batch = [first]
            append = batch.append
            stop = False
            deadline = monotonic() + interval
            # Linger by sleeping and draining, not by blocking in get(): a blocked get() is
            # woken by every single put, and each wake-up is a GIL hand-off between the
            # writer and the workers; a 2 ms sleep costs one hand-off per tick instead.
            while True:
                try:
                    while len(batch) < batch_size:
                        msg = get_nowait()
                        if msg is SENTINEL:
                            stop = True
                            break
                        append(msg)
                except queue.Empty:
                    pass
                if stop or len(batch) >= batch_size:
                    break
                remaining = deadline - monotonic()
                if remaining <= 0:
                    break
                sleep(min(remaining, _LINGER_TICK))
            self._apply(batch)
            if stop:
                return

    # -- applying a batch ---------------------------------------------------------------

    def _apply(self, batch: list[Any]) -> None:
        conn = self._conn
        assert conn is not None
        fold = _Fold()
        groups: dict[type[Any], list[Any]] = {}
        lifecycle: list[Any] = []
        dead: list[tuple[Any, str]] = []
        for msg in batch:
            cls = msg.__class__
            if cls is MsgTaskProgress or cls is MsgTaskStarted or cls is MsgTaskFinished:
                lifecycle.append(msg)
            elif cls is MsgRunFinished:
                if isinstance(msg.status, str) and msg.status in RUN_STATUSES:
                    self.run_status = msg.status
                else:
                    reason = f"run status {msg.status!r} is not one of {', '.join(RUN_STATUSES)}"
                    dead.append((msg, reason))
            else:
                group = groups.get(cls)
                if group is None:
                    group = groups[cls] = []
                group.append(msg)

        # IMMEDIATE takes the write lock up front, waiting out another process's commit
        # (busy timeout). A deferred BEGIN whose first statement reads (a user handler's
        # SELECT) fails at once with "database is locked" when another writer commits first.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if lifecycle:
                self._apply_lifecycle(conn, lifecycle, fold, dead)
            attempts = groups.pop(MsgTaskAttempt, None)
            if attempts:
                self._apply_group(conn, MsgTaskAttempt, attempts, self._apply_attempts, dead)
            for cls, msgs in groups.items():
                handler = self._handlers.get(cls)
                if handler is None:
                    if cls not in self._warned_types:
                        self._warned_types.add(cls)
                        log.warning(
                            "no handler for message type %s; dead-lettered (register one "
                            "with handlers={%s: fn})",
                            cls.__name__,
                            cls.__name__,
                        )
                    reason = f"no handler registered for {cls.__module__}.{cls.__qualname__}"
                    dead.extend((m, reason) for m in msgs)
                    continue
                self._apply_group(conn, cls, msgs, handler, dead)
            if dead:
                self._store_dead(conn, dead)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        fold.applied.messages = len(batch)
        fold.applied.dead_letters = len(dead)
        self.messages_applied += len(batch) - len(dead)
        self.messages_dead += len(dead)
        for task_id, status in fold.applied.finished:
            self.status_counts[status] = self.status_counts.get(status, 0) + 1
            if status == "error" or status == "timeout":
                self.failed_task_ids.append(task_id)
        self._notify(fold.applied)

    def _apply_lifecycle(
        self,
        conn: sqlite3.Connection,
        msgs: list[Any],
        fold: _Fold,
        dead: list[tuple[Any, str]],
    ) -> None:
        savepoint = False
        try:
            fold.add_all(msgs)
            if self.store_task_status:
                conn.execute("SAVEPOINT lifecycle")
                savepoint = True
                self._upsert_tasks(conn, fold)
                conn.execute("RELEASE lifecycle")
            return
        except Exception as exc:
            if _is_fatal(exc):
                raise
            if savepoint:
                conn.execute("ROLLBACK TO lifecycle")
                conn.execute("RELEASE lifecycle")
            log.debug("lifecycle batch failed (%s); retrying message by message", exc)
        # Slow path: one message at a time so one bad message costs only itself.
        applied = fold.applied = AppliedBatch()
        for msg in msgs:
            single = _Fold()
            try:
                single.add(msg)
                if self.store_task_status:
                    conn.execute("SAVEPOINT one")
                    try:
                        conn.executemany(_UPSERT_TASK, self._rows(single))
                    except BaseException:
                        conn.execute("ROLLBACK TO one")
                        raise
                    finally:
                        conn.execute("RELEASE one")
            except Exception as exc:
                if _is_fatal(exc):
                    raise
                dead.append((msg, f"{type(exc).__name__}: {exc}"))
                continue
            applied.started.extend(single.applied.started)
            applied.progress.update(single.applied.progress)
            for item in single.applied.finished:
                applied.progress.pop(item[0], None)
                applied.finished.append(item)

    def _upsert_tasks(self, conn: sqlite3.Connection, fold: _Fold) -> None:
        """Write one row change per task: executemany when few, the temp stage when many."""
        rows = fold.rows
        if len(rows) < _STAGE_MIN_ROWS or not _CAN_STAGE:
            conn.executemany(_UPSERT_TASK, self._rows(fold))
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
        conn.execute(_UPDATE_FROM_STAGE, (self.run_id,))
        conn.execute(_INSERT_FROM_STAGE, (self.run_id,))
        conn.execute("DELETE FROM temp.pipeloom_batch")

    def _rows(self, fold: _Fold) -> Iterable[tuple[Any, ...]]:
        run_id = self.run_id
        for task_id, row in fold.rows.items():
            yield (run_id, task_id, *row)

    def _apply_attempts(self, conn: sqlite3.Connection, msgs: list[MsgTaskAttempt]) -> None:
        if not self.store_task_status:
            return
        conn.executemany(
            "INSERT INTO task_attempts (run_id, task_id, attempt, status, started_at, "
            "finished_at, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    self.run_id,
                    m.task_id,
                    m.attempt,
                    str(m.status),
                    m.started_at,
                    m.finished_at,
                    _truncate(str(m.error)),
                )
                for m in msgs
            ],
        )

    def _apply_group(
        self,
        conn: sqlite3.Connection,
        cls: type[Any],
        msgs: list[Any],
        handler: Callable[[sqlite3.Connection, list[Any]], None],
        dead: list[tuple[Any, str]],
    ) -> None:
        conn.execute("SAVEPOINT grp")
        try:
            handler(conn, msgs)
            conn.execute("RELEASE grp")
            return
        except Exception as exc:
            if _is_fatal(exc):
                raise
            conn.execute("ROLLBACK TO grp")
            conn.execute("RELEASE grp")
            if len(msgs) > 1:
                log.debug("handler for %s failed on a batch (%s); retrying one by one", cls, exc)
            else:
                dead.append((msgs[0], f"{type(exc).__name__}: {exc}"))
                log.warning("handler for %s rejected a message: %s", cls.__name__, exc)
                return
        for msg in msgs:
            conn.execute("SAVEPOINT one")
            try:
                handler(conn, [msg])
            except Exception as exc:
                conn.execute("ROLLBACK TO one")
                conn.execute("RELEASE one")
                if _is_fatal(exc):
                    raise
                dead.append((msg, f"{type(exc).__name__}: {exc}"))
                log.warning("handler for %s rejected a message: %s", cls.__name__, exc)
                continue
            conn.execute("RELEASE one")

    def _store_dead(self, conn: sqlite3.Connection, dead: list[tuple[Any, str]]) -> None:
        for msg, reason in dead:
            log.warning("dead-lettered %s: %s", type(msg).__name__, reason)
        if not self.store_task_status:
            return
        now = utc_now()
        conn.executemany(
            "INSERT INTO dead_letters (run_id, created_at, msg_type, payload, error) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (self.run_id, now, _type_name(msg), _payload(msg), _truncate(reason))
                for msg, reason in dead
            ],
        )

    def _notify(self, applied: AppliedBatch) -> None:
        for listener in self._listeners:
            try:
                listener(applied)
            except Exception:
                log.exception("progress listener %r failed; continuing", listener)

    # -- shutdown -----------------------------------------------------------------------

    def _store_counts(self, conn: sqlite3.Connection, run_id: int) -> dict[str, int]:
        counts = {
            str(status): int(n)
            for status, n in conn.execute(
                "SELECT status, count(*) FROM task_runs WHERE run_id = ? GROUP BY status",
                (run_id,),
            )
        }
        conn.execute(
            "UPDATE pipeline_runs SET tasks_total = ?, tasks_done = ?, tasks_error = ?, "
            "tasks_cancelled = ? WHERE id = ?",
            (
                sum(counts.values()),
                counts.get("done", 0),
                counts.get("error", 0) + counts.get("timeout", 0),
                counts.get("cancelled", 0),
                run_id,
            ),
        )
        return counts

    def _close_run(self) -> None:
        conn = self._conn
        if conn is None or not self.store_task_status or self.run_id is None:
            return
        # IMMEDIATE: this transaction reads before it writes, and a deferred one would fail
        # at once (SQLITE_BUSY, no busy wait) if another process committed in between.
        conn.execute("BEGIN IMMEDIATE")
        counts = self._store_counts(conn, self.run_id)
        status = self.run_status
        if status is None:
            failed = counts.get("error", 0) + counts.get("timeout", 0)
            status = "error" if failed else "done"
        conn.execute(
            "UPDATE pipeline_runs SET status = ?, finished_at = ?, messages = ? WHERE id = ?",
            (status, utc_now(), self.messages_applied + self.messages_dead, self.run_id),
        )
        conn.execute("COMMIT")
        self.run_status = status
        self.final_counts = counts
        self.failed_task_ids = [
            int(r[0])
            for r in conn.execute(
                "SELECT task_id FROM task_runs WHERE run_id = ? AND status IN ('error', 'timeout') "
                "ORDER BY task_id",
                (self.run_id,),
            )
        ]

    def _close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if self.error is None:
                # IMMEDIATE: optimize may read, then write (ANALYZE); in autocommit that upgrade
                # fails at once with "database is locked" if another process just committed.
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("PRAGMA optimize")
                conn.execute("COMMIT")
                if self.wal and str(self.db_path) != MEMORY:
                    # TRUNCATE waits (busy timeout, 10 s) for every reader to finish; one
                    # open read transaction elsewhere would stall the run's end that long.
                    # After a short wait it checkpoints what it can, like PASSIVE.
                    conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_BUSY_MS}")
                    wal_checkpoint(conn, "TRUNCATE")
        except sqlite3.Error as exc:
            log.warning("%s: final optimize/checkpoint failed: %s", self.db_path, exc)
        finally:
            conn.close()
            self._conn = None

    def raise_if_failed(self) -> None:
        """Re-raise the writer's fatal error in the caller's thread.

        Raises:
            WriterFailedError: the writer stopped before SENTINEL.
        """
        if self.error is not None:
            raise WriterFailedError(f"{self.db_path}: {self.error}") from self.error


def _type_name(msg: Any) -> str:
    cls = type(msg)
    return f"{cls.__module__}.{cls.__qualname__}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _seed_bar_listener(progress: Any, bar_map: Mapping[int, Any]) -> Listener:
    """Keep the seed's per-task Rich bars moving from what the writer committed."""

    def listen(applied: AppliedBatch) -> None:
        for task_id, (step, total, message) in applied.progress.items():
            bar = bar_map.get(task_id)
            if bar is not None:
                progress.update(
                    bar, completed=step, total=total or None, description=message or None
                )
        for task_id, status in applied.finished:
            bar = bar_map.get(task_id)
            if bar is not None and status == "done":
                task = next((t for t in progress.tasks if t.id == bar), None)
                if task is not None and task.total is not None:
                    progress.update(bar, completed=task.total)

    return listen
