"""The context object a declarative task receives beside its item."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable, Collection, Container, Iterable, Mapping, MutableMapping
from typing import Any

from pipeloom.errors import OutputLimitError
from pipeloom.messages import PIPELOOM_MESSAGES, MsgTaskProgress
from pipeloom.record._registry import registered_type, unmatched_note
from pipeloom.state import TaskState
from pipeloom.tasklogs import record_text, send_log, set_attempt

__all__ = ["DEFAULT_MAX_OUTPUTS", "Context", "OutputLimitError", "TaskLog"]

DEFAULT_MAX_OUTPUTS = 100_000
"""Most messages one atomic attempt may hold before its finish; past it the attempt fails."""


log = logging.getLogger("pipeloom.pipeline")


class TaskLog(logging.LoggerAdapter[logging.Logger]):
    """A logger whose lines name the task they come from.

    The text is prefixed with ``[task name]`` for the console, and the record carries
    ``task``, ``task_id``, ``task_key`` and ``attempt`` attributes for structured handlers.
    Each record is also stored in the task's log (``task_logs``): INFO and above always,
    DEBUG when the logger is enabled for it (``-vv``), whatever the console shows.
    """

    def __init__(
        self,
        logger: logging.Logger,
        extra: Mapping[str, object],
        store: Callable[[int, str], None] | None = None,
    ) -> None:
        """Wrap ``logger``; ``store(level, text)`` keeps a record in the task's log."""
        super().__init__(logger, extra)
        self._store = store

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Store the record in the task's log, then log it as usual."""
        store = self._store
        if store is not None and (level >= logging.INFO or self.logger.isEnabledFor(level)):
            try:
                store(level, record_text(msg, args, kwargs.get("exc_info")))
            except Exception as exc:  # never let a log line fail the task
                log.debug("could not store a log line of the task: %s", exc)
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        """Prefix the task's name and attach its identity to the record."""
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return f"[{extra.get('task')}] {msg}", kwargs


