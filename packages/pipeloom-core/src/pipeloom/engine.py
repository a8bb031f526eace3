"""Running tasks concurrently and feeding the single writer.

Worker threads pull tasks from the (possibly endless) task iterator one at a time, so
memory does not grow with the number of tasks. Every task is dispatched through one seam,
`Executor`, so other executors can be added without touching the writer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from rich.console import Console

from pipeloom.db import Synchronous
from pipeloom.errors import DatabaseError, RunFailedError, WriterFailedError
from pipeloom.logs import console as shared_console
from pipeloom.messages import (
    SENTINEL,
    MsgRunFinished,
    MsgTaskFinished,
    utc_now,
)
from pipeloom.progress import LiveDisplay, PlainReporter, render_summary
from pipeloom.queue import DEFAULT_MAXSIZE, MessageQueue
from pipeloom.writer import Handler, Listener, SchemaFn, SQLiteWriter

__all__ = ["Executor", "RunResult", "TaskQueue", "ThreadExecutor", "WorkerFn", "run_pipeline"]

WorkerFn = Callable[[Any, "TaskQueue"], Any]
"""``worker_fn(task, msg_q)``: do the work, putting lifecycle messages on ``msg_q``."""

log = logging.getLogger("pipeloom.engine")
_ERROR_SUMMARY_CHARS = 500
_WRITER_FAILED_GRACE = 1.0
"""Seconds to let workers wind down after the writer died before raising anyway."""


@dataclass(frozen=True)
class RunResult:
    """What `run_pipeline` reports back."""

    run_id: int | None
    """The ``pipeline_runs.id`` of this run (None when no tables are kept)."""
    status: str
    """done, error (some task failed) or cancelled (Ctrl-C or fail_fast)."""
    counts: dict[str, int]
    """Tasks per terminal status."""
    failed_task_ids: list[int]
    """task_id of every task that ended in error or timeout."""
    elapsed: float
    """Wall-clock seconds from start to the writer's last commit."""
    db_path: str
    """Where the run was recorded."""
    messages: int = 0
    """Messages the writer handled (applied plus dead-lettered)."""
    dead_letters: int = 0
    """Messages the writer could not apply."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Tasks that reached a terminal status."""
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """True only when the run is ``done``: every task it took ended done or skipped."""
        return self.status == "done" and not self.failed_task_ids

    def raise_for_status(self) -> RunResult:
        """Raise `RunFailedError` unless the run is `ok`; returns the result otherwise.

        A script ending in ``run_pipeline(...).raise_for_status()`` exits non-zero when its
        run failed, so cron jobs and CI steps notice.

        Raises:
            RunFailedError: the run is not ``done`` (a task failed, it was stopped, or tasks
                are unaccounted for).
        """
        if self.ok:
            return self
        failed = ", ".join(str(t) for t in self.failed_task_ids[:10])
        more = (
            f" and {len(self.failed_task_ids) - 10} more" if len(self.failed_task_ids) > 10 else ""
        )
        which = f"; failed task ids: {failed}{more}" if failed else ""
        raise RunFailedError(
            f"{self.db_path}: run {self.run_id} ended {self.status} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.counts.items()))}){which}; "
            f"`pipeloom status {self.db_path} --run {self.run_id}` shows why",
            result=self,
        )


class TaskQueue:
    """The queue handed to a worker: forwards to the writer and notes the task's finish."""

    __slots__ = ("_put", "finished_ids", "stopping")

    def __init__(self, q: MessageQueue, stopping: threading.Event | None = None) -> None:
        """Wrap the shared message queue for one worker thread."""
        self._put = q.put
        self.finished_ids: set[int] = set()
        self.stopping = stopping if stopping is not None else threading.Event()
        """Set once the run stops admitting tasks (Ctrl-C, fail_fast): retries should end."""

    def put(self, msg: Any, block: bool = True, timeout: float | None = None) -> None:
        """Send ``msg`` to the writer (pausing if it is behind)."""
        if msg.__class__ is MsgTaskFinished:
            self.finished_ids.add(msg.task_id)
        self._put(msg, block, timeout)

    put_nowait = put


class Executor(Protocol):
    """Where tasks run. The engine hands it a loop to run on each of ``workers`` slots."""

    def start(self, workers: int, loop: Callable[[], None]) -> None:
        """Begin running ``loop`` on ``workers`` slots."""

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once every slot has returned."""


class ThreadExecutor:
    """The default executor: one daemon thread per worker slot."""

    def __init__(self) -> None:
        """No threads until `start`."""
        self._threads: list[threading.Thread] = []

    def start(self, workers: int, loop: Callable[[], None]) -> None:
        """Start ``workers`` threads running ``loop``."""
        for i in range(workers):
            t = threading.Thread(target=loop, name=f"pipeloom-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float) -> bool:
        """Wait for the threads; True when all have finished."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


