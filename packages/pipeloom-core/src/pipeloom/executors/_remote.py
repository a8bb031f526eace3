"""Running one task away from the driver: batching its messages, reporting how it ended.

Shared by every executor whose tasks run in another process (processes, Dask). A message
that crosses a process costs far more than a queue put, so the task's messages are sent in
batches: when a batch is full, when ~50 ms passed since its first message, and when the task
ends. The outcome travels as plain data (text, not the exception object, which may not
pickle).

**The wire format** is here too, one for both executors, so that whatever cannot cross the
process boundary becomes that task's ``error`` and never the run's:

- `pack` (where the task ran) pickles a batch, runs of rows of one class as plain tuples
  (`_rowpack`); an item that does not pickle is replaced by an `Unsent` saying what it was
  and why.
- `pack_outcome` pickles how a task ended and reads it back once when it carries a result
  (a stage result), so a value that pickles but cannot be unpickled (an exception whose
  ``__init__`` takes two arguments) is caught where it was made, naming its type.
- `unpack` / `unpack_outcome` (in the driver) read them; what cannot be read (a class the
  driver cannot import) becomes an `Unsent` naming the class.
- `settle` (in the driver) turns a task's held ``done`` finish into ``error`` when one of its
  messages or its result could not cross, so its atomic output is not applied and the
  stages that consume it are ``upstream_failed``.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import logging
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeloom._text import SUMMARY_CHARS, exc_summary, exc_text, storable
from pipeloom.errors import RemoteTaskError
from pipeloom.executors._base import TaskQueue, WorkerFn
from pipeloom.executors._rowpack import compact
from pipeloom.messages import MsgTaskFinished
from pipeloom.tasklogs import enter_task, leave_task

__all__ = [
    "BatchingSink",
    "Outcome",
    "RemoteTaskError",
    "Unsent",
    "crossing_text",
    "dumps_back",
    "dumps_by_value",
    "failing_class",
    "main_is_interactive",
    "pack",
    "pack_outcome",
    "run_remote",
    "settle",
    "task_what",
    "unpack",
    "unpack_outcome",
]

log = logging.getLogger("pipeloom.executors")

FLUSH_INTERVAL = 0.05
"""Longest a message waits on the sending side before its batch goes (seconds)."""
MAX_BATCH = 512
"""Most messages per batch."""


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
    crossing: bool = False
    """``error`` says the result could not cross to the driver (not that the task raised)."""

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
    flush: bool = True,
) -> Outcome:
    """Run one task where this function is called, its messages going through ``sink``.

    Args:
        worker_fn: the user's worker function.
        task_id: the id the engine submitted the task under.
        task: the task itself.
        sink: where its messages go.
        first_attempt: the attempt a retrying worker starts at.
        stopping: set when the driver stops admitting tasks (retries should end).
        flush: send what waits in ``sink`` at the end. A Dask chunk does not: its task's
            end marker follows the messages on the same stream, so a batch may span tasks.
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
    if flush:
        sink.flush()
    return outcome


# -- the wire format -----------------------------------------------------------------------

_PROTOCOL = pickle.HIGHEST_PROTOCOL
Dumps = Callable[[Any], bytes]

_SEND_FIX = "send plain data: no locks, open files, connections or generators"
_READ_FIX = (
    "an exception class must pass every __init__ argument to super().__init__, and every "
    "class must be importable where it is read"
)


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=_PROTOCOL)


def dumps_by_value(obj: Any) -> bytes:
    """Pickle for a process that may not import what the driver's ``__main__`` defines.

    cloudpickle sends ``__main__``'s functions and classes by value (a notebook, a script a
    remote worker does not have), and so a pipeline task defined there: by value too, never
    as a reference to ``__main__.name``, which a worker would resolve to its own copy of the
    script (or to nothing). Every class then arrives as one consistent copy, the same one the
    pipeline's handler list holds.

    Raises:
        ImportError: cloudpickle is not installed (``pipeloom-core[dask]`` brings it).
    """
    import cloudpickle  # type: ignore[import-untyped]

    from pipeloom.pipeline._task import Task

    class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is Task and getattr(obj.fn, "__module__", None) in _MAINS:
                return (Task, tuple(getattr(obj, f.name) for f in dataclasses.fields(obj)))
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=_PROTOCOL).dump(obj)
    return buffer.getvalue()


