"""The single writer thread: the only code that ever writes to the run database.

Workers put messages on a queue; the writer drains whatever is waiting (up to a batch
size), applies it in one transaction and commits (group commit). Lifecycle messages of one
task in a batch are folded into one row change; user messages go to the handler registered
for their type, a whole batch at a time. A message that cannot be applied is kept in the
``dead_letters`` table rather than killing the writer. Listeners run after each commit, so
anything fed from them (the progress display) shows only what the database already holds.
Handlers may not end the batch's transaction (an authorizer refuses it; if one gets past, the
batch is applied again without its messages), and the file's identity is checked at each
commit, so a database deleted or replaced mid-run is an error rather than a silent loss.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeloom._control import Refused, RunEnd
from pipeloom._text import storable
from pipeloom.db import MEMORY, Synchronous, connect, init_schema, wal_checkpoint
from pipeloom.errors import DatabaseError, WriterFailedError
from pipeloom.lease import (
    DEFAULT_LEASE_S,
    heartbeat_every,
)
from pipeloom.messages import (
    SENTINEL,
    MsgRunFinished,
    MsgTaskAttempt,
    MsgTaskFinished,
    MsgTaskLog,
    MsgTaskProgress,
    MsgTaskStarted,
    utc_now,
)
from pipeloom.options import RunOptions
from pipeloom.queue import MessageQueue
from pipeloom.record._atomic import HeldCounts, apply_held, holds_outputs
from pipeloom.record._fileid import FileIdentity
from pipeloom.record._fold import (
    AppliedBatch,
    _Fold,
    _payload,
    origin_of,
)
from pipeloom.record._registry import Handler, HandlerRegistry, callable_name, find_handler
from pipeloom.record._runs import (
    LiveCounts,
    beat,
    close_run,
    insert_run,
    interrupt_run,
    mark_dead_runs,
)
from pipeloom.record._task_sql import prepare as prepare_task_sql
from pipeloom.record._task_sql import upsert_tasks
from pipeloom.retention import Retention, apply_retention
from pipeloom.status import ENDED_RUN_STATUSES, FAILED
from pipeloom.tasklogs import DEFAULT_TASK_LOG_LIMIT, TaskLogStore

__all__ = [
    "AppliedBatch",
    "Handler",
    "Listener",
    "SQLiteWriter",
]

log = logging.getLogger("pipeloom.writer")

SchemaFn = Callable[[sqlite3.Connection], None]
DEFAULT_BATCH_SIZE = 5_000
"""Most messages applied in one transaction."""
DEFAULT_COMMIT_INTERVAL = 0.02
_SIGN_OF_LIFE = 1.0
"""Seconds between heartbeats written by commits that change no count (progress alone)."""
"""Seconds the writer may wait for more messages before committing a small batch."""
_CHECKPOINT_BUSY_MS = 250
"""How long the final WAL checkpoint waits for readers before settling for less."""
_LINGER_TICK = 0.002
"""While lingering, how often the writer looks for more messages (seconds)."""
_FILE_CHECK_EVERY = 0.2
"""Seconds between looks at the database path after commits (idle ticks and the end always
look)."""

# SQLite primary result codes after which no further write can succeed.
_FATAL_CODES = frozenset({8, 10, 11, 13, 14, 26})  # READONLY IOERR CORRUPT FULL CANTOPEN NOTADB


class _QueueLike(Protocol):
    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...
    def get_nowait(self) -> Any: ...


Listener = Callable[[AppliedBatch], None]
"""Called in the writer thread after each commit; must be quick and must not raise."""


def _is_fatal(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _FATAL_CODES


class SQLiteWriter(HandlerRegistry, threading.Thread):
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
        request: Mapping[str, Any] | None = None,
        synchronous: Synchronous = "NORMAL",
        batch_size: int = DEFAULT_BATCH_SIZE,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
        lease: float | None = None,
        task_log_limit: int = DEFAULT_TASK_LOG_LIMIT,
        retention: Retention | None = None,
        options: RunOptions | None = None,
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
            request: what the run was asked (rerun patterns, ...), JSON on the run row.
            synchronous: NORMAL (fast, safe from corruption) or FULL (survives power loss).
            batch_size: most messages applied in one transaction.
            commit_interval: longest wait for more messages before a small batch commits.
            lease: seconds after its last heartbeat that this run may be called stale by
                readers and interrupted by another writer (default `DEFAULT_LEASE_S`, 15 s).
                The writer beats every third of it, also when no messages flow; a user
                handler or schema hook that blocks the writer longer than the lease makes
                the run look dead.
            task_log_limit: log records stored per task (``task_logs``); the rest are
                dropped and counted in one summary row of the task. 0 stores none.
            retention: old runs of this pipeline to delete as the run starts, after its own
                row is in (`pipeloom.retention`; from ``options``' ``keep_runs`` and
                ``keep_days`` when not given).
            options: the same settings as one `RunOptions` (what `run_pipeline` and a
                `Pipeline` take) instead of ``wal`` ... ``task_log_limit`` one by one; its
                listeners are added to ``listeners``. A setting may come one way, not both.
        """
        super().__init__(name="pipeloom-writer", daemon=True)
        if options is not None:
            given = {
                "wal": (wal, True),
                "synchronous": (synchronous, "NORMAL"),
                "batch_size": (batch_size, DEFAULT_BATCH_SIZE),
                "commit_interval": (commit_interval, DEFAULT_COMMIT_INTERVAL),
                "lease": (lease, None),
                "task_log_limit": (task_log_limit, DEFAULT_TASK_LOG_LIMIT),
            }
            both = [name for name, (value, default) in given.items() if value != default]
            if both:
                raise TypeError(
                    f"SQLiteWriter got {', '.join(both)} both as keyword(s) and in options=; "
                    "pass each setting one way"
                )
            wal, synchronous, lease = options.wal, options.synchronous, options.lease
            batch_size = options.batch_size or DEFAULT_BATCH_SIZE
            if options.commit_interval is not None:
                commit_interval = options.commit_interval
            task_log_limit = options.task_log_limit
            listeners = (*listeners, *options.listeners)
            if retention is None and (options.keep_runs or options.keep_days is not None):
                retention = Retention(options.keep_runs, options.keep_days, run_name)
        if task_log_limit < 0:
            raise ValueError(
                f"task_log_limit={task_log_limit}: use 0 (store no task logs) or more "
                f"(default {DEFAULT_TASK_LOG_LIMIT})"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: use at least 1")
        if lease is None:
            lease = DEFAULT_LEASE_S
        if not 0 < lease < float("inf"):
            raise ValueError(
                f"lease={lease!r}: use a positive number of seconds (default {DEFAULT_LEASE_S})"
            )
        self.lease = float(lease)
        self._beat_every = heartbeat_every(self.lease)
        self._last_beat = 0.0
        self.db_path = db_path
        self.msg_q = msg_q
        self.wal = wal
        self.store_task_status = store_task_status
        self.synchronous: Synchronous = synchronous
        self.batch_size = batch_size
        self.commit_interval = commit_interval
        self.run_name = storable(run_name)  # stored as the name resume looks up
        self.workers = workers
        self.tasks_total = tasks_total
        self.params = dict(params or {})
        self.request = dict(request or {})
        self.handlers: dict[type[Any], Handler] = {}
        for msg_type, fn in (handlers or {}).items():
            self.register(msg_type, fn)
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
        self.run_status: str | None = None
        self.final_counts: dict[str, int] = {}
        """Tasks per status in the run, read back from the database at shutdown."""
        self.failed_task_ids: list[int] = []
        self.failed_sample: list[tuple[int, str, str]] = []
        """(task_id, name, one-line error) of the first failed tasks, for the summary."""
        """task_id of every task that ended in error or timeout."""
        self._run_end: RunEnd | None = None
        self._stop_hint: str | None = None
        self._uncounted = 0
        self._conn: sqlite3.Connection | None = None
        self._warned_types: set[type[Any]] = set()
        self._file: FileIdentity | None = None
        """The database file (and its WAL) this writer opened, to notice it being replaced."""
        self._file_checked = 0.0
        """When `_check_file` last looked at the path (monotonic seconds)."""
        self._in_handler = False
        """True while user handler code runs: transaction statements are then refused."""
        self._refused: str | None = None
        """The transaction statement a handler tried (and was refused), if it did."""
        self._mark = 0
        """Counts batches with user handlers, to tell a handler's COMMIT from its ROLLBACK."""
        self._live = LiveCounts(tasks_total)
        self._live_next: LiveCounts | None = None
        """The counts as of the batch being applied, adopted once it commits."""
        self._task_logs = TaskLogStore(task_log_limit)
        self.retention = retention

    # -- registration -------------------------------------------------------------------

    @property
    def status_counts(self) -> dict[str, int]:
        """Terminal statuses committed so far, each task once (used when no tables exist)."""
        return self._live.by_status

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
            self._check_file()
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
        in another process opens the file. The writer's own connection is tried first; when
        it is broken or cannot write (a handler clamped it, its cache is poisoned), a fresh
        connection is tried; if that fails too (a truly full disk), the next writer elsewhere
        does it.
        """
        if not self.store_task_status or self.run_id is None:
            return
        conn = self._conn
        try:
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            conn = None  # closed or broken
        why = f"the writer stopped ({storable(exc)})"
        last: Exception | None = None
        for attempt in (conn, None):
            if attempt is None and str(self.db_path) == MEMORY:
                break
            try:
                self._mark_abandoned(attempt, self.run_id, why)
            except (sqlite3.Error, DatabaseError) as err:
                last = err
                continue
            self.run_status = "interrupted"
            return
        log.warning(
            "%s: could not mark run %s interrupted after the writer stopped (%s); "
            "the next writer opened by another process will",
            self.db_path,
            self.run_id,
            last,
        )

    def _mark_abandoned(self, conn: sqlite3.Connection | None, run_id: int, why: str) -> None:
        """Mark this run interrupted through ``conn``, or a fresh connection when None.

        Raises:
            sqlite3.Error, DatabaseError: it could not be written (rolled back).
        """
        own = conn is None
        if conn is None:
            conn = connect(self.db_path, wal=self.wal, synchronous=self.synchronous)
        try:
            conn.execute("BEGIN IMMEDIATE")
            interrupt_run(
                conn,
                run_id,
                why=why,
                task_message=f"interrupted: {why}",
                messages=self.messages_applied + self.messages_dead,
                cause="writer_failed",
            )
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_err:
                log.debug("rollback after failed abandon also failed: %s", rollback_err)
            raise
        finally:
            if own:
                conn.close()

    def _open(self) -> None:
        conn = connect(self.db_path, wal=self.wal, synchronous=self.synchronous)
        self._conn = conn
        try:
            if self.store_task_status:
                init_schema(conn, self.db_path)
                self._mark_interrupted(conn)
            if self._schema is not None:
                self._apply_schema(conn, self._schema)
            if self.store_task_status:
                self.run_id = self._insert_run(conn)
                # Retention (pipeloom.retention): after the insert, so this run is live.
                if self.retention is not None and self.retention.active:
                    apply_retention(conn, self.retention, str(self.db_path))
        except sqlite3.Error as exc:
            self._close_after_failed_open(conn)
            raise DatabaseError(f"{self.db_path}: cannot prepare the database ({exc})") from exc
        except BaseException:
            self._close_after_failed_open(conn)
            raise
        self._file = FileIdentity.of(self.db_path, wal=self.wal)
        try:
            # Outside any transaction, so no rollback of a batch can take the table away.
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS pipeloom_mark (batch INTEGER)")
            # Built-in handlers (pipeloom.state) read the run they write for from here.
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS pipeloom_run (id INTEGER)")
            conn.execute("DELETE FROM temp.pipeloom_run")
            conn.execute("INSERT INTO temp.pipeloom_run (id) VALUES (?)", (self.run_id,))
            if self.store_task_status:
                prepare_task_sql(conn)
        except sqlite3.Error as exc:
            self._close_after_failed_open(conn)
            raise DatabaseError(
                f"{self.db_path}: SQLite {sqlite3.sqlite_version} cannot prepare the writer's "
                f"statements ({exc}); pipeloom needs SQLite 3.24 or newer (UPSERT)"
            ) from exc
        conn.set_authorizer(self._authorize)

    def _close_after_failed_open(self, conn: sqlite3.Connection) -> None:
        """Leave no lock behind: another process, or a retry here, must be able to write."""
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("%s: rollback after a failed open failed: %s", self.db_path, exc)
        finally:
            conn.close()
            self._conn = None

    def _apply_schema(self, conn: sqlite3.Connection, schema: SchemaFn) -> None:
        """Run the user's ``schema=`` callable in one transaction; its failure is named.

        Raises:
            DatabaseError: the callable raised; nothing it did is kept.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            schema(conn)
        except Exception as exc:
            raise DatabaseError(
                f"{self.db_path}: schema callable {callable_name(schema)} raised "
                f"{type(exc).__name__}: {storable(exc)}; nothing it did was kept, fix it and "
                "run again"
            ) from exc
        # conn.executescript() commits first: the schema is then already durable.
        if conn.in_transaction:
            conn.execute("COMMIT")

    def _mark_interrupted(self, conn: sqlite3.Connection) -> None:
        dead = mark_dead_runs(conn)
        if dead:
            log.warning(
                "marked %d run(s) whose writer is gone as interrupted: %s",
                len(dead),
                "; ".join(f"run {run_id}: {why}" for run_id, why in dead),
            )

    def _insert_run(self, conn: sqlite3.Connection) -> int:
        run_id = insert_run(
            conn,
            name=self.run_name,
            workers=self.workers,
            tasks_total=self.tasks_total,
            params=self.params,
            lease=self.lease,
            request=self.request,
        )
        self._last_beat = time.monotonic()
        return run_id

    def _heartbeat(self) -> None:
        """Refresh this run's ``heartbeat_at`` when a third of the lease has passed.

        Called after each batch and whenever the queue is idle, so the run stays alive
        through long tasks that send nothing; at most one tiny commit per third of a lease.
        A busy file only delays the beat (the next tick retries); a fatal error stops the
        writer as any other write would.
        """
        conn = self._conn
        if conn is None or self.run_id is None or not self.store_task_status:
            return
        now = time.monotonic()
        if now - self._last_beat < self._beat_every:
            return
        try:
            beat(conn, self.run_id)
        except sqlite3.Error as exc:
            if _is_fatal(exc):
                raise
            log.warning(
                "%s: heartbeat of run %s failed (%s); retrying", self.db_path, self.run_id, exc
            )
            return
        self._last_beat = now

    def _loop(self) -> None:
        get, get_nowait = self.msg_q.get, self.msg_q.get_nowait
        drained: Callable[[], None] | None = None
        if type(self.msg_q) is MessageQueue:  # drain its deque directly: a call less a message
            get_nowait = self.msg_q._q.get_nowait
            drained = self.msg_q.drained
        batch_size, interval = self.batch_size, self.commit_interval
        monotonic, sleep = time.monotonic, time.sleep
        idle_wait = min(0.5, self._beat_every)
        while True:
            try:
                first = get(True, idle_wait)
            except queue.Empty:
                self._heartbeat()
                self._check_file()  # also while long tasks send nothing
                continue
            if first is SENTINEL:
                return
            # The drain sorts as it takes (one pass a message, not two): lifecycle messages
            # in their order, finishes carrying outputs, and the rest for `_sort`.
            lifecycle: list[Any] = []
            held: list[MsgTaskFinished] = []
            others: list[Any] = []
            keep, hold, other = lifecycle.append, held.append, others.append
            _sort_one(first, keep, hold, other)
            taken = 1
            stop = False
            deadline = monotonic() + interval
            # Linger by sleeping and draining, not by blocking in get(): a blocked get() is
            # woken by every single put, and each wake-up is a GIL hand-off between the
            # writer and the workers; a 2 ms sleep costs one hand-off per tick instead.
            while True:
                try:
                    for _ in range(batch_size - taken):
                        msg = get_nowait()
                        cls = type(msg)  # _sort_one, inline (and SENTINEL ends the drain)
                        if cls is MsgTaskProgress or cls is MsgTaskStarted:
                            keep(msg)
                        elif cls is MsgTaskFinished:
                            outputs = msg.outputs  # usually the default (), else user data
                            if (type(outputs) is tuple and not outputs) or not _carries_outputs(
                                msg
                            ):
                                keep(msg)
                            else:
                                hold(msg)
                        elif msg is SENTINEL:
                            stop = True
                            break
                        else:
                            other(msg)
                except queue.Empty:
                    pass
                taken = len(lifecycle) + len(held) + len(others)
                if stop or taken >= batch_size:
                    break
                if drained is not None:
                    # Workers paused on a full queue would otherwise wait out the whole
                    # linger with nothing left to drain (a small queue_size: 20 ms a batch).
                    drained()
                remaining = deadline - monotonic()
                if remaining <= 0:
                    break
                sleep(min(remaining, _LINGER_TICK))
            if drained is not None:
                drained()  # paused workers make the next batch while this one is applied
            self._apply(lifecycle, held, others, taken)
            if stop:
                return
            self._heartbeat()

    # -- applying a batch ---------------------------------------------------------------

    def _apply(
        self, lifecycle: list[Any], held: list[MsgTaskFinished], others: list[Any], taken: int
    ) -> None:
        """Apply one batch: ``taken`` messages, sorted by the drain (see `_sort_one`)."""
        conn = self._conn
        assert conn is not None
        steps, known_dead = self._sort(others)
        fold = _Fold()
        while True:
            dead = list(known_dead)
            try:
                outputs = self._apply_once(conn, lifecycle, steps, fold, dead, held)
                break
            except _TransactionEnded as ended:
                # A handler committed or rolled back the batch's transaction. Its messages
                # are dead; what it committed stays, what it threw away is applied again.
                log.warning(
                    "%s; its %d message(s) are dead-lettered", ended.reason, len(ended.msgs)
                )
                lost = {id(m) for m in ended.msgs}
                its_dead = [(m, ended.reason) for m in ended.msgs]
                if ended.committed:
                    known_dead = dead + its_dead  # this attempt's dead letters are not stored yet
                    lifecycle = []  # committed, and fold.applied already says so
                    rest = [m for m in ended.rest if id(m) not in lost]
                    steps = [(ended.cls, ended.handler, rest), *steps[ended.index + 1 :]]
                else:
                    known_dead = known_dead + its_dead
                    steps = [
                        (cls, handler, [m for m in msgs if id(m) not in lost])
                        for cls, handler, msgs in steps
                    ]
                    fold = _Fold()
        # A held finish counts as one message of the batch; its outputs count on their own.
        n_dead = len(dead) + outputs.dead
        applied = fold.applied
        applied.messages = taken + outputs.messages
        applied.dead_letters = n_dead
        self.messages_applied += taken + outputs.messages - n_dead - self._uncounted
        self._uncounted = 0
        self.messages_dead += n_dead
        live = self._live_next
        if live is not None:
            # Counted once per task (a duplicate or late finish is not a second failure).
            self.failed_task_ids.extend(t for t, status in live.new if status in FAILED)
            self._live, self._live_next = live.adopt(), None
        self._task_logs.forget(task_id for task_id, _status in applied.finished)
        self._notify(applied)

    def _sort(self, others: list[Any]) -> tuple[list[_Step], list[tuple[Any, str]]]:
        """Split what is not a lifecycle message: handler steps, and dead letters.

        Only ``type(msg)`` and identity are used on a message here: its ``__class__``,
        ``__eq__`` or ``__hash__`` may be user code that raises.
        """
        groups: dict[type[Any], list[Any]] = {}
        dead: list[tuple[Any, str]] = []
        logs: list[MsgTaskLog] = []
        for msg in others:
            cls = type(msg)
            if cls is MsgTaskLog:
                logs.append(msg)
            elif cls is MsgRunFinished or cls is RunEnd or cls is Refused:
                self._control(msg, dead)
            else:
                try:
                    group = groups.get(cls)
                    if group is None:
                        group = groups[cls] = []
                except Exception as exc:  # a metaclass __hash__/__eq__ that raises
                    dead.append((msg, f"message type cannot be looked up: {_reason(exc)}"))
                    continue
                group.append(msg)
        steps: list[_Step] = []
        attempts = groups.pop(MsgTaskAttempt, None)
        if attempts:
            steps.append((MsgTaskAttempt, self._apply_attempts, attempts))
        if logs:
            steps.append((MsgTaskLog, self._apply_logs, logs))
        for cls, msgs in groups.items():
            handler = find_handler(self.handlers, cls)
            if handler is None:
                if cls not in self._warned_types:
                    self._warned_types.add(cls)
                    log.warning(
                        "no handler for message type %s; dead-lettered (register one "
                        "with handlers={%s: fn})",
                        cls.__name__,
                        cls.__name__,
                    )
                reason = f"no handler registered for {_type_name_of(cls)}"
                dead.extend((m, reason) for m in msgs)
                continue
            steps.append((cls, handler, msgs))
        return steps, dead

    def _apply_once(
        self,
        conn: sqlite3.Connection,
        lifecycle: list[Any],
        steps: list[_Step],
        fold: _Fold,
        dead: list[tuple[Any, str]],
        held: list[MsgTaskFinished],
    ) -> HeldCounts:
        """Apply one batch in one transaction; ``dead`` gains what could not be applied.

        Raises:
            _TransactionEnded: a handler ended the transaction (already cleaned up).
        """
        # IMMEDIATE takes the write lock up front, waiting out another process's commit
        # (busy timeout). A deferred BEGIN whose first statement reads (a user handler's
        # SELECT) fails at once with "database is locked" when another writer commits first.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if lifecycle:  # first: on failure it rolls the transaction back and begins again
                self._apply_lifecycle(conn, lifecycle, fold, dead)
            if steps or held:
                self._write_mark(conn)
                # The guard judges statements when they are prepared; re-arming it expires
                # every cached one, so a cached "COMMIT" is judged again when a handler runs it.
                conn.set_authorizer(self._authorize)
            for index, (cls, handler, msgs) in enumerate(steps):
                if msgs:
                    self._apply_group(conn, index, cls, msgs, handler, dead)
            outputs = HeldCounts()
            if held:
                outputs = self._apply_held(conn, held, fold)
            if dead:
                self._store_dead(conn, dead)
            self._write_live(conn, fold.applied)
            conn.execute("COMMIT")
        except _TransactionEnded:
            raise  # the connection is already out of any transaction
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as err:  # closed or broken: the error that got here says why
                log.debug("rollback after %s failed too: %s", type(exc).__name__, err)
            raise
        self._check_file(soon=True)
        return outputs

    def _apply_held(
        self, conn: sqlite3.Connection, held: list[MsgTaskFinished], fold: _Fold
    ) -> HeldCounts:
        """Apply the finishes that carry a task's outputs (see `_atomic`), handlers guarded."""
        self._refused = None
        self._in_handler = True
        try:
            return apply_held(
                conn,
                held,
                handlers=self.handlers,
                run_id=self.run_id,
                store_tasks=self.store_task_status,
                applied=fold.applied,
                is_fatal=_is_fatal,
            )
        finally:
            self._in_handler = False
            if self._refused is not None:
                log.warning(
                    "a handler tried to end the writer's transaction (%s) while applying a "
                    "task's outputs; it was refused and the task recorded error: handlers must "
                    "not commit or roll back",
                    self._refused,
                )

    def _write_mark(self, conn: sqlite3.Connection) -> None:
        """Note this batch in a temp table, inside its transaction.

        If a handler ends the transaction, the mark tells which way: a COMMIT kept it, a
        ROLLBACK threw it away (and the batch's earlier work with it).
        """
        self._mark += 1
        conn.execute("DELETE FROM temp.pipeloom_mark")
        conn.execute("INSERT INTO temp.pipeloom_mark VALUES (?)", (self._mark,))

    def _mark_committed(self, conn: sqlite3.Connection) -> bool:
        row = conn.execute("SELECT max(batch) FROM temp.pipeloom_mark").fetchone()
        return bool(row and row[0] == self._mark)

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        """Refuse BEGIN, COMMIT, ROLLBACK and the writer's own savepoints to handler code.

        A handler that commits (``conn.commit()``, ``with conn:``, ``executescript``) would
        end the batch's transaction under the writer; refused, it fails like any handler.
        """
        if self._in_handler and (
            action == sqlite3.SQLITE_TRANSACTION
            or (action == sqlite3.SQLITE_SAVEPOINT and arg2 in _OWN_SAVEPOINTS and arg1 != "BEGIN")
        ):
            if self._refused is None:  # the first one says what it did (`with conn:` tries both)
                self._refused = arg1 or "COMMIT"
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _control(self, msg: Any, dead: list[tuple[Any, str]]) -> None:
        """Note the engine's account of the run; dead-letter what a worker tried to send."""
        cls = msg.__class__
        if cls is RunEnd:
            self._run_end = msg
            self._uncounted += 1  # the engine's bookkeeping, not a message anybody sent
        elif cls is Refused:
            dead.append((msg.msg, msg.reason))
        elif type(msg.status) is str and msg.status in ENDED_RUN_STATUSES:
            # A bare writer's owner may say the run was stopped; whether it is done is
            # decided from the rows (decide_run_status), never taken on someone's word.
            if msg.status in ("cancelled", "interrupted"):
                self._stop_hint = msg.status
        else:
            reason = (
                f"run status {_payload(msg.status)} is not one of {', '.join(ENDED_RUN_STATUSES)}"
            )
            dead.append((msg, reason))

    def _apply_lifecycle(
        self,
        conn: sqlite3.Connection,
        msgs: list[Any],
        fold: _Fold,
        dead: list[tuple[Any, str]],
    ) -> None:
        try:
            fold.add_all(msgs)
            if self.store_task_status:
                upsert_tasks(conn, self.run_id, fold)
            return
        except Exception as exc:
            if _is_fatal(exc):
                raise
            # The batch's first writes (see _apply_once): rolling its transaction back undoes
            # only them, with no savepoint (two statements, and two GIL hand-offs) per batch.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            log.debug("lifecycle batch failed (%s); retrying message by message", _reason(exc))
        # Slow path: one message at a time so one bad message costs only itself.
        applied = fold.applied = AppliedBatch()
        for msg in msgs:
            single = _Fold()
            try:
                single.add(msg)
                if self.store_task_status:
                    conn.execute("SAVEPOINT one")
                    try:
                        upsert_tasks(conn, self.run_id, single)
                    except BaseException:
                        conn.execute("ROLLBACK TO one")
                        raise
                    finally:
                        conn.execute("RELEASE one")
            except Exception as exc:
                if _is_fatal(exc):
                    raise
                dead.append((msg, _reason(exc)))
                continue
            applied.started.extend(single.applied.started)
            applied.progress.update(single.applied.progress)
            for item in single.applied.finished:
                applied.progress.pop(item[0], None)
                applied.finished.append(item)

    def _apply_attempts(self, conn: sqlite3.Connection, msgs: list[MsgTaskAttempt]) -> None:
        if not self.store_task_status:
            return
        conn.executemany(
            "INSERT INTO task_attempts (run_id, task_id, attempt, status, started_at, "
            "finished_at, error, discarded) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    self.run_id,
                    m.task_id,
                    m.attempt,
                    storable(m.status),
                    None if m.started_at is None else storable(m.started_at),
                    storable(m.finished_at),
                    storable(m.error),
                    m.discarded if type(m.discarded) is int else 0,
                )
                for m in msgs
            ],
        )

    def _write_live(self, conn: sqlite3.Connection, applied: AppliedBatch) -> None:
        """Move the run row's counts with this batch, in its transaction (see `LiveCounts`)."""
        if not (applied.started or applied.finished):
            # Progress alone is a sign of life too: a crashed run ends at its last one.
            if self.run_id is not None and time.monotonic() - self._last_beat >= _SIGN_OF_LIFE:
                conn.execute(
                    "UPDATE pipeline_runs SET heartbeat_at = ? WHERE id = ?",
                    (utc_now(), self.run_id),
                )
                self._last_beat = time.monotonic()
            return
        self._live_next = self._live.after(applied)
        if self.run_id is not None:
            self._live_next.write(conn, self.run_id)  # its heartbeat too
            self._last_beat = time.monotonic()

    def _apply_logs(self, conn: sqlite3.Connection, msgs: list[MsgTaskLog]) -> None:
        if self.store_task_status:
            self._task_logs.store(conn, self.run_id, msgs)

    def _apply_group(
        self,
        conn: sqlite3.Connection,
        index: int,
        cls: type[Any],
        msgs: list[Any],
        handler: Handler,
        dead: list[tuple[Any, str]],
    ) -> None:
        """Apply one type's messages with its handler: all at once, else one by one.

        Raises:
            _TransactionEnded: the handler ended the batch's transaction.
        """
        failure = self._call_handler(conn, index, cls, handler, msgs, msgs, _GROUP)
        if failure is None:
            return
        if len(msgs) == 1:
            dead.append((msgs[0], failure))
            log.warning("handler for %s rejected a message: %s", cls.__name__, failure)
            return
        log.debug("handler for %s failed on a batch (%s); retrying one by one", cls, failure)
        for i, msg in enumerate(msgs):
            failure = self._call_handler(conn, index, cls, handler, [msg], msgs[i + 1 :], _ONE)
            if failure is not None:
                dead.append((msg, failure))
                log.warning("handler for %s rejected a message: %s", cls.__name__, failure)

    def _call_handler(
        self,
        conn: sqlite3.Connection,
        index: int,
        cls: type[Any],
        handler: Handler,
        msgs: list[Any],
        rest: list[Any],
        savepoint: str,
    ) -> str | None:
        """Run ``handler(conn, msgs)`` in a savepoint; return why it failed, or None.

        Raises:
            _TransactionEnded: the handler committed or rolled back the batch's transaction
                (past the writer's guard); the connection is out of any transaction again.
        """
        # Quoted: a handler's own "RELEASE pipeloom_group" must not reuse this cached statement.
        conn.execute(f'SAVEPOINT "{savepoint}"')
        error: Exception | None = None
        self._refused = None
        self._in_handler = True
        try:
            handler(conn, msgs)
        except Exception as exc:
            error = exc
        finally:
            self._in_handler = False
        refused = self._refused
        if error is not None and _is_fatal(error):
            raise error
        ended = None
        try:
            if conn.in_transaction:
                if error is None and refused is None:
                    conn.execute(f'RELEASE "{savepoint}"')
                    return None
                conn.execute(f'ROLLBACK TO "{savepoint}"')
                conn.execute(f'RELEASE "{savepoint}"')
            else:
                ended = "ended"
        except sqlite3.OperationalError as exc:
            if "no such savepoint" not in str(exc):
                raise
            ended = "ended"  # it committed, then began a transaction of its own
        except sqlite3.ProgrammingError as exc:  # it closed the connection
            raise DatabaseError(
                f"handler {callable_name(handler)} for {cls.__name__} closed the writer's "
                f"connection ({exc}); handlers must not close it"
            ) from exc
        name = f"handler {callable_name(handler)} for {cls.__name__}"
        if ended is None:
            if refused is not None:
                return (
                    f"{name} tried to end the writer's transaction ({refused}), which the writer "
                    "refused; handlers must not commit or roll back (no conn.commit(), "
                    "`with conn:` or executescript): the writer commits each batch itself"
                )
            assert error is not None
            return _reason(error)
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # whatever it began after ending ours
        conn.set_authorizer(self._authorize)  # it got past the guard, maybe by removing it
        committed = self._mark_committed(conn)
        how = "COMMIT" if committed else "ROLLBACK"
        raise _TransactionEnded(
            index=index,
            cls=cls,
            handler=handler,
            msgs=msgs,
            rest=rest,
            committed=committed,
            reason=(
                f"{name} ended the writer's transaction ({how}); handlers must not commit or "
                "roll back: the writer commits each batch itself"
            ),
        )

    def _store_dead(self, conn: sqlite3.Connection, dead: list[tuple[Any, str]]) -> None:
        for msg, reason in dead:
            log.warning("dead-lettered %s: %s", type(msg).__name__, reason)
        if not self.store_task_status:
            return
        now = utc_now()
        conn.executemany(
            "INSERT INTO dead_letters (run_id, task_id, attempt, created_at, msg_type, payload, "
            "error) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    self.run_id,
                    *origin_of(msg),
                    now,
                    _type_name(msg),
                    _payload(msg),
                    storable(reason),
                )
                for msg, reason in dead
            ],
        )

    # -- the file under the run ---------------------------------------------------------

    def _check_file(self, soon: bool = False) -> None:
        """Stop if the path no longer names the file this writer writes to.

        Args:
            soon: after a commit, look only if the last look is `_FILE_CHECK_EVERY` old: each
                look is two ``stat`` calls, and each hands the GIL to a worker that may keep
                it for a switch interval (5 ms) while the writer has a batch to write.

        Raises:
            DatabaseError: the file (or its WAL) was deleted or replaced mid-run; the rows
                went to the removed file, which no reader of the path will ever see.
        """
        if self._file is None:
            return
        now = time.monotonic()
        if soon and now - self._file_checked < _FILE_CHECK_EVERY:
            return
        self._file_checked = now
        self._file.check()

    def _notify(self, applied: AppliedBatch) -> None:
        for listener in self._listeners:
            try:
                listener(applied)
            except Exception:
                log.exception("progress listener %r failed; continuing", listener)

    # -- shutdown -----------------------------------------------------------------------

    def _close_run(self) -> None:
        conn = self._conn
        if conn is None or not self.store_task_status or self.run_id is None:
            return
        closed = close_run(
            conn,
            self.run_id,
            end=self._run_end,
            stop_hint=self._stop_hint,
            messages=self.messages_applied + self.messages_dead,
        )
        self.run_status = closed.status
        self.final_counts = closed.counts
        self.failed_task_ids = closed.failed_task_ids
        self.failed_sample = closed.failed_sample

    def _close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if self.error is None:
                # IMMEDIATE: optimize may read, then write (ANALYZE); in autocommit that upgrade
                # fails at once with "database is locked" if another process just committed.
                # A bounded ANALYZE, as SQLite advises for optimize: without the limit it reads
                # every row of every table it analyses (100,000 tasks: 50-90 ms more, and it
                # grows with the file's whole history).
                conn.execute("PRAGMA analysis_limit = 1000")
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
    return _type_name_of(type(msg))


