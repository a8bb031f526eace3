"""The seam between the engine and where tasks run.

The engine keeps admission (at most ``workers`` tasks in flight, pulled lazily from the task
source), cancellation, Ctrl-C and the writer's lifetime. An executor only runs what it is
given: the engine calls `Executor.submit` once per task and the executor calls
`Completions.task_done` once per task it was given, from any thread. Messages a task sends
reach the writer through a `Sink`; where a task runs in another process, the executor carries
them back (batched) and puts them on the sink in this process.
"""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from pipeloom._control import Refused, RunEnd
from pipeloom.messages import (
    SENTINEL,
    MsgRunFinished,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
)
from pipeloom.queue import MessageQueue, rows_of

log = logging.getLogger("pipeloom.executors")

__all__ = ["Completions", "Executor", "Sink", "TaskQueue", "WorkerFn"]


class Sink(Protocol):
    """Where task messages go: the writer's queue, in the driver process."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue one message for the writer (may pause while the writer is behind)."""


class Completions(Protocol):
    """What an executor reports back to the engine."""

    stopping: threading.Event
    """Set once the run stops admitting tasks (Ctrl-C, fail_fast, a failed writer)."""

    def task_done(
        self,
        task_id: int,
        task: Any,
        error: BaseException | None,
        finished: bool,
        returned: Any = None,
    ) -> None:
        """Report that the task submitted as ``task_id`` returned (``error`` None) or raised.

        Args:
            task_id: the id the engine submitted the task under.
            task: the task object itself.
            error: what the worker function raised, if anything.
            finished: the worker already sent a terminal ``MsgTaskFinished`` for the task.
            returned: what the worker function returned (stages hand it to the tasks that
                consume it); an executor that cannot bring it back passes None.
        """

    def not_begun(self, task_id: int, task: Any) -> None:
        """Give back a task handed over but never begun because the run stopped.

        It is counted with the tasks the run did not start and gets no row; only an
        executor that holds tasks ahead of a free worker (`Executor.tasks_ahead`) needs it.
        """

    def executor_failed(self, error: BaseException) -> None:
        """Report that the executor cannot go on; the run stops and is recorded ``error``."""


class Withdrawal:
    """An `Executor.withdraw_unbegun` request, for the thread that owns an executor's tasks.

    The asking thread waits for the answer briefly: an owner that does not answer (stuck
    talking to a cluster) leaves its tasks to be recorded ``interrupted``, as before.
    """

    __slots__ = ("done", "ids")

    WAIT = 2.0
    """Longest wait for the owner; it answers within one of its polls (50 ms)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ids: list[int] = []

    def give(self, ids: list[int]) -> None:
        """The owner's answer: these tasks were taken back unbegun."""
        self.ids = ids
        self.done.set()

    def answer(self, owner: str) -> list[int]:
        """The ids the owner took back, or none if it did not answer in time."""
        if self.done.wait(self.WAIT):
            return self.ids
        log.warning("%s did not hand back the tasks not yet begun in %g s", owner, self.WAIT)
        return []


WorkerFn = Callable[[Any, "TaskQueue"], Any]
"""``worker_fn(task, msg_q)``: do the work, putting lifecycle messages on ``msg_q``."""

_CONTROL: frozenset[type] = frozenset({type(SENTINEL), MsgRunFinished, RunEnd, Refused})


class TaskQueue:
    """The queue a worker function gets: forwards to the writer, refuses control messages.

    It also notes which tasks the worker finished itself, so the engine records ``done`` only
    for the tasks whose worker returned without saying so.
    """

    __slots__ = ("_max", "_mq", "_put", "_q", "finished_ids", "first_attempt", "stopping")

    def __init__(
        self, sink: Sink, stopping: threading.Event | None = None, first_attempt: int = 1
    ) -> None:
        """Wrap ``sink`` for one worker."""
        self._put = sink.put
        self._mq = sink if type(sink) is MessageQueue else None
        """The writer's own queue, put on directly (one Python call less per message)."""
        self._q: queue.SimpleQueue[Any] = (
            self._mq.buffer if self._mq is not None else queue.SimpleQueue()  # unused then
        )
        self._max = self._mq.maxsize if self._mq is not None else 0
        """``_mq``'s deque and bound, kept here: two attribute look-ups less a message."""
        self.first_attempt = first_attempt
        """The attempt a retrying worker starts at (above 1 when its process was killed by a
        timeout and the task was handed to a fresh one)."""
        self.finished_ids: set[int] = set()
        self.stopping = stopping if stopping is not None else threading.Event()
        """Set once the run stops admitting tasks (Ctrl-C, fail_fast): retries should end."""

    def put(self, msg: Any, block: bool = True, timeout: float | None = None) -> None:
        """Send ``msg`` to the writer (pausing if it is behind)."""
        cls = type(msg)  # never msg.__class__: a hostile object may make that raise
        if cls is MsgTaskProgress or cls is MsgTaskStarted:
            pass
        elif cls is MsgTaskFinished:
            self.finished_ids.add(msg.task_id)
            rows = rows_of(msg)
            if rows and self._mq is not None and self._mq.failure is None:
                self._mq.add_rows(rows)  # MessageQueue.put's weighing, inlined below
        else:
            try:
                control = cls in _CONTROL
            except Exception:  # a metaclass whose hash raises: not ours, the writer decides
                control = False
            if control:
                msg = Refused(
                    msg,
                    f"a worker sent {cls.__name__}, which only pipeloom's engine may send; "
                    "it was not applied (return from the worker function to end a task)",
                )
        mq = self._mq
        if mq is None or mq.failure is not None:  # another sink, or the failure to raise
            self._put(msg, block, timeout)
            return
        # MessageQueue.put inlined: the message on its deque, a pause when the writer is behind.
        q = self._q
        q.put(msg)
        if q.qsize() + mq.rows >= self._max:
            mq.wait_for_room(timeout if block else 0.0)

    put_nowait = put