_MAINS = ("__main__", "__mp_main__")


def dumps_back(obj: Any) -> bytes:
    """Pickle for the trip back to the driver: plain pickle (fast), by value when that fails.

    A worker's copy of a class the driver sent by value (one of the driver's ``__main__``)
    cannot be found by name here; it goes back by value and the driver maps it to its own
    class again. Anything else that does not pickle stays an error: a lambda of an importable
    module does not cross on one executor and not another.
    """
    try:
        return pickle.dumps(obj, protocol=_PROTOCOL)
    except Exception as exc:
        if not any(main in str(exc) for main in _MAINS):
            raise
        try:
            return dumps_by_value(obj)
        except ImportError:
            pass
        raise


def main_is_interactive() -> bool:
    """True when ``__main__`` has no file a spawned process could import (a notebook, -c)."""
    import sys

    return not getattr(sys.modules.get("__main__"), "__file__", None)


@dataclass(frozen=True, slots=True)
class Unsent:
    """Stands in for an item that could not cross: what it was, and why, in one line."""

    reason: str


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", "")
    name = getattr(cls, "__qualname__", "?")
    return name if module in ("builtins", "__main__", "__mp_main__") else f"{module}.{name}"


def crossing_text(task_id: int | None, what: str, verb: str, exc: BaseException) -> str:
    """The one line a task's row gets when something of it could not cross.

    Args:
        task_id: the task, when known.
        what: what it was (``a MsgRow message it sent``, ``its result, a ValueError,``).
        verb: ``pickled in the worker``, ``unpickled in the driver``, ...
        exc: why.
    """
    fix = _READ_FIX if verb.startswith("unpickled") else _SEND_FIX
    who = f"task {task_id}: " if task_id is not None else ""
    return storable(
        f"CrossingError: {who}{what} could not be {verb} ({exc_summary(exc, 200)}); {fix}",
        SUMMARY_CHARS,
    )


def _what(item: Any, dumps: Dumps) -> str:
    """Name the part of ``item`` that fails to pickle (for a finish: its result or an output)."""
    if type(item) is MsgTaskFinished:
        try:
            dumps(item.result)
        except Exception:
            return f"its result, a {_type_name(item.result)},"
        for out in item.outputs if isinstance(item.outputs, list | tuple) else ():
            try:
                dumps(out)
            except Exception:
                return f"a {_type_name(out)} message it emitted"
        return "its finish"
    if type(item) is tuple and item and type(item[0]) is str:
        return "a log record it made" if item[0] == "l" else f"its {item[0]!r} marker"
    return f"a {_type_name(item)} message it sent"


def task_what(task: Any, dumps: Dumps = _pickle_dumps) -> str:
    """Name what in a task fails to pickle: its item, its payload, or the task itself."""
    parts = [task]
    payload = getattr(task, "payload", None)
    if payload is not None:
        parts.append(payload)
        item = getattr(payload, "item", None)
        if item is not None:
            parts.append(item)
    for part in reversed(parts):
        try:
            dumps(part)
        except Exception:
            return (
                f"its task (its item, a {_type_name(part)})"
                if part is not task
                else (f"its task (a {_type_name(task)})")
            )
    return f"its task (a {_type_name(task)})"


def _sendable(item: Any, task_id: int | None, dumps: Dumps) -> Any:
    try:
        dumps(item)
    except Exception as exc:
        tid = getattr(item, "task_id", task_id)
        return Unsent(
            crossing_text(
                tid if type(tid) is int else task_id,
                _what(item, dumps),
                "pickled in the worker",
                exc,
            )
        )
    return item