def _type_name_of(cls: type[Any]) -> str:
    try:
        return storable(f"{cls.__module__}.{cls.__qualname__}")
    except Exception:  # a metaclass may make even these raise
        return storable(type.__repr__(cls))


def _sort_one(
    msg: Any,
    keep: Callable[[Any], None],
    hold: Callable[[MsgTaskFinished], None],
    other: Callable[[Any], None],
) -> None:
    """Sort one message of a batch, in the order the batch arrived.

    A lifecycle message is kept, a done finish with outputs is held (see `_atomic`), anything
    else goes to `SQLiteWriter._sort`. The writer's drain repeats these lines inline; change
    both together.
    """
    cls = type(msg)
    if cls is MsgTaskProgress or cls is MsgTaskStarted:
        keep(msg)
    elif cls is MsgTaskFinished:
        outputs = msg.outputs  # usually the default (), else user data
        if (type(outputs) is tuple and not outputs) or not _carries_outputs(msg):
            keep(msg)
        else:
            hold(msg)
    else:
        other(msg)


def _carries_outputs(msg: MsgTaskFinished) -> bool:
    """Tell whether a finish holds outputs to apply atomically; never raises on odd fields."""
    outputs = msg.outputs
    if outputs is None or ((type(outputs) is tuple or type(outputs) is list) and not outputs):
        return False
    if type(msg.status) is not str:
        return False  # the fold records (or refuses) the status; its outputs are not applied
    return holds_outputs(msg)


