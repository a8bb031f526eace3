"""Admission: taking tasks from the source into ``workers`` slots, and the run's account.

`Run` takes tasks from the (possibly endless) task source one at a time, at most ``workers``
in flight, so memory does not grow with the number of tasks; it is the `Completions` an
executor reports each finished task to, and it records what the run as a whole did: how many
tasks it took, why it stopped, what failed outside any task. `Admitter` refills slots off the
workers' threads. `pipeloom.engine.run_pipeline` drives both.
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeloom._control import RunEnd
from pipeloom._idset import IdSet
from pipeloom._text import exc_summary, exc_text, storable
from pipeloom.errors import (
    RemoteTaskError,
    TaskSourceError,
    WriterFailedError,
)
from pipeloom.executors import Executor
from pipeloom.limits import NOT_RUN
from pipeloom.messages import MsgTaskFinished, utc_now
from pipeloom.queue import MessageQueue
from pipeloom.status import SIGNAL_STOPS

__all__ = ["Admitter", "FollowUp", "Run", "check_ids"]

log = logging.getLogger("pipeloom.engine")
_LABEL_CHARS = 80

FollowUp = Callable[[Any, Any], Iterable[Any]]
"""``follow_up(task, returned)``: the tasks a completed task makes ready (stages use it).

Called once for every task taken from the source, however it ended; ``returned`` is
`pipeloom.limits.NOT_RUN` for a task its executor refused (``submit`` raised)."""


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


class Run:
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
        self._unbegun = 0
        """Tasks handed to the executor and given back unbegun (`not_begun`): not taken."""
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
        self._admitter: Admitter | None = None
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
        self._admitter = Admitter(self._fill)
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
                # Ended like any failed task (fail_fast stops the run), and reported to the
                # follow-up hook, which frees the resources it holds and fails the stages
                # waiting for it: without that the run would wait for them forever.
                self._task_raised(task_id, task, exc, False)
                if self.follow_up is not None:
                    self._follow(task_id, task, NOT_RUN)
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
                self._taken = self._length - operator.length_hint(self._source) - self._unbegun
            else:
                self._taken = next(self._seq) - 1 - self._refused - self._unbegun
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
        self._release(task_id, task, returned)

    def not_begun(self, task_id: int, task: Any) -> None:
        """The executor gives back a task it was handed but never began: the run stopped.

        It counts as not started, like the tasks left in the source, and gets no row: a
        task waiting in a worker process behind the running one is the executor's business,
        not something the run did.
        """
        with self.lock:  # against `abandon`: either counted here or recorded there
            self.in_flight.pop(task_id, None)
            abandoned = self.abandoned
            if not abandoned:
                self._unbegun += 1
        if abandoned:
            self._closed_one()
            return  # already recorded interrupted; the run is over
        self._release(task_id, task, NOT_RUN)

    def _release(self, task_id: int, task: Any, returned: Any) -> None:
        """After a task's end is recorded: its follow-ups, then its slot takes the next task."""
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
        if not self.stopping.is_set():
            self.stopping.set()
            self.executor.run_stopping()

    def _post(self, msg: Any) -> bool:
        try:
            self.q.put(msg)
        except WriterFailedError:
            self.stop("interrupted", "writer_failed")
            return False
        return True

    # -- the end ---------------------------------------------------------------------

    def abandon(self, why: str) -> int:
        """Record every task still in flight ``interrupted`` and stop waiting for them.

        A task the executor held ahead of a free worker and never began is not among them:
        it is taken back first (`Executor.withdraw_unbegun`) and counted not started.
        """
        try:
            # Not under the lock: a process executor asks its collector thread, which may
            # be reporting a completion that needs the lock.
            unbegun = self.executor.withdraw_unbegun()
        except Exception as exc:  # what it held is then recorded interrupted, as before
            log.warning("could not take back the tasks not yet begun: %s", exc_summary(exc))
            unbegun = []
        with self.lock:
            self.stop_reason = "interrupted"  # whatever stopped admission first, this ends it
            self.abandoned = True
            self.stopping.set()
            for task_id in unbegun:
                if self.in_flight.pop(task_id, None) is not None:
                    self._unbegun += 1
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


class Admitter:
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
        """Fill nothing more; wait briefly for the thread to end.

        A thread blocked in the source's ``next()`` is not waited for (a stop never waits on
        the source): it ends when ``next()`` returns. One that is only between fills ends at
        once, so a finished run leaves no pipeloom thread behind.
        """
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(_CLOSE_WAIT)

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


_CLOSE_WAIT = 0.5
"""Seconds `close` waits for the admitter thread; never long, a blocked source is not waited."""

_LOCK_SPINS = 100
"""GIL yields a worker tries before it sleeps on the task lock."""
_ATOMIC_ITERATORS: frozenset[type] = frozenset(
    {type(iter([])), type(iter(())), type(iter(range(0)))}
)
"""Iterators whose ``next`` runs entirely in C under the GIL: safe to share without a lock."""


def check_ids(tasks: list[Any] | tuple[Any, ...]) -> None:
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