def pack(items: list[Any], task_id: int | None = None, dumps: Dumps = dumps_back) -> bytes:
    """Pickle a batch where the task ran; each item that does not pickle becomes an `Unsent`.

    Args:
        items: the batch.
        task_id: the task the batch belongs to, when it is one task's (named in the reason).
        dumps: the pickler (Dask's falls back to cloudpickle).
    """
    try:
        return dumps(compact(items))  # runs of rows as tuples: see _rowpack
    except Exception:
        return dumps([_sendable(item, task_id, dumps) for item in items])


def unpack(data: bytes, task_id: int | None = None, what: str = "a message it sent") -> Any:
    """Read what `pack` made, in the driver; an `Unsent` naming the class when it cannot be.

    The garbage collector is paused meanwhile: every object a batch of rows makes lives on
    to its handler, so collections in the middle of one only walk them and move them up a
    generation (a quarter to a half of the driver's collector time on benchmarks/etl.py).
    It is turned back on only if it was on: a user's ``gc.disable()`` stays.
    """
    collecting = gc.isenabled()
    if collecting:
        gc.disable()
    try:
        return pickle.loads(data)
    except Exception as exc:
        what = f"{what} ({failing_class(data)})"
        return Unsent(crossing_text(task_id, what, "unpickled in the driver", exc))
    finally:
        if collecting:
            gc.enable()


def pack_outcome(outcome: Outcome, dumps: Dumps = dumps_back) -> bytes:
    """Pickle a task's outcome; a result that cannot make the round trip becomes its error.

    The result is read back here once (only when there is one), because an object that
    pickles but cannot be unpickled (an exception class whose ``__init__`` takes two
    arguments) would otherwise fail in the driver, far from the task that made it.
    """
    try:
        blob = dumps(outcome)
        if outcome.returned is not None:
            pickle.loads(blob)
        return blob
    except Exception as exc:
        value = outcome.returned
        value = getattr(value, "value", value)  # a stage's Handoff: name what it carries
        try:
            dumps(value)
            verb = "unpickled"
        except Exception:
            verb = "pickled"
        text = crossing_text(
            outcome.task_id, f"its result, a {_type_name(value)},", f"{verb} in the worker", exc
        )
        return dumps(
            Outcome(outcome.task_id, text, None, outcome.finished, outcome.fatal, crossing=True)
        )


def unpack_outcome(task_id: int, data: bytes) -> Outcome:
    """Read an outcome in the driver; one that cannot be read is the task's error."""
    got = unpack(data, task_id, "its result")
    if isinstance(got, Outcome):
        return got
    reason = got.reason if isinstance(got, Unsent) else f"CrossingError: task {task_id}: {got!r}"
    return Outcome(task_id, reason, crossing=True)


def settle(
    outcome: Outcome, finish: MsgTaskFinished | None, lost: str | None
) -> tuple[MsgTaskFinished | None, BaseException | None, Any]:
    """Decide a remote task's end in the driver from its held finish and what got lost.

    Args:
        outcome: how the task ended where it ran.
        finish: its own terminal message, held back until now (None: none arrived).
        lost: why a message it sent could not cross, if one could not.

    Returns:
        The finish to put on the writer's queue (a ``done`` one turned ``error`` when
        something of the task did not cross), the error and the returned value (None when
        the task failed: nothing downstream may consume it) to hand the engine.
    """
    why = lost if lost is not None else (outcome.error if outcome.crossing else None)
    if why is None:
        error = outcome.as_error()
        return finish, error, outcome.returned if error is None else None
    if finish is not None and finish.status == "done":
        # Its atomic output goes with the done row it no longer has: never half a task.
        finish = dataclasses.replace(
            finish, status="error", result=None, message=why, error=why, outputs=()
        )
    return finish, RemoteTaskError(why, None), None


class _NamingUnpickler(pickle.Unpickler):
    """Notes the last class it looked up: the one being rebuilt when reading fails."""

    last = "?"

    def find_class(self, module: str, name: str) -> Any:
        self.last = f"{module}.{name}"
        return super().find_class(module, name)


def failing_class(data: bytes) -> str:
    """Which class a pickle could not be rebuilt as (read again on this rare path)."""
    reader = _NamingUnpickler(io.BytesIO(data))
    try:
        reader.load()
    except Exception:
        return reader.last
    return "?"