class _Run:
    """State shared by the worker loops of one run."""

    def __init__(
        self,
        tasks: Iterator[Any],
        q: MessageQueue,
        worker_fn: WorkerFn,
        fail_fast: bool,
    ) -> None:
        self.tasks = tasks
        self.q = q
        self.worker_fn = worker_fn
        self.fail_fast = fail_fast
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.in_flight: dict[int, Any] = {}  # thread ident -> task
        self.exhausted = False
        self._lock_free = type(tasks) in _ATOMIC_ITERATORS

    def next_task(self) -> Any:
        if self._lock_free:
            # A list/tuple/range iterator advances in C without letting go of the GIL, so
            # each task still goes to exactly one worker. The lock convoyed instead: a holder
            # preempted inside it made every other worker sleep on it, one context switch per
            # task (100,000 x 1 tasks: 2.0-2.6 s and ~100,000 switches in about half the runs,
            # 1.5-1.6 s and ~5,800 switches without the lock).
            return self._advance()
        self._acquire()
        try:
            return self._advance()
        finally:
            self.lock.release()

    def _advance(self) -> Any:
        if self.stop.is_set() or self.exhausted:
            return _DONE
        try:
            return next(self.tasks)
        except StopIteration:
            self.exhausted = True
            return _DONE

    def _acquire(self) -> None:
        """Take the task lock, yielding the GIL a few times before sleeping on it.

        A generator's ``next()`` runs Python, so its holder is often preempted inside the
        lock; workers that then block on the lock each need a context switch to get going
        again, and that convoy persists (200,000 generator tasks: 5.5-5.9 s with 220,000+
        voluntary switches). Yielding with ``sleep(0)`` lets the holder finish first (3.0-3.1 s,
        ~12,000 switches). A generator that blocks on I/O still gets a blocking wait after
        the spins instead of burning CPU.
        """
        lock = self.lock
        if lock.acquire(False):
            return
        for _ in range(_LOCK_SPINS):
            time.sleep(0)
            if lock.acquire(False):
                return
        lock.acquire()

    def loop(self) -> None:
        q = TaskQueue(self.q, self.stop)
        ident = threading.get_ident()
        while True:
            task = self.next_task()
            if task is _DONE:
                return
            self.in_flight[ident] = task
            try:
                if not self._run_one(task, q):
                    return
            finally:
                self.in_flight.pop(ident, None)

    def _run_one(self, task: Any, q: TaskQueue) -> bool:
        """Run one task; False when the worker must stop (the writer is gone)."""
        task_id = getattr(task, "task_id", None)
        try:
            self.worker_fn(task, q)
        except WriterFailedError:
            self.stop.set()
            return False
        except BaseException as exc:  # record any failure as the task's error, then go on
            return self._record_failure(task, task_id, exc, q)
        else:
            if task_id is None or task_id in q.finished_ids:
                return True
            # A worker that returns without reporting a finish did its work.
            return self._post(
                MsgTaskFinished(
                    task_id,
                    "done",
                    utc_now(),
                    name=getattr(task, "name", None),
                    key=getattr(task, "key", None),
                )
            )
        finally:
            q.finished_ids.clear()

    def _record_failure(self, task: Any, task_id: Any, exc: BaseException, q: TaskQueue) -> bool:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop the run
            self.stop.set()
        text = "".join(traceback.format_exception(exc))
        summary = f"{type(exc).__name__}: {exc}"[:_ERROR_SUMMARY_CHARS]
        if self.fail_fast and not self.stop.is_set():
            log.warning("fail_fast: task %s failed (%s); not starting the rest", task_id, summary)
            self.stop.set()
        if task_id is None or task_id in q.finished_ids:
            return isinstance(exc, Exception)
        msg = MsgTaskFinished(
            task_id,
            "error",
            utc_now(),
            message=summary,
            error=text,
            name=getattr(task, "name", None),
            key=getattr(task, "key", None),
        )
        return self._post(msg) and isinstance(exc, Exception)

    def _post(self, msg: Any) -> bool:
        try:
            self.q.put(msg)
        except WriterFailedError:
            self.stop.set()
            return False
        return True

    def cancel_rest(self) -> int:
        """Record every task never started as cancelled; returns how many."""
        n = 0
        with self.lock:
            if self.exhausted:
                return 0
            for task in self.tasks:
                task_id = getattr(task, "task_id", None)
                if task_id is None:
                    continue
                now = utc_now()
                msg = MsgTaskFinished(
                    task_id,
                    "cancelled",
                    now,
                    message="not started: run was stopped",
                    name=getattr(task, "name", None),
                    key=getattr(task, "key", None),
                )
                if not self._post(msg):
                    break
                n += 1
            self.exhausted = True
        return n