class Context:
    """What a task function gets besides its item: progress, messages, a logger, cancellation.

    One context exists per attempt. When an attempt times out its context is cancelled: the
    ``cancelled`` flag is set and anything the abandoned attempt still reports is dropped, so a
    late attempt never overwrites the row of a newer one.

    In an atomic task (the default) ``emit`` holds the messages in memory; the pipeline sends
    them with the attempt's ``done`` finish, so the writer commits all of them with it or none.
    A failed or timed-out attempt's held messages are discarded and counted.
    """

    __slots__ = (
        "_accepted",
        "_atomic",
        "_closed",
        "_dropped",
        "_handled",
        "_last_total",
        "_lock",
        "_max_outputs",
        "_outputs",
        "_overflow",
        "_put",
        "attempt",
        "cancelled",
        "key",
        "log",
        "name",
        "params",
        "state",
        "task_id",
    )

    def __init__(
        self,
        *,
        task_id: int,
        name: str,
        key: str | None,
        attempt: int,
        put: Callable[[Any], None],
        handled: Container[type[Any]],
        logger: logging.Logger,
        atomic: bool = False,
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
        params: Mapping[str, Any] | None = None,
        pipeline: str = "",
        state: Mapping[str, str] | None = None,
    ) -> None:
        """Bind the context to one attempt of one task.

        Args:
            task_id: the task's id within the run.
            name: its label.
            key: its stable key across runs.
            attempt: 1 for the first try.
            put: sends a message to the writer.
            handled: the message types the pipeline has handlers for.
            logger: where ``ctx.log`` writes.
            atomic: hold emitted messages until the attempt succeeds, instead of sending each.
            max_outputs: most messages an atomic attempt may hold.
            params: the run's parameters (`pipeloom.params`).
            pipeline: the pipeline's name, whose state ``ctx.state`` reads and sets.
            state: the pipeline's state as committed when the run began (key -> JSON).
        """
        self.task_id = task_id
        """The task's id within this run (``task_runs.task_id``)."""
        self.name = name
        """The task's label."""
        self.key = key
        """The stable key that recognises the same work across runs (``task_runs.task_key``)."""
        self.attempt = attempt
        """1 for the first try, 2 for the first retry, and so on."""
        self.cancelled = threading.Event()
        """Set when the attempt timed out: a long task should check it and return early."""
        cancelled = self.cancelled

        def store(level: int, text: str) -> None:
            # An abandoned attempt's lines go with it, like its progress and messages.
            if not cancelled.is_set():
                send_log(put, task_id, attempt, level, logger.name, text)

        self.log = TaskLog(
            logger,
            {"task": name, "task_id": task_id, "task_key": key, "attempt": attempt},
            store,
        )
        """A logger whose lines carry the task's name, id, key and attempt: ``ctx.log.info(...)``.

        Its records go to the console (prefixed ``[task name]``) and to the task's
        ``task_logs`` rows."""
        set_attempt(attempt)  # the user's own logging calls in this attempt carry it too
        self._last_total: int | None = None
        self._put = put
        self._handled = handled
        self._accepted: type[Any] | None = None
        """The type `emit` accepted last: the next message of it skips the checks."""
        self._lock = threading.Lock()
        self._atomic = atomic
        self._max_outputs = max_outputs
        self._outputs: list[Any] = []
        self._closed = False
        """Set once the attempt ended: the held messages were taken or discarded."""
        self._dropped = 0
        self._overflow: OutputLimitError | None = None
        """Set once an emit went over max_outputs: the attempt can no longer succeed."""
        self.params: Mapping[str, Any] = types.MappingProxyType(dict(params or {}))
        """The run's parameters: the declared defaults with this run's values applied."""
        self.state = TaskState(pipeline, state or {}, self._hold_state, task_id, key)
        """The pipeline's state: ``get`` what was committed, ``set`` with this task's done."""

    def progress(self, step: int, total: int, message: str = "") -> None:
        """Report that ``step`` of ``total`` steps are done (shown live, stored on the row)."""
        with self._lock:
            if self.cancelled.is_set():
                return
            self._last_total = total
            self._put(MsgTaskProgress(self.task_id, step, total, message))

    def emit(self, msg: Any) -> None:
        """Send a domain message to the handler registered for its type on the pipeline.

        In an atomic task the message is held and commits with the task's ``done`` row (all
        of the attempt's messages, or none); with ``atomic=False`` it goes to the writer now.

        Raises:
            TypeError: ``msg`` is a lifecycle message (the pipeline sends those itself) or no
                handler is registered for its type.
            OutputLimitError: an atomic attempt already holds ``max_outputs`` messages.
        """
        cls = type(msg)
        if cls is not self._accepted:  # a task emits rows of one type: checked once
            if cls in PIPELOOM_MESSAGES or (
                cls not in self._handled and not self._handled_by_name(cls)
            ):
                self._check_type(cls)
            self._accepted = cls
        with self._lock:
            if self.cancelled.is_set() or self._closed:
                self._drop(cls)
                return
            if not self._atomic:
                self._put(msg)
                return
            if len(self._outputs) >= self._max_outputs:
                raise self._over_limit()
            self._outputs.append(msg)

    def emit_many(self, msgs: Iterable[Any]) -> None:
        """Send many domain messages at once: the same as `emit` for each, checked per type.

        For a task that makes its rows in bulk (``ctx.emit_many(rows)`` after building a
        list): one check per message type and one lock instead of one per row, and the rows
        stay one list on their way to the handler.

        Raises:
            TypeError: one of them is a lifecycle message or has no registered handler
                (nothing of this call is sent then).
            OutputLimitError: an atomic attempt would hold more than ``max_outputs``
                messages (nothing of this call is held then).
        """
        batch = msgs if isinstance(msgs, list) else list(msgs)
        for cls in set(map(type, batch)):
            self._check_type(cls)
        with self._lock:
            if self.cancelled.is_set() or self._closed:
                for msg in batch:
                    self._drop(type(msg))
                return
            if not self._atomic:
                put = self._put
                for msg in batch:
                    put(msg)
                return
            if len(self._outputs) + len(batch) > self._max_outputs:
                raise self._over_limit()
            self._outputs.extend(batch)

    def _check_type(self, cls: type[Any]) -> None:
        """Refuse what `emit` refuses: lifecycle messages, types without a handler."""
        if cls in PIPELOOM_MESSAGES:
            raise TypeError(
                f"ctx.emit({cls.__name__}): the pipeline sends lifecycle messages itself; "
                "use ctx.progress(step, total) for progress and return a value for the result"
            )
        if cls not in self._handled and not self._handled_by_name(cls):
            handled = self._handled
            note = unmatched_note(cls, handled) if isinstance(handled, Collection) else ""
            raise TypeError(
                f"ctx.emit({cls.__name__}): no handler registered for {cls.__name__}{note}; "
                f"add one with @pipe.handler({cls.__name__}) or Pipeline(..., handlers={{...}})"
            )

    def _over_limit(self) -> OutputLimitError:
        """Mark the attempt over ``max_outputs`` (it can no longer succeed); the error."""
        self._overflow = OutputLimitError(
            f"task {self.name}: emitted more than max_outputs={self._max_outputs} "
            "messages in one atomic attempt (they are held in memory until it "
            "succeeds); raise it with @pipe.task(max_outputs=...) or stream them with "
            "@pipe.task(atomic=False)"
        )
        return self._overflow

    def _hold_state(self, msg: Any) -> None:
        """Hold a state change with the attempt's outputs, whether or not the task is atomic.

        Even a streaming task's state commits with its done row: a cursor must never move
        ahead of a task that then fails.
        """
        with self._lock:
            if self.cancelled.is_set() or self._closed:
                self._drop(type(msg))
                return
            self._outputs.append(msg)

    def _handled_by_name(self, cls: type[Any]) -> bool:
        """Tell whether a handler's class has ``cls``'s module and name (another copy of it).

        In a worker process the task's code and the pipeline's handler list may hold two
        copies of a class defined in the script (imported there as ``__mp_main__``, or rebuilt
        by value by cloudpickle); the writer matches them the same way.
        """
        handled = self._handled
        return isinstance(handled, Collection) and registered_type(cls, handled) is not None

    def _drop(self, cls: type[Any]) -> None:
        """Count a message sent after the attempt ended; warn once per attempt."""
        self._dropped += 1
        if self._dropped == 1:
            log.warning(
                "task %s: dropped %s sent after attempt %d ended (%s); later ones are dropped too",
                self.name,
                cls.__name__,
                self.attempt,
                "it was abandoned" if self.cancelled.is_set() else "it had returned",
            )

    def _take_outputs(self) -> tuple[Any, ...]:
        """End a successful attempt: hand over its held messages; later emits are dropped.

        Raises:
            OutputLimitError: an emit went over ``max_outputs`` and the function caught the
                error; committing what it held would be a silent partial load.
        """
        with self._lock:
            self._closed = True
            if self._overflow is not None:
                raise self._overflow
            outputs = tuple(self._outputs)
            self._outputs.clear()
            return outputs

    def _held_count(self) -> int:
        """How many messages the attempt holds now (a killed process discards them)."""
        return len(self._outputs)

    def _discard(self) -> int:
        """End a failed attempt: throw its held messages away and say how many there were."""
        with self._lock:
            self._closed = True
            n = len(self._outputs)
            self._outputs.clear()
            return n

    def _abandon(self) -> None:
        """Mark the attempt abandoned; after this returns it sends nothing more."""
        with self._lock:
            self.cancelled.set()

    def __repr__(self) -> str:
        """Name the task and attempt, which is what a traceback reader needs."""
        return f"Context(task_id={self.task_id}, key={self.key!r}, attempt={self.attempt})"
