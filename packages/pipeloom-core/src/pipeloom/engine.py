"""Running tasks concurrently and feeding the single writer.

The engine owns admission: it takes tasks from the (possibly endless) task source one at a
time, at most ``workers`` in flight, so memory does not grow with the number of tasks. Each
task is submitted to an `~pipeloom.executors.Executor`, which reports its completion back;
the completion frees the slot for the next task. The engine also owns what the record says
about the run as a whole: how many tasks it took, why it stopped, and what failed outside any
task (a raising task source, a broken executor). See docs/architecture.md for the journey.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import operator
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from pipeloom._control import RunEnd
from pipeloom._idset import IdSet
from pipeloom._text import exc_summary, exc_text, storable
from pipeloom.alerts import start as start_alerts
from pipeloom.db import Synchronous
from pipeloom.errors import (
    DatabaseError,
    ExecutorFailedError,
    Interrupted,
    InvalidArgumentError,
    PipeloomError,
    WriterFailedError,
)
from pipeloom.executors import Executor, TaskQueue, ThreadExecutor, WorkerFn, resolve_executor
from pipeloom.executors._remote import RemoteTaskError
from pipeloom.logs import console as shared_console
from pipeloom.messages import SENTINEL, MsgTaskFinished, utc_now
from pipeloom.options import RunOptions, check_settings
from pipeloom.progress import LiveDisplay, PlainReporter, render_failures, render_summary
from pipeloom.queue import DEFAULT_MAXSIZE, MessageQueue
from pipeloom.result import RunResult
from pipeloom.retention import Retention
from pipeloom.status import SIGNAL_STOPS, StopReason, decide_run_status
from pipeloom.tasklogs import DEFAULT_TASK_LOG_LIMIT
from pipeloom.writer import Handler, Listener, SchemaFn, SQLiteWriter

__all__ = [
    "Executor",
    "FollowUp",
    "RunResult",
    "TaskQueue",
    "ThreadExecutor",
    "WorkerFn",
    "run_pipeline",
]

log = logging.getLogger("pipeloom.engine")
_GRACE = 1.0
"""Seconds to let workers wind down after the writer or executor failed before ending anyway."""
_LABEL_CHARS = 80


_DEFAULTS = RunOptions()
FollowUp = Callable[[Any, Any], Iterable[Any]]
"""``follow_up(task, returned)``: the tasks a completed task makes ready (stages use it)."""


class TaskSourceError(PipeloomError, ValueError):
    """The task source is unusable before anything runs (duplicate or non-integer ids)."""


_NO_ID_TYPES: frozenset[type] = frozenset({int, str, bytes, float, tuple, list, dict, type(None)})
"""Types whose instances cannot carry a ``task_id``: their tasks are numbered by position.

