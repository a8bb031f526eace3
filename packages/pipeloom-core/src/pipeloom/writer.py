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

The writer's parts live in `pipeloom.record`: this module holds the thread, its drain and
its public names; `record/_lifecycle.py` opens, keeps alive and closes the run;
`record/_batch.py` applies a batch in one transaction; `record/_handlers.py` runs user
handlers in a sandbox (savepoints, the authorizer, dead letters).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeloom._control import RunEnd
from pipeloom._text import storable
from pipeloom.db import Synchronous
from pipeloom.errors import WriterFailedError
from pipeloom.lease import heartbeat_every
from pipeloom.messages import SENTINEL, MsgTaskFinished, MsgTaskProgress, MsgTaskStarted
from pipeloom.options import RunOptions
from pipeloom.queue import MessageQueue, rows_of
from pipeloom.record._atomic import holds_outputs
from pipeloom.record._batch import BatchApplier
from pipeloom.record._fileid import FileIdentity
from pipeloom.record._fold import AppliedBatch
from pipeloom.record._handlers import HandlerSandbox
from pipeloom.record._lifecycle import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMMIT_INTERVAL,
    QueueLike,
    SchemaFn,
    writer_settings,
)
from pipeloom.record._registry import Handler, HandlerRegistry
from pipeloom.record._runs import LiveCounts
from pipeloom.retention import Retention
from pipeloom.tasklogs import DEFAULT_TASK_LOG_LIMIT, TaskLogStore

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COMMIT_INTERVAL",
    "AppliedBatch",
    "Handler",
    "Listener",
    "SQLiteWriter",
    "SchemaFn",
]

_LINGER_TICK = 0.002
"""While lingering, how often the writer looks for more messages (seconds)."""

Listener = Callable[[AppliedBatch], None]
"""Called in the writer thread after each commit; must be quick and must not raise."""


class SQLiteWriter(HandlerRegistry, BatchApplier, threading.Thread):
    """The thread that owns the database connection and applies every message.

    Construct it, register handlers (before ``start``), start it, put messages on
    ``msg_q``, then put ``SENTINEL`` and ``join``. ``run_pipeline`` does all of this.
    """

    def __init__(
        self,
        db_path: str | Path,
        msg_q: QueueLike,
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
        settings = writer_settings(
            options,
            wal=wal,
            synchronous=synchronous,
            batch_size=batch_size,
            commit_interval=commit_interval,
            lease=lease,
            task_log_limit=task_log_limit,
            listeners=listeners,
            retention=retention,
            run_name=run_name,
        )
        wal, synchronous, lease = settings.wal, settings.synchronous, settings.lease
        batch_size, commit_interval = settings.batch_size, settings.commit_interval
        task_log_limit, retention = settings.task_log_limit, settings.retention
        self.lease = lease
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
        self._listeners: list[Listener] = list(settings.listeners)
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
        """task_id of every task that ended in error or timeout."""
        self.failed_sample: list[tuple[int, str, str]] = []
        """(task_id, name, one-line error) of the first failed tasks, for the summary."""
        self._run_end: RunEnd | None = None
        self._stop_hint: str | None = None
        self._uncounted = 0
        self._conn: sqlite3.Connection | None = None
        self._warned_types: set[type[Any]] = set()
        self._file: FileIdentity | None = None
        """The database file (and its WAL) this writer opened, to notice it being replaced."""
        self._file_checked = 0.0
        """When `_check_file` last looked at the path (monotonic seconds)."""
        self._sandbox = HandlerSandbox()
        """Runs user handlers; its authorizer guards the batch's transaction."""
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

    def _loop(self) -> None:
        get, get_nowait = self.msg_q.get, self.msg_q.get_nowait
        drained: Callable[[], None] | None = None
        rows_applied: Callable[[int], None] | None = None
        if type(self.msg_q) is MessageQueue:  # drain its deque directly: a call less a message
            get_nowait = self.msg_q.buffer.get_nowait
            drained = self.msg_q.drained
            rows_applied = self.msg_q.rows_applied
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
            rows = _sort_one(first, keep, hold, other)
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
                            if type(outputs) is tuple and not outputs:
                                keep(msg)
                            else:
                                rows += rows_of(msg)
                                (hold if _carries_outputs(msg) else keep)(msg)
                        elif msg is SENTINEL:
                            stop = True
                            break
                        else:
                            other(msg)
                except queue.Empty:
                    pass
                # Held rows do not shorten the batch: the queue's bound already caps them, and
                # fewer, larger executemany calls are faster (benchmarks/README.md).
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
            try:
                self._apply(lifecycle, held, others, taken)
            finally:
                if rows_applied is not None:
                    rows_applied(rows)  # the workers paused on these rows may go on
            if stop:
                return
            self._heartbeat()

    def raise_if_failed(self) -> None:
        """Re-raise the writer's fatal error in the caller's thread.

        Raises:
            WriterFailedError: the writer stopped before SENTINEL.
        """
        if self.error is not None:
            raise WriterFailedError(f"{self.db_path}: {self.error}") from self.error


def _sort_one(
    msg: Any,
    keep: Callable[[Any], None],
    hold: Callable[[MsgTaskFinished], None],
    other: Callable[[Any], None],
) -> int:
    """Sort one message of a batch, in the order the batch arrived; the rows it carries.

    A lifecycle message is kept, a done finish with outputs is held (see `_atomic`), anything
    else goes to `SQLiteWriter._sort`. The writer's drain repeats these lines inline; change
    both together.
    """
    cls = type(msg)
    if cls is MsgTaskProgress or cls is MsgTaskStarted:
        keep(msg)
    elif cls is MsgTaskFinished:
        outputs = msg.outputs  # usually the default (), else user data
        if type(outputs) is tuple and not outputs:
            keep(msg)
        else:
            (hold if _carries_outputs(msg) else keep)(msg)
            return rows_of(msg)
    else:
        other(msg)
    return 0


def _carries_outputs(msg: MsgTaskFinished) -> bool:
    """Tell whether a finish holds outputs to apply atomically; never raises on odd fields."""
    outputs = msg.outputs
    if outputs is None or ((type(outputs) is tuple or type(outputs) is list) and not outputs):
        return False
    if type(msg.status) is not str:
        return False  # the fold records (or refuses) the status; its outputs are not applied
    return holds_outputs(msg)


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