_DONE = object()
_LOCK_SPINS = 100
"""GIL yields a worker tries before it sleeps on the task lock."""
_ATOMIC_ITERATORS: frozenset[type] = frozenset(
    {type(iter([])), type(iter(())), type(iter(range(0)))}
)
"""Iterators whose ``next`` runs entirely in C under the GIL: safe to share without a lock."""


def _resolve_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Iterable[Any], Any]:
    """Accept both ``run_pipeline(tasks, db_path)`` and the older ``(db_path, tasks)``."""
    if len(args) > 2:
        raise TypeError(
            f"run_pipeline takes tasks and db_path positionally ({len(args)} given); "
            "pass the rest as keywords"
        )
    tasks = kwargs.pop("tasks", None)
    db_path = kwargs.pop("db_path", None)
    positional = list(args)
    if positional and isinstance(positional[0], str | os.PathLike):
        # Older form: run_pipeline(Path("etl.db"), tasks, ...)
        db_path = positional.pop(0) if db_path is None else db_path
        if positional:
            tasks = positional.pop(0)
    else:
        if positional:
            tasks = positional.pop(0)
        if positional:
            db_path = positional.pop(0)
    if tasks is None:
        raise TypeError("run_pipeline needs tasks: an iterable of TaskDef (a list or generator)")
    if isinstance(tasks, str | bytes | os.PathLike):
        raise TypeError(f"tasks must be an iterable of TaskDef, got {type(tasks).__name__}")
    return tasks, Path("./pipeloom.db") if db_path is None else db_path


def run_pipeline(
    *args: Any,
    worker_fn: WorkerFn,
    workers: int | None = None,
    wal: bool = True,
    store_task_status: bool = True,
    handlers: Mapping[type[Any], Handler] | None = None,
    schema: SchemaFn | None = None,
    fail_fast: bool = False,
    progress: bool | None = None,
    console: Console | None = None,
    run_name: str = "pipeline",
    params: Mapping[str, Any] | None = None,
    synchronous: Synchronous = "NORMAL",
    batch_size: int | None = None,
    commit_interval: float | None = None,
    queue_size: int = DEFAULT_MAXSIZE,
    listeners: Iterable[Listener] = (),
    executor: Executor | None = None,
    summary_hint: str | None = None,
    handle_signals: bool = True,
    **kw: Any,
) -> RunResult:
    """Run ``worker_fn(task, msg_q)`` for every task, persisting through one writer thread.

    Called as ``run_pipeline(tasks, db_path=Path("./pipeloom.db"), *, worker_fn, ...)``; the
    older ``run_pipeline(db_path, tasks, ...)`` form also works.

    Args:
        *args: ``tasks`` and ``db_path`` positionally, in either order.
        worker_fn: does one task; sends Started/Progress/Finished on ``msg_q``. If it raises,
            the task is recorded as ``error`` with the traceback; if it returns without a
            Finished message, the task is recorded ``done``.
        workers: worker threads; default min(number of tasks, CPU count).
        wal: write-ahead logging (readers never block the writer).
        store_task_status: False records nothing of pipeloom's own, only user handlers.
        handlers: user message type -> ``handler(conn, msgs)`` applied in batches.
        schema: ``schema(conn)`` creates user tables when the writer starts.
        fail_fast: stop admitting tasks after the first failure; the rest are cancelled.
        progress: True live bars, False nothing, None (default) bars on a terminal and plain
            lines otherwise.
        console: where progress and the summary go (the shared console by default).
        run_name: stored on the ``pipeline_runs`` row.
        params: JSON-able parameters stored on the run row.
        synchronous: NORMAL or FULL (fsync every commit; survives power loss).
        batch_size: most messages per transaction.
        commit_interval: longest a lone message waits before its commit (seconds).
        queue_size: messages that may wait for the writer before workers pause.
        listeners: extra post-commit listeners.
        executor: where tasks run (threads by default).
        summary_hint: an extra line for the summary (the CLI's "browse with" command).
        handle_signals: on the main thread, turn Ctrl-C into a graceful stop.
        **kw: ``tasks=`` and ``db_path=`` by keyword.

    Returns:
        A `RunResult`; Ctrl-C gives ``status="cancelled"`` rather than an exception.

    Raises:
        DatabaseError: the database cannot be opened or prepared.
        WriterFailedError: the writer stopped mid-run (disk full, file removed); what it
            committed before stays.
    """
    unknown = set(kw) - {"tasks", "db_path"}
    if unknown:
        raise TypeError(f"run_pipeline got unexpected keyword(s): {', '.join(sorted(unknown))}")
    tasks, db_path = _resolve_call(args, kw)
    total = len(tasks) if isinstance(tasks, Sized) else None
    cpu = os.cpu_count() or 1
    if workers is None:
        workers = max(1, min(total, cpu)) if total is not None else cpu
    if workers < 1:
        raise ValueError(f"workers={workers}: use 1 or more")
    out = console or shared_console
    if progress is None:
        progress = out.is_terminal
        plain = not progress
    else:
        plain = False
    display: LiveDisplay | PlainReporter | None = None
    if progress:
        display = LiveDisplay(total, console=out, title=run_name)
    elif plain:
        display = PlainReporter(total, console=out, title=run_name)

    q = MessageQueue(queue_size)
    writer_kwargs: dict[str, Any] = {}
    if batch_size is not None:
        writer_kwargs["batch_size"] = batch_size
    if commit_interval is not None:
        writer_kwargs["commit_interval"] = commit_interval
    writer = SQLiteWriter(
        db_path,
        q,
        wal=wal,
        store_task_status=store_task_status,
        handlers=handlers,
        schema=schema,
        listeners=[*([display] if display is not None else []), *listeners],
        run_name=run_name,
        workers=workers,
        tasks_total=total,
        params=params,
        synchronous=synchronous,
        **writer_kwargs,
    )
    started = time.perf_counter()
    writer.start()
    writer.ready.wait()
    if writer.error is not None:
        writer.join()
        if isinstance(writer.error, DatabaseError):
            raise writer.error
        raise DatabaseError(f"{db_path}: {writer.error}") from writer.error

    run = _Run(iter(tasks), q, worker_fn, fail_fast)
    pool = executor or ThreadExecutor()
    interrupts = _InterruptHandler(run) if handle_signals else None
    with contextlib.ExitStack() as stack:
        if interrupts is not None:
            stack.enter_context(interrupts)
        if display is not None:
            stack.enter_context(display)
        pool.start(workers, run.loop)
        abandoned = False
        writer_failed_at: float | None = None
        while not pool.join(0.1):
            if writer.error is not None:
                run.stop.set()
                # Nothing more can be stored: workers blocked on the queue wake at once, but
                # a task deep in its own work may take hours; do not wait for it.
                if writer_failed_at is None:
                    writer_failed_at = time.monotonic()
                elif time.monotonic() - writer_failed_at > _WRITER_FAILED_GRACE:
                    break
            if interrupts is not None and interrupts.count >= 2:
                abandoned = True
                break
        status = _finish_run(run, writer, abandoned, interrupts)
        if writer.error is None:
            _shutdown(q)
        writer.join()
    elapsed = time.perf_counter() - started
    if writer.error is not None:
        raise WriterFailedError(
            f"{db_path}: the writer stopped, so the run was aborted ({writer.error}); "
            "rows committed before that are kept"
        ) from writer.error
    counts = dict(writer.final_counts or writer.status_counts)
    result = RunResult(
        run_id=writer.run_id,
        status=writer.run_status or status,
        counts=counts,
        failed_task_ids=list(writer.failed_task_ids),
        elapsed=elapsed,
        db_path=str(db_path),
        messages=writer.messages_applied + writer.messages_dead,
        dead_letters=writer.messages_dead,
    )
    if display is not None:
        out.print(
            render_summary(
                counts,
                elapsed=elapsed,
                messages=result.messages,
                db_path=str(db_path),
                run_id=result.run_id,
                hint=summary_hint,
            )
        )
    return result