Looking the attribute up on them raises (and catches) an AttributeError: ~0.5 us a task,
0.1 s before a run of 100,000 plain ints even starts.
"""


def _task_id(task: Any, position: int) -> int:
    """The id a task is recorded under: its ``task_id``, else its 1-based position.

    Raises:
        TaskSourceError: the task's ``task_id`` is not an integer.
    """
    if type(task) in _NO_ID_TYPES:
        return position
    task_id = getattr(task, "task_id", None)
    if task_id is None:
        return position
    if type(task_id) is int:
        return task_id
    try:
        return operator.index(task_id)
    except TypeError:
        raise TaskSourceError(
            f"task #{position} has task_id={storable(repr(task_id), _LABEL_CHARS)}: task ids "
            "must be integers (put a string identity in TaskDef.key)"
        ) from None


def _label(task: Any, task_id: int) -> tuple[str | None, str | None]:
    """(name, key) to record for a task the engine finishes itself."""
    if type(task) is int or type(task) is str:  # no attributes to look up; repr is safe
        return storable(f"task {task_id}: {task!r}", _LABEL_CHARS), None
    name = getattr(task, "name", None)
    if name is None and getattr(task, "task_id", None) is None:
        try:
            text = repr(task)
        except Exception as exc:  # a user __repr__ may raise anything
            text = f"<{type(task).__name__}: repr failed: {exc_summary(exc)}>"
        name = storable(f"task {task_id}: {text}", _LABEL_CHARS)
    return name, getattr(task, "key", None)


class _Run:
    """One run's admission and accounting; the `Completions` an executor reports to."""

    def __init__(
        self,
        tasks: Iterator[Any],
        q: MessageQueue,
        executor: Executor,
        fail_fast: bool,
        total: int | None,
        follow_up: FollowUp | None = None,
        checked: bool = False,
    ) -> None:
        self.tasks = tasks
        self.q = q
        self.executor = executor
        self.fail_fast = fail_fast
        self.total = total
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        """Set once admission stops (Ctrl-C, fail_fast, a failed writer or executor)."""
        self.idle = threading.Event()
        """Set once every slot is free and no task will be admitted any more."""
        self.in_flight: dict[int, Any] = {}
        self.exhausted = False
        self.stop_reason: str | None = None
        self.stop_cause: str | None = None
        """What stopped the run early, first cause wins (a `pipeloom.status.StopReason`)."""
        self.drained = False
        """The source said StopIteration: nothing was left unstarted in it."""
        self.error: str | None = None
        """Why the run failed as a whole (task source, executor), for the run row."""
        self.abandoned = False
        self.executor_broken = False
        self._seq = itertools.count(1)
        self._refused = 0
        self._taken: int | None = None
        self._slots = 0
        self._workers = 0
        self.follow_up = follow_up
        self.ready: deque[Any] = deque()
        """Tasks made ready by completions (`follow_up`): admitted before the source's next."""
        # A list/tuple/range iterator advances in C without letting go of the GIL, so each
        # task still goes to exactly one worker without the lock. The lock convoyed instead:
        # a holder preempted inside it made every other worker sleep on it, one context
        # switch per task (100,000 x 1 tasks: 2.0-2.6 s and ~100,000 switches in about half
        # the runs, 1.5-1.6 s and ~5,800 switches without it). Their ids are checked up front.
        # The position is taken in the same C call as the task (enumerate): numbered after
        # next(), a thread switch in between gave two tasks each other's position.
        # Only a source whose ids were checked before the run (``checked``: a list, tuple or
        # range) may skip the per-task check; iter([...]) handed in is checked as it goes.
        self._lock_free = checked and type(tasks) in _ATOMIC_ITERATORS and follow_up is None
        self._numbered: Iterator[tuple[int, Any]] = enumerate(tasks, 1)
        self._source = tasks
        self._length = operator.length_hint(tasks) if self._lock_free else 0
        self._ids = IdSet()
        self._inline = bool(getattr(executor, "admits_inline", False))
        """Completions arrive on the task's own worker thread, which may wait on the source."""
        self._admitter: _Admitter | None = None
        self._open = 0
        """Tasks taken from a locked source and not yet completed (see `nothing_running`)."""
        self._open_lock = threading.Lock()
        self.cut_short = False
        """The run ended while a slot still waited on the task source (never waited for)."""

    # -- admission ---------------------------------------------------------------------

    def begin(self, workers: int) -> None:
        """Fill every slot once; each completion refills its own slot after that.

        A list, tuple or range is read here, on the caller's thread: its ``next`` cannot
        block. Any other source may (a generator waiting for files to appear), so it is read
        on the admitter thread, never on the main thread, which must stay free to notice a
        stop, nor on an executor's shared thread (the process collector, the event loop).
        """
        with self.lock:
            self._slots = self._workers = workers
        if self._lock_free:
            for _ in range(workers):
                self._fill()
            return
        self._admitter = _Admitter(self._fill)
        self._admitter.request(workers)

    def _refill(self) -> None:
        """Fill one slot: here, where this thread may wait on the source, else on the admitter."""
        if self._admitter is None or self._inline:
            self._fill()
        else:
            self._admitter.request(1)

    def nothing_running(self) -> bool:
        """True when no task taken from a locked source is still running or being recorded.

        A stop then ends the run at once, even while a slot waits in the source's ``next()``
        (which may not return for hours). A list's slots never wait there; they retire.
        """
        if self._lock_free:
            return False
        with self._open_lock:
            return self._open == 0

    def _closed_one(self) -> None:
        if not self._lock_free:
            with self._open_lock:
                self._open -= 1

    def close(self) -> None:
        """The run is over: the admitter thread ends (now, or when its ``next()`` returns)."""
        if self._admitter is not None:
            self._admitter.close()

    def _fill(self) -> None:
        while True:
            got = self._take()
            if got is None:
                with self.lock:
                    self._slots -= 1
                    if self._slots == 0:
                        self.idle.set()
                return
            task_id, task = got
            self.in_flight[task_id] = task
            try:
                self.executor.submit(task_id, task)
                return
            except Exception as exc:  # this task cannot be handed over: it is its error
                self.in_flight.pop(task_id, None)
                log.error("task %s could not be submitted: %s", task_id, exc_summary(exc))
                self._finish_failed(task_id, task, exc)
                self._closed_one()

    def _take(self) -> tuple[int, Any] | None:
        if self._lock_free:
            if self.stopping.is_set() or self.exhausted or self.abandoned:
                return None
            try:
                position, task = next(self._numbered)
            except StopIteration:
                self.exhausted = self.drained = True
                return None
            return _task_id(task, position), task
        self._acquire()
        try:
            return self._advance()
        finally:
            self.lock.release()

    def _advance(self) -> tuple[int, Any] | None:
        if self.stopping.is_set() or self.abandoned:
            return None
        try:
            # Ready follow-ups first (depth first): a finished parse(x) feeds load(x) at once
            # instead of piling up behind new source items.
            if self.ready:
                task = self.ready.popleft()
            elif self.exhausted:
                return None
            else:
                task = next(self.tasks)
                if self.stopping.is_set() or self.abandoned:
                    # It came after the stop (a source that waited): it is not started, and
                    # the run may be over already.
                    return None
        except StopIteration:
            self.exhausted = self.drained = True
            return None
        except Exception as exc:
            self._source_failed(f"the task source raised {exc_summary(exc)}", exc)
            return None
        position = next(self._seq)
        try:
            task_id = _task_id(task, position)
        except TaskSourceError as exc:
            self._refused += 1
            self._source_failed(str(exc), None)
            return None
        if not self._ids.add(task_id):
            self._refused += 1
            self._source_failed(
                f"the task source gave task_id {task_id} twice (again at task #{position}); "
                "task ids must be unique within a run, so it was stopped there",
                None,
            )
            return None
        with self._open_lock:
            self._open += 1
        return task_id, task

    def _source_failed(self, reason: str, exc: BaseException | None) -> None:
        self.exhausted = True
        if self.stop_cause is None:
            self.stop_cause = "source_failed"
        detail = exc_text(exc) if exc is not None else reason
        self.error = reason if exc is None else f"{reason}\n\n{detail}"
        log.error("run stops admitting tasks: %s", reason)

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

    @property
    def taken(self) -> int:
        """Tasks admitted (each owes the record exactly one terminal row); read at the end.

        Workers share the position counter (or a list's iterator) without a lock, so it is
        read once, after admission stopped.
        """
        if self._taken is None:
            if self._lock_free:  # a list, tuple or range: what is left of it was not taken
                self._taken = self._length - operator.length_hint(self._source)
            else:
                self._taken = next(self._seq) - 1 - self._refused
        return self._taken

    # -- completions (called from executor threads) -----------------------------------

    def task_done(
        self,
        task_id: int,
        task: Any,
        error: BaseException | None,
        finished: bool,
        returned: Any = None,
    ) -> None:
        """Record how the task ended unless its worker did, then refill its slot."""
        self.in_flight.pop(task_id, None)
        if self.abandoned:
            self._closed_one()
            return  # already recorded interrupted; the run is over
        if error is None:
            if not finished:
                # A worker that returns without reporting a finish did its work.
                name, key = _label(task, task_id)
                self._post(MsgTaskFinished(task_id, "done", utc_now(), name=name, key=key))
        else:
            self._task_raised(task_id, task, error, finished)
        if self.follow_up is not None:
            self._follow(task_id, task, returned)
        self._closed_one()  # recorded: a stop may end the run from here on
        self._refill()

    def _follow(self, task_id: int, task: Any, returned: Any) -> None:
        """Queue the tasks this completion made ready; wake idle slots for all but one."""
        try:
            more = list(self.follow_up(task, returned)) if self.follow_up is not None else []
        except Exception as exc:  # a bug in the hook: stop admitting rather than lose tasks
            self._source_failed(
                f"follow-up tasks of task {task_id} failed: {exc_summary(exc)}", exc
            )
            return
        if not more:
            return
        self.ready.extend(more)
        # This slot takes one; slots that went idle (source exhausted) take the others.
        woken = 0
        with self.lock:
            while woken < len(more) - 1 and self._slots < self._workers:
                self._slots += 1
                woken += 1
        for _ in range(woken):
            self._refill()

    def _task_raised(self, task_id: int, task: Any, error: BaseException, finished: bool) -> None:
        if isinstance(error, WriterFailedError):
            self.stop("interrupted", "writer_failed")
            return
        if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: stop the run
            self.stop("cancelled", "sigint" if isinstance(error, KeyboardInterrupt) else None)
        if self.fail_fast and not self.stopping.is_set():
            self.stop("cancelled", "fail_fast")  # before the slow part: logging, formatting
            log.warning(
                "fail_fast: task %s failed (%s); not starting the rest",
                task_id,
                error if isinstance(error, RemoteTaskError) else exc_summary(error),
            )
        if not finished:
            self._finish_failed(task_id, task, error)

    def _finish_failed(self, task_id: int, task: Any, error: BaseException) -> None:
        name, key = _label(task, task_id)
        remote = isinstance(error, RemoteTaskError)
        text = error.remote_traceback if isinstance(error, RemoteTaskError) else None
        text = text or exc_text(error)
        log.debug("task %s (%s) failed:\n%s", task_id, name or key, text.rstrip())  # -vv
        self._post(
            MsgTaskFinished(
                task_id,
                "error",
                utc_now(),
                message=str(error) if remote else exc_summary(error),
                error=text,
                name=name,
                key=key,
            )
        )

    def executor_failed(self, error: BaseException) -> None:
        """The executor cannot go on: stop admitting; the run is recorded ``error``."""
        name = type(self.executor).__name__
        log.error("executor %s failed: %s", name, exc_summary(error))
        if self.error is None:
            self.error = f"executor {name} failed: {exc_summary(error)}\n\n{exc_text(error)}"
        self.executor_broken = True
        cause = getattr(error, "stop_reason", None)  # an executor may say more (cluster_lost)
        self.stop("cancelled", cause if isinstance(cause, str) else "executor_failed")

    def stop(self, reason: str, cause: str | None = None) -> None:
        """Stop admitting tasks; the first reason and the first cause given are recorded.

        Args:
            reason: how the run ends if nothing worse happens: ``cancelled`` (let running
                tasks finish) or ``interrupted`` (abandon them).
            cause: what stopped it, a `pipeloom.status.StopReason` (shown in every view and
                deciding the exit code).
        """
        # No lock: the Ctrl-C handler calls this on the main thread, which may hold it.
        if self.stop_reason is None:
            self.stop_reason = reason
        # A signal outranks any other cause (it decides the exit code, whatever else
        # happened); otherwise, and among signals, the first cause wins.
        if cause is not None and (
            self.stop_cause is None
            or (cause in SIGNAL_STOPS and self.stop_cause not in SIGNAL_STOPS)
        ):
            self.stop_cause = cause
        self.stopping.set()

    def _post(self, msg: Any) -> bool:
        try:
            self.q.put(msg)
        except WriterFailedError:
            self.stop("interrupted", "writer_failed")
            return False
        return True

    # -- the end ---------------------------------------------------------------------

    def abandon(self, why: str) -> int:
        """Record every task still in flight ``interrupted`` and stop waiting for them."""
        self.stop_reason = "interrupted"  # whatever stopped admission first, this ends it
        self.abandoned = True
        self.stopping.set()
        tasks = list(self.in_flight.items())
        for task_id, task in tasks:
            name, key = _label(task, task_id)
            self._post(
                MsgTaskFinished(task_id, "interrupted", utc_now(), message=why, name=name, key=key)
            )
        return len(tasks)

    def end_message(self) -> RunEnd:
        """The engine's account of the run for the writer's run row."""
        return RunEnd(
            taken=self.taken,
            stop=self.stop_reason if self.stop_reason in ("cancelled", "interrupted") else None,
            error=self.error,
            note=self._note(),
            cause=self.stop_cause,
            planned=self.total,
            not_started=self.not_started(),
        )

    def not_started(self) -> int | None:
        """Tasks the source still held when the run stopped (None when it has no length)."""
        if self.drained or (self.stop_reason is None and self.stop_cause is None):
            return 0
        if self.total is None:
            return None
        return max(0, self.total - self.taken - self._refused)

    def _note(self) -> str | None:
        if self.drained or (self.stop_reason is None and self.stop_cause is None):
            return None
        left = self.not_started()
        if left is None:
            return (
                "stopped before the task source was exhausted; tasks not started were not recorded"
            )
        return f"{left} task(s) not started: the run was stopped" if left else None