class Executor(ABC):
    """Where tasks run: one method to submit a task, one to stop.

    Subclass it to run tasks somewhere new. A minimal executor that runs each task on a
    thread of its own::

        class OneThreadEach(Executor):
            name = "one-thread-each"

            def submit(self, task_id, task):
                def run():
                    q = TaskQueue(self.sink, self.engine.stopping)
                    try:
                        returned = self.worker_fn(task, q)
                    except BaseException as exc:
                        self.engine.task_done(task_id, task, exc, task_id in q.finished_ids)
                    else:
                        finished = task_id in q.finished_ids
                        self.engine.task_done(task_id, task, None, finished, returned)

                threading.Thread(target=run, daemon=True).start()

            def shutdown(self, timeout):
                return True
    """

    name: ClassVar[str] = "custom"
    """Shown in logs and stored in the run's parameters."""

    admits_inline: ClassVar[bool] = False
    """True when `Completions.task_done` is called on the finished task's own worker thread,
    which has nothing else to do: the engine then takes the next task from the source right
    there (no thread switch per task), even if the source blocks. Leave it False when
    completions arrive on a thread other tasks depend on (a collector, an event loop): the
    engine then reads the source on a thread of its own."""

    worker_fn: WorkerFn
    sink: Sink
    engine: Completions
    workers: int

    def start(self, workers: int, worker_fn: WorkerFn, sink: Sink, engine: Completions) -> None:
        """Get ready to run up to ``workers`` tasks at once (called once, before `submit`).

        Raises:
            Exception: anything; the engine records the run ``error`` with it and stops.
        """
        self.workers = workers
        self.worker_fn = worker_fn
        self.sink = sink
        self.engine = engine

    @abstractmethod
    def submit(self, task_id: int, task: Any) -> None:
        """Run ``worker_fn(task, TaskQueue(sink))`` somewhere, then call ``engine.task_done``.

        Never call ``task_done`` from inside ``submit`` itself: the engine submits the next
        task from ``task_done``.
        """

    def cancel(self) -> None:
        """Stop what is in flight if it can be stopped (processes, futures); threads cannot."""
        return None

    @abstractmethod
    def shutdown(self, timeout: float | None) -> bool:
        """Release the workers, waiting up to ``timeout`` seconds; True once all are gone."""

    def run_stopping(self) -> None:
        """The run stops admitting tasks: a task held ahead of a free worker must not begin.

        Called once, on whichever thread stopped the run (a signal handler included), so it
        must neither block nor take a lock. Nothing to do unless `tasks_ahead` is above 0.
        """
        return None

    def tasks_ahead(self) -> int:
        """Tasks the engine may hand over beyond ``workers``, to wait until a worker is free.

        0 by default: a task is handed over when a worker can begin it. An executor whose
        workers are a round trip away (processes) queues one behind each running task, so a
        worker never waits on the driver between two short tasks. Called after `start`; the
        engine hands over none ahead when the run has resource limits (a task waiting would
        hold its resource idle, and begin later than its rate allowed).
        """
        return 0

    def withdraw_unbegun(self) -> list[int]:
        """Take back every task handed over that has not begun, so that it never will.

        Called once, as the run is abandoned (a second Ctrl-C, a grace period run out),
        before `cancel`: the engine counts what comes back as not started, with no row,
        instead of recording it ``interrupted`` with the tasks really cut short. Nothing a
        withdrawn task sends afterwards may reach the writer. Empty by default: only an
        executor that holds tasks ahead of a free worker (`tasks_ahead`, or a cluster's
        queue) has any.
        """
        return []

    def default_workers(self, tasks: int | None, cpus: int) -> int:
        """Workers when the caller gives none: min(tasks, CPUs)."""
        return max(1, min(tasks, cpus)) if tasks is not None else cpus
