"""Running one task away from the driver: batching its messages, reporting how it ended.

Shared by every executor whose tasks run in another process (processes, Dask). A message
that crosses a process costs far more than a queue put, so the task's messages are sent in
batches: when a batch is full, when ~50 ms passed since its first message, and when the task
ends. The outcome travels as plain data (text, not the exception object, which may not
pickle).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeloom._text import exc_summary, exc_text
from pipeloom.executors._base import TaskQueue, WorkerFn
from pipeloom.tasklogs import enter_task, leave_task

__all__ = ["BatchingSink", "Outcome", "RemoteTaskError", "run_remote"]

log = logging.getLogger("pipeloom.executors")

FLUSH_INTERVAL = 0.05
"""Longest a message waits on the sending side before its batch goes (seconds)."""
MAX_BATCH = 512
"""Most messages per batch."""


class RemoteTaskError(Exception):
    """A task failed in another process; carries the text of its traceback from there."""

    def __init__(self, summary: str, remote_traceback: str | None) -> None:
        """Keep the remote summary as the message and the traceback beside it."""
        super().__init__(summary)
        self.remote_traceback = remote_traceback
        """The traceback as formatted where the task ran."""

    def __str__(self) -> str:
        """Return the summary alone; its type name is already part of it."""
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a remotely run task ended, as plain picklable data."""

    task_id: int
    error: str | None = None
    """One-line summary of what the worker function raised (None: it returned)."""
    traceback: str | None = None
    """Its traceback, formatted where it ran."""
    finished: bool = False
    """The worker sent a terminal message for the task itself."""
    fatal: bool = False
    """It raised KeyboardInterrupt/SystemExit: the run should stop."""
    returned: Any = None
    """What the worker function returned (must pickle; stages hand it downstream)."""

    def as_error(self) -> BaseException | None:
        """The exception to hand to `Completions.task_done`."""
        if self.error is None:
            return None
        if self.fatal:
            return KeyboardInterrupt(self.error)
        return RemoteTaskError(self.error, self.traceback)


class BatchingSink:
    """A sink that sends messages on in batches through ``send(batch)``.

    ``put`` appends; a batch goes when it holds `MAX_BATCH` messages, when `FLUSH_INTERVAL`
    passed since its first message (a background thread checks), or on `flush`.
    """

    def __init__(
        self,
        send: Callable[[list[Any]], None],
        interval: float = FLUSH_INTERVAL,
        max_batch: int = MAX_BATCH,
    ) -> None:
        """Start the background flusher."""
        self._send = send
        self._interval = interval
        self._max = max_batch
        self._lock = threading.Lock()
        self._batch: list[Any] = []
        self._first = 0.0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._flusher, name="pipeloom-flush", daemon=True)
        self._thread.start()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue one message for the next batch."""
        with self._lock:
            if not self._batch:
                self._first = time.monotonic()
            self._batch.append(item)
            if len(self._batch) < self._max:
                return
            batch, self._batch = self._batch, []
            self._send(batch)

    def flush(self) -> None:
        """Send whatever is waiting now."""
        with self._lock:
            if self._batch:
                batch, self._batch = self._batch, []
                self._send(batch)

    def _flusher(self) -> None:
        while not self._closed.wait(self._interval / 2):
            with self._lock:
                due = self._batch and time.monotonic() - self._first >= self._interval
            if due:
                try:
                    self.flush()
                except Exception as exc:  # the channel broke; the task's end reports it
                    log.warning("could not send a batch of task messages: %s", exc)

    def close(self) -> None:
        """Flush and stop the background thread."""
        self._closed.set()
        self.flush()


def run_remote(
    worker_fn: WorkerFn,
    task_id: int,
    task: Any,
    sink: BatchingSink,
    first_attempt: int = 1,
    stopping: threading.Event | None = None,
) -> Outcome:
    """Run one task where this function is called, its messages going through ``sink``.

    Args:
        worker_fn: the user's worker function.
        task_id: the id the engine submitted the task under.
        task: the task itself.
        sink: where its messages go.
        first_attempt: the attempt a retrying worker starts at.
        stopping: set when the driver stops admitting tasks (retries should end).
    """
    q = TaskQueue(sink, stopping, first_attempt)
    scope = enter_task(q.put, task_id, first_attempt)
    try:
        returned = worker_fn(task, q)
    except Exception as exc:
        outcome = Outcome(
            task_id, exc_summary(exc), exc_text(exc), finished=task_id in q.finished_ids
        )
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: the run should stop
        outcome = Outcome(task_id, exc_summary(exc), exc_text(exc), task_id in q.finished_ids, True)
    else:
        outcome = Outcome(task_id, finished=task_id in q.finished_ids, returned=returned)
    finally:
        leave_task(scope)
    sink.flush()
    return outcome