def _reason(exc: BaseException) -> str:
    """Why a message was refused, as stored in ``dead_letters.error``; never raises."""
    return storable(f"{type(exc).__name__}: {storable(exc)}")


_Step = tuple[type[Any], Handler, list[Any]]
"""One message type of a batch: its class, its handler and its messages, in arrival order."""
_GROUP = "pipeloom_group"
_ONE = "pipeloom_one"
_OWN_SAVEPOINTS = frozenset({_GROUP, _ONE})
"""Savepoints around handler calls; a handler may use savepoints of its own, not these."""


class _TransactionEnded(Exception):
    """A handler committed or rolled back the writer's transaction (past the guard)."""

    def __init__(
        self,
        *,
        index: int,
        cls: type[Any],
        handler: Handler,
        msgs: list[Any],
        rest: list[Any],
        committed: bool,
        reason: str,
    ) -> None:
        super().__init__(reason)
        self.index = index
        """Position of the handler's step in the batch."""
        self.cls = cls
        self.handler = handler
        self.msgs = msgs
        """The messages the handler was given when it ended the transaction."""
        self.rest = rest
        """Messages of the same step not applied yet (after ``msgs``)."""
        self.committed = committed
        """True when it committed: the batch's work before it is durable."""
        self.reason = reason


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