def _finish_run(
    run: _Run, writer: SQLiteWriter, abandoned: bool, interrupts: _InterruptHandler | None
) -> str:
    """Record what never ran (and, after a second Ctrl-C, what was cut short)."""
    if writer.error is not None:
        return "error"
    cancelled = run.stop.is_set()
    if cancelled:
        run.cancel_rest()
    if abandoned:
        for task in list(run.in_flight.values()):
            task_id = getattr(task, "task_id", None)
            if task_id is not None:
                run._post(
                    MsgTaskFinished(
                        task_id,
                        "interrupted",
                        utc_now(),
                        message="stopped by a second Ctrl-C",
                        name=getattr(task, "name", None),
                        key=getattr(task, "key", None),
                    )
                )
    if abandoned:
        status = "interrupted"
    elif interrupts is not None and interrupts.count:
        status = "cancelled"
    elif cancelled:
        status = "cancelled" if not run.fail_fast else "error"
    else:
        status = ""  # let the writer decide from the task counts
    if status and writer.error is None:
        run._post(MsgRunFinished(status))
    return status or "done"


def _shutdown(q: MessageQueue) -> None:
    q.put_nowait(SENTINEL)


class _InterruptHandler:
    """First Ctrl-C: stop admitting tasks. Second: stop waiting for the ones in flight."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.count = 0
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.run.stop.set()
        if self.count == 1:
            shared_console.print(
                "[yellow]Stopping: letting running tasks finish (Ctrl-C again to abandon them)"
            )

    def __enter__(self) -> _InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
