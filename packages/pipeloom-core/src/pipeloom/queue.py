"""The message queue between workers and the writer: cheap to put on, bounded in memory.

``queue.Queue`` takes a lock and notifies a condition on every put; at hundreds of thousands
of messages a second that lock is the bottleneck. ``SimpleQueue`` is a lock-free C deque, so
this wrapper adds only what pipeloom needs on top: backpressure when the writer falls behind
and a way for a failed writer to unblock every worker at once.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from pipeloom.errors import WriterFailedError
from pipeloom.messages import MsgTaskFinished

__all__ = ["DEFAULT_MAXSIZE", "MessageQueue", "rows_of"]

DEFAULT_MAXSIZE = 50_000
"""Messages (a finish weighs one more per row it carries) allowed to wait for the writer
before workers pause; bounds memory."""

_WAIT_CAP = 0.05
"""Longest a paused worker sleeps before looking again (a wake-up it missed costs this)."""


def rows_of(msg: Any) -> int:
    """The rows a message carries besides itself: a finish's held outputs, else 0.

    An atomic task's rows travel in its finish, so a queue that counted messages alone would
    let 185 finished tasks park 337,000 rows in memory while counting 185. Its put and the
    writer's drain weigh a message with this one function, so what is added is taken off.
    """
    if type(msg) is not MsgTaskFinished:
        return 0
    outputs = msg.outputs
    if type(outputs) is tuple or type(outputs) is list:
        return len(outputs)
    return 0


class MessageQueue:
    """A bounded, failure-aware queue; workers call ``put``, the writer calls ``get``.

    The bound counts rows, not only messages: a finish carrying a task's held outputs weighs
    one more per row, from its put until the writer has applied it (`rows_applied`), so rows
    waiting for the writer, or in the batch it is applying, pause the workers that make more.
    """

    __slots__ = ("_q", "_resume_at", "_room", "_rows_lock", "failure", "maxsize", "rows")

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE) -> None:
        """Create an empty queue.

        Args:
            maxsize: how many messages may wait before ``put`` pauses the caller.
        """
        if maxsize < 2:
            raise ValueError(f"maxsize={maxsize}: use at least 2")
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.maxsize = maxsize
        # Hysteresis: a paused worker resumes only once the writer has drained half, so
        # workers do not wake and sleep again on every single message.
        self._resume_at = maxsize // 2
        self.failure: BaseException | None = None
        """The writer's fatal error once it died (`fail`); read it, never set it."""
        self._room = threading.Event()
        """Set by the writer once it drained below the resume mark (see `drained`)."""
        self.rows = 0
        """Rows in queued finishes or in the batch being applied (`add_rows`, `rows_applied`)."""
        self._rows_lock = threading.Lock()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue a message, pausing while the writer is behind.

        `pipeloom.executors.TaskQueue.put` repeats these lines inline on `buffer` (the
        workers' hot path); change both together.

        Raises:
            WriterFailedError: the writer has stopped, so the message could never be stored.
        """
        if self.failure is not None:
            raise WriterFailedError(f"writer stopped: {self.failure}") from self.failure
        if type(item) is MsgTaskFinished:  # the one kind that carries rows (`rows_of`)
            rows = rows_of(item)
            if rows:
                self.add_rows(rows)
        q = self._q
        q.put(item)
        if q.qsize() + self.rows >= self.maxsize:
            self.wait_for_room(timeout if block else 0.0)

    def put_nowait(self, item: Any) -> None:
        """Queue a message without pausing (used for shutdown markers)."""
        rows = rows_of(item)
        if rows:
            self.add_rows(rows)
        self._q.put(item)

    def add_rows(self, n: int) -> None:
        """Count ``n`` rows a message about to be queued carries (see `rows_of`)."""
        with self._rows_lock:
            self.rows += n

    def rows_applied(self, n: int) -> None:
        """The writer applied (or settled) finishes carrying ``n`` rows: they weigh no more."""
        if n:
            with self._rows_lock:
                self.rows = max(0, self.rows - n)
            self.drained()

    @property
    def buffer(self) -> queue.SimpleQueue[Any]:
        """The lock-free deque underneath, for the two hot paths that save a call a message.

        `pipeloom.executors.TaskQueue.put` weighs a finish (`add_rows`), puts on it, then
        pauses as `put` does (``qsize() + rows >= maxsize``: `wait_for_room`); the writer's
        drain takes from it with ``get_nowait``, calls `drained` and, once a batch is
        applied, `rows_applied`. Anything else uses `put` and `get`: a bare put on the buffer
        skips the bound and the failure check.
        """
        return self._q

    def wait_for_room(self, timeout: float | None) -> None:
        """Pause until the writer has drained below the resume mark, or ``timeout`` passes.

        Paused workers sleep until the writer says there is room (`drained`) rather than
        polling: four workers waking every 0.5 ms each took the GIL from the writer they
        were waiting for.

        Raises:
            WriterFailedError: the writer stopped while (or before) the caller waited.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        q, room = self._q, self._room
        while q.qsize() + self.rows > self._resume_at:
            if self.failure is not None:
                raise WriterFailedError(f"writer stopped: {self.failure}") from self.failure
            wait = _WAIT_CAP
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return
            room.clear()
            # Looked at again after clearing: a `drained` in between is not missed.
            if q.qsize() + self.rows > self._resume_at and self.failure is None:
                room.wait(wait)

    def drained(self) -> None:
        """Wake paused workers if the queue is below the resume mark (the writer calls it)."""
        if self._q.qsize() + self.rows <= self._resume_at and not self._room.is_set():
            self._room.set()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the next message (writer side)."""
        return self._q.get(block, timeout)

    def get_nowait(self) -> Any:
        """Take the next message or raise ``queue.Empty``."""
        return self._q.get_nowait()

    def qsize(self) -> int:
        """Return the approximate number of waiting messages."""
        return self._q.qsize()

    def empty(self) -> bool:
        """Tell whether no message is waiting."""
        return self._q.empty()

    def fail(self, exc: BaseException) -> None:
        """Record that the writer died; every current and future ``put`` raises."""
        self.failure = exc
        self.rows = 0
        self._room.set()  # paused workers wake up and raise
        # Drop what is queued: it can no longer be stored and would only hold memory.
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