class _Admitter:
    """A daemon thread that fills slots from a task source that may block.

    It is the only place such a source's ``next()`` runs besides a threads executor's own
    workers, so nothing that decides the run is over (the main thread) or that other tasks
    depend on (the process collector, the event loop, the Dask dispatcher) ever waits on it.
    When the run ends while it waits inside ``next()``, it is left there, and ends when that
    returns.
    """

    def __init__(self, fill: Callable[[], None]) -> None:
        self._fill = fill
        self._cond = threading.Condition(threading.Lock())
        self._wanted = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="pipeloom-admit", daemon=True)
        self._thread.start()

    def request(self, n: int) -> None:
        """Fill ``n`` more slots (never blocks the caller)."""
        with self._cond:
            self._wanted += n
            self._cond.notify()

    def close(self) -> None:
        """Fill nothing more."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                n, self._wanted = self._wanted, 0
            for _ in range(n):
                try:
                    self._fill()
                except Exception:  # a bug here would leave a slot unfilled: say so loudly
                    log.exception("pipeloom-admit: filling a slot failed")


_LOCK_SPINS = 100
"""GIL yields a worker tries before it sleeps on the task lock."""
_ATOMIC_ITERATORS: frozenset[type] = frozenset(
    {type(iter([])), type(iter(())), type(iter(range(0)))}
)
"""Iterators whose ``next`` runs entirely in C under the GIL: safe to share without a lock."""


def _check_ids(tasks: list[Any] | tuple[Any, ...]) -> None:
    """Refuse an in-memory task list with duplicate or non-integer ids before anything runs.

    Raises:
        TaskSourceError: naming the first duplicate and both its positions.
    """
    if {type(task) for task in tasks} <= _NO_ID_TYPES:
        return  # every id is a position: unique
    seen: dict[int, int] = {}
    for position, task in enumerate(tasks, 1):
        task_id = _task_id(task, position)
        first = seen.setdefault(task_id, position)
        if first != position:
            raise TaskSourceError(
                f"task_id {task_id} appears twice in the task list (tasks #{first} and "
                f"#{position}); task ids must be unique within a run"
            )


MAX_WORKERS = 10_000
"""Most tasks in flight at once: beyond it, threads and processes cannot start anyway."""


def _check_arguments(
    pool: Executor, workers: object, total: int | None, follows: bool, **settings: Any
) -> int:
    """Refuse a setting no run could use, before anything starts; return the worker count.

    ``workers`` beyond the number of tasks are never started (DESIGN: min(tasks, CPUs) by
    default; ``-w 1000000`` for 5 tasks runs them on 5). Stages add tasks as they go, so
    with ``follows`` the count is not capped by the source's length.

    Raises:
        InvalidArgumentError: naming the argument, the value and what it takes.
    """
    check_settings("run_pipeline", **settings)
    if workers is None:
        return pool.default_workers(total, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise InvalidArgumentError(
            f"run_pipeline(workers={workers!r}): use a whole number from 1 to {MAX_WORKERS}"
        )
    if total is not None and not follows:
        return max(1, min(workers, total))
    return workers


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
    worker_fn: WorkerFn | None = None,
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
    executor: str | Executor | None = None,
    summary_hint: str | None = None,
    handle_signals: bool = True,
    lease: float | None = None,
    task_log_limit: int = DEFAULT_TASK_LOG_LIMIT,
    options: RunOptions | None = None,
    follow_up: FollowUp | None = None,
    **kw: Any,
) -> RunResult:
    """Run ``worker_fn(task, msg_q)`` for every task, persisting through one writer thread.

    Called as ``run_pipeline(tasks, db_path=Path("./pipeloom.db"), *, worker_fn, ...)``; the
    older ``run_pipeline(db_path, tasks, ...)`` form also works.

    Args:
        *args: ``tasks`` and ``db_path`` positionally, in either order.
        worker_fn: does one task; sends Started/Progress/Finished on ``msg_q`` (default:
            `pipeloom.demo.demo_worker`, which simulates work, as in 0.0.7). If it raises,
            the task is recorded as ``error`` with the traceback; if it returns without a
            Finished message, the task is recorded ``done``. A task without a ``task_id``
            attribute is recorded under its 1-based position in the source.
        workers: tasks in flight at once, 1 to `MAX_WORKERS`; default min(number of tasks,
            CPU count). More than the tasks of a sized source are never started.
        wal: write-ahead logging (readers never block the writer).
        store_task_status: False records nothing of pipeloom's own, only user handlers.
        handlers: user message type -> ``handler(conn, msgs)`` applied in batches.
        schema: ``schema(conn)`` creates user tables when the writer starts.
        fail_fast: stop admitting tasks after the first failure.
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
        executor: where tasks run: ``"threads"`` (default) or an `Executor` instance.
        summary_hint: an extra line for the summary (the CLI's "browse with" command).
        handle_signals: on the main thread, turn Ctrl-C, SIGTERM and SIGHUP into a graceful
            stop (SIGTERM and SIGHUP give running tasks `stop_grace` seconds); a second
            signal abandons the tasks in flight, a third raises `Interrupted` (a
            KeyboardInterrupt).
        lease: seconds after its last heartbeat that readers call the run stale (the writer
            beats every lease/3 seconds; default `pipeloom.lease.DEFAULT_LEASE_S`).
        task_log_limit: log records stored per task in ``task_logs`` (records logged inside
            a task: ``ctx.log`` and the user's own ``logging``); the rest are counted.
        options: the writer's and the queue's settings as one `RunOptions` (the same object
            a `Pipeline` takes), instead of ``wal``, ``synchronous``, ``batch_size``,
            ``commit_interval``, ``queue_size``, ``lease``, ``listeners`` and
            ``task_log_limit`` one by one; a setting may come one way or the other, not both.
        follow_up: ``follow_up(task, returned)`` is called as each task completes, with what
            ``worker_fn`` returned (None when it raised); the tasks it returns are admitted
            before any further task from the source. `pipeloom.Pipeline` stages use it.
        **kw: ``tasks=`` and ``db_path=`` by keyword.

    Returns:
        A `RunResult`; Ctrl-C gives ``status="cancelled"`` rather than an exception. Tasks
        never started after a stop get no row; `RunResult.not_started` counts them when the
        source has a length.

    Raises:
        InvalidArgumentError: ``workers``, ``batch_size``, ``commit_interval``,
            ``queue_size``, ``lease`` or ``task_log_limit`` is one no run could use (0, a
            negative, NaN, an infinity, more than `MAX_WORKERS` workers).
        TaskSourceError: a task list holds duplicate or non-integer task ids.
        DatabaseError: the database cannot be opened or prepared.
        WriterFailedError: the writer stopped mid-run (disk full, file removed); what it
            committed before stays.
        ExecutorFailedError: the executor could not start (the run is recorded ``error``).
    """
    unknown = set(kw) - {"tasks", "db_path"}
    if unknown:
        raise TypeError(f"run_pipeline got unexpected keyword(s): {', '.join(sorted(unknown))}")
    tasks, db_path = _resolve_call(args, kw)
    if options is not None:
        given = {
            "wal": wal,
            "synchronous": synchronous,
            "batch_size": batch_size,
            "commit_interval": commit_interval,
            "queue_size": queue_size,
            "lease": lease,
            "listeners": tuple(listeners),
            "task_log_limit": task_log_limit,
        }
        both = [name for name, value in given.items() if value != getattr(_DEFAULTS, name)]
        if both:
            raise TypeError(
                f"run_pipeline got {', '.join(both)} both as keyword(s) and in options=; "
                "pass each setting one way"
            )
        wal, synchronous, batch_size = options.wal, options.synchronous, options.batch_size
        commit_interval, queue_size = options.commit_interval, options.queue_size
        lease, listeners = options.lease, options.listeners
        task_log_limit = options.task_log_limit
    if worker_fn is None:
        from pipeloom.demo import demo_worker  # demo imports this module

        worker_fn = demo_worker
    if isinstance(tasks, list | tuple):
        _check_ids(tasks)
    total = len(tasks) if isinstance(tasks, Sized) else None
    pool = resolve_executor(executor)
    workers = _check_arguments(
        pool,
        workers,
        total,
        follow_up is not None,
        synchronous=synchronous,
        batch_size=batch_size,
        commit_interval=commit_interval,
        queue_size=queue_size,
        lease=lease,
        task_log_limit=task_log_limit,
    )
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

    # Running unattended: hooks (pipeloom.alerts) and retention (pipeloom.retention).
    alerts = start_alerts(options.alerts if options else None, str(db_path), run_name)
    if alerts is not None:
        listeners = (*listeners, alerts)
    if options is not None and (options.keep_runs or options.keep_days is not None):
        retention_policy = Retention(options.keep_runs, options.keep_days, run_name)
    else:
        retention_policy = None

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
        lease=lease,
        task_log_limit=task_log_limit,
        retention=retention_policy,
        **writer_kwargs,
    )
    started = time.perf_counter()
    writer.start()
    writer.ready.wait()
    if alerts is not None:
        alerts.bind(writer.run_id)
    if writer.error is not None:
        if alerts is not None:
            alerts.abandon()
        writer.join()
        if isinstance(writer.error, DatabaseError):
            raise writer.error
        raise DatabaseError(f"{db_path}: {writer.error}") from writer.error

    checked = isinstance(tasks, list | tuple | range)
    run = _Run(iter(tasks), q, pool, fail_fast, total, follow_up, checked)
    interrupts = _InterruptHandler(run) if handle_signals else None
    start_error: BaseException | None = None
    with contextlib.ExitStack() as stack:
        if interrupts is not None:
            stack.enter_context(interrupts)
        if display is not None:
            stack.enter_context(display)
        try:
            pool.start(workers, worker_fn, q, run)
        except Exception as exc:
            start_error = exc
            run.executor_failed(exc)
            run.idle.set()
        if start_error is None:
            run.begin(workers)
            _wait(run, writer, interrupts)
            run.close()
            # A threads executor's worker may be the one left waiting in the source's next().
            inline_stuck = run.cut_short and getattr(pool, "admits_inline", False)
            pool.shutdown(0.0 if run.abandoned or inline_stuck else None)
        end = run.end_message()
        if writer.error is None:
            q.put_nowait(end)  # the writer records it on the run row
            q.put_nowait(SENTINEL)
        writer.join()
        q.fail(WriterFailedError("the run has ended; late messages are not stored"))
        # Without pipeloom's tables the writer kept no rows to decide from; the same rule
        # applies to what it counted as it committed.
        status = writer.run_status or decide_run_status(
            writer.final_counts or writer.status_counts,
            taken=end.taken,
            stop="interrupted" if writer.error is not None else end.stop,
            source_failed=end.error is not None,
        )
        if isinstance(display, LiveDisplay):
            display.set_outcome(status)
    elapsed = time.perf_counter() - started
    if alerts is not None and (writer.error is not None or start_error is not None):
        alerts.abandon()
    if writer.error is not None:
        raise WriterFailedError(
            f"{db_path}: the writer stopped, so the run was aborted ({writer.error}); "
            "rows committed before that are kept in the file the writer held"
        ) from writer.error
    if start_error is not None:
        raise ExecutorFailedError(
            f"executor {type(pool).__name__} could not start ({exc_summary(start_error)}); "
            f"the run {writer.run_id} is recorded as error in {db_path}",
            end.cause or "executor_failed",
        ) from start_error
    counts = dict(writer.final_counts or writer.status_counts)
    result = RunResult(
        run_id=writer.run_id,
        status=status,
        counts=counts,
        failed_task_ids=list(writer.failed_task_ids),
        elapsed=elapsed,
        db_path=str(db_path),
        messages=writer.messages_applied + writer.messages_dead,
        dead_letters=writer.messages_dead,
        error=run.error.split("\n\n", 1)[0] if run.error else None,
        not_started=end.not_started,
        stop_reason=end.cause,
        planned=total,
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
                not_started=result.not_started,
                stopped=result.stop_reason,
            )
        )
        if writer.failed_sample:
            out.print(
                render_failures(
                    writer.failed_sample,
                    total=len(result.failed_task_ids),
                    db_path=str(db_path),
                    run_id=result.run_id,
                ),
                no_wrap=True,  # one line per failed task, cut to the terminal's width
                overflow="ellipsis",
            )
    if alerts is not None:  # after the record is closed; never changes the result
        alerts.finish(result, writer.failed_sample)
    return result


def _wait(run: _Run, writer: SQLiteWriter, interrupts: _InterruptHandler | None) -> None:
    """Wait for the run's slots to drain, or for a reason to stop waiting."""
    failed_at: float | None = None
    while not run.idle.wait(0.1):
        if writer.error is not None or run.executor_broken:
            if writer.error is not None:
                run.stop("interrupted", "writer_failed")
            else:
                run.stop("cancelled", "executor_failed")
            # Nothing more can be stored (or run): workers blocked on the queue wake at once,
            # but a task deep in its own work may take hours; do not wait for it.
            if failed_at is None:
                failed_at = time.monotonic()
            elif time.monotonic() - failed_at > _GRACE:
                run.abandon("abandoned: the run could not go on")
                run.executor.cancel()
                return
        why = interrupts.abandon_why() if interrupts is not None else None
        if why is not None:
            n = run.abandon(why)
            run.executor.cancel()
            log.warning("%s: abandoned %d running task(s)", why, n)
            return
        if run.stopping.is_set() and run.nothing_running():
            # Stopped with nothing in flight, while a slot still waits in the source's
            # next(): the run is over now, not when the source next yields.
            run.cut_short = True
            return


STOP_GRACE_ENV = "PIPELOOM_STOP_GRACE"
"""Environment variable: seconds SIGTERM and SIGHUP let running tasks finish (default 5)."""
DEFAULT_STOP_GRACE = 5.0
"""Within Docker's 10 s between ``docker stop``'s SIGTERM and its SIGKILL, with time left
for the summary and the final commit."""

_STOP_SIGNALS: dict[int, StopReason] = {
    signal.SIGINT: "sigint",
    signal.SIGTERM: "sigterm",
    **({signal.SIGHUP: "sighup"} if hasattr(signal, "SIGHUP") else {}),
}
"""The signals that stop a run, and the `StopReason` each records."""
_SIGNAL_NAMES: dict[str, str] = {"sigint": "Ctrl-C", "sigterm": "SIGTERM", "sighup": "SIGHUP"}


def stop_grace() -> float:
    """Seconds SIGTERM and SIGHUP let running tasks finish: `STOP_GRACE_ENV`, else 5."""
    raw = os.environ.get(STOP_GRACE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_STOP_GRACE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        log.warning(
            "%s=%r is not a number of seconds (0 or more); using %g (e.g. %s=20)",
            STOP_GRACE_ENV,
            raw,
            DEFAULT_STOP_GRACE,
            STOP_GRACE_ENV,
        )
        return DEFAULT_STOP_GRACE
    return value


def _detach_terminal() -> None:
    """After SIGHUP the terminal is gone: writing to it would fail, so write nowhere.

    Output that goes to a file or a pipe is kept.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError as exc:
        log.debug("cannot open %s: %s", os.devnull, exc)
        return
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):  # fd closed already: nothing to detach
                if os.isatty(fd):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _InterruptHandler:
    """Ctrl-C, SIGTERM and SIGHUP stop a run the same way, in up to three steps.

    First signal: stop admitting tasks, let the ones in flight finish (after SIGTERM or
    SIGHUP for `stop_grace` seconds at most: a process manager's SIGKILL follows). Second
    signal, or the grace period over: abandon the tasks in flight (``interrupted``). Third:
    raise `Interrupted` at once. The first signal's `StopReason` is recorded and decides the
    exit code. Installed explicitly, so it also works as PID 1 in a container, where the
    kernel drops a signal that has no handler.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.count = 0
        self.first: StopReason = "sigint"
        self.last: StopReason = "sigint"
        self.deadline: float | None = None
        self.grace = DEFAULT_STOP_GRACE
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        cause = _STOP_SIGNALS.get(signum, "sigint")
        self.last = cause
        self.run.stop("cancelled", cause)
        if self.count >= 3:
            raise Interrupted(self.first)
        if self.count > 1:
            return
        self.first = cause
        if cause == "sighup":
            _detach_terminal()
        if cause == "sigint":
            text = "Stopping: letting running tasks finish (Ctrl-C again to abandon them)"
        else:
            self.deadline = time.monotonic() + self.grace
            name = _SIGNAL_NAMES[cause]
            text = (
                f"Stopping on {name}: letting running tasks finish for up to "
                f"{self.grace:g} s ({name} again to abandon them)"
            )
        try:
            shared_console.print(f"[yellow]{text}")
        except OSError as exc:  # the terminal went away
            log.debug("cannot print the stop notice: %s", exc)

    def abandon_why(self) -> str | None:
        """Why the tasks in flight are abandoned now (a second signal, the grace over), or None."""
        if self.count >= 2:
            return f"stopped by a second {_SIGNAL_NAMES[self.last]}"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            name = _SIGNAL_NAMES[self.first]
            return f"stopped by {name}: not finished within its {self.grace:g} s grace period"
        return None

    def __enter__(self) -> _InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            self.grace = stop_grace()
            for signum in _STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
