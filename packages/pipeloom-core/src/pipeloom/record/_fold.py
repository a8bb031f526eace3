"""Folding a batch's lifecycle messages into one row change per task.

The writer's hot path: every Started, Progress and Finished message passes through `_Fold`,
which applies pipeloom's normalisation rules (a duplicate finish loses, a late start does not
reopen a finished task, progress is clamped to 0..1, text is size-capped) before any SQL runs.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeloom._control import Refused
from pipeloom._text import MAX_TEXT_CHARS, result_text, storable
from pipeloom.messages import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted
from pipeloom.status import TERMINAL

__all__ = ["MAX_PAYLOAD_CHARS", "TERMINAL", "AppliedBatch"]

log = logging.getLogger("pipeloom.writer")

_TERMINAL_SET = TERMINAL
_TERMINAL_LIST = ", ".join(sorted(TERMINAL))
MAX_PAYLOAD_CHARS = MAX_TEXT_CHARS
"""Dead-letter payloads and error texts longer than this are cut, with a note."""


@dataclass(slots=True)
class AppliedBatch:
    """What one commit made durable; handed to every listener."""

    started: list[tuple[int, str]] = field(default_factory=list)
    """(task_id, name) of tasks that started."""
    progress: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    """task_id -> (step, total, message): the latest progress of each task."""
    finished: list[tuple[int, str]] = field(default_factory=list)
    """(task_id, status) of tasks that reached a terminal status."""
    messages: int = 0
    """Messages in the batch (applied plus dead-lettered)."""
    dead_letters: int = 0
    """Messages of the batch that were dead-lettered."""


def _truncate(text: object) -> str:
    """Any value as storable text (kept as a name for callers; `storable` is the one rule)."""
    return storable(text)


def origin_of(msg: Any) -> tuple[int | None, int | None]:
    """The task and attempt a dead-lettered message came from, where it says; never raises.

    pipeloom's own messages carry ``task_id`` (and ``attempt``); a refused control message
    is judged by what the worker sent (``msg.msg``); a user message that names its task is
    taken at its word. Anything else (no such field, not an int SQLite can hold, an object
    whose attributes raise) is None: the letter is still kept, under its run.
    """
    found: list[int | None] = []
    for name in ("task_id", "attempt"):
        try:
            inner = msg.msg if isinstance(msg, Refused) else msg
            value = getattr(inner, name, None)
        except Exception as exc:  # an odd object; its letter is kept without an origin
            log.debug("dead letter of %s: reading %s raised %r", type(msg).__name__, name, exc)
            value = None
        found.append(value if type(value) is int and _INT_MIN <= value <= _INT_MAX else None)
    return found[0], found[1]


_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
"""What an SQLite INTEGER holds."""


def _payload(msg: Any) -> str:
    """A message as text for ``dead_letters``: JSON of its fields, else its repr; never raises.

    Anything may arrive here (a user object whose ``__repr__`` or properties raise), and a
    dead letter that cannot be written would take the whole batch down with it.
    """
    try:
        if dataclasses.is_dataclass(msg) and not isinstance(msg, type):
            data = {f.name: getattr(msg, f.name, None) for f in dataclasses.fields(msg)}
            return storable(json.dumps(data, default=_safe_repr))
    except Exception as exc:  # a user property, __repr__ or __eq__ may raise anything
        log.debug("payload of %s is not JSON (%s); storing its repr", type(msg).__name__, exc)
    return _safe_repr(msg)


def _safe_repr(value: Any) -> str:
    try:
        return storable(repr(value))
    except Exception as exc:  # a user __repr__ may raise anything
        return storable(f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>")


def _text(value: Any) -> str | None:
    """Optional message text: None for no text (None, "", falsy), else storable text."""
    if type(value) is str:
        return storable(value) if value else None
    if value is None:
        return None
    try:
        empty = not value
    except Exception:  # a user __bool__/__len__ may raise (numpy arrays do): it is not empty
        empty = False
    return None if empty else storable(value)


def _task_id(value: Any) -> int:
    """The task id as an int: ints, bools and int-likes (numpy integers) via ``__index__``."""
    if type(value) is int:
        return value
    try:
        return operator.index(value)
    except Exception:
        raise TypeError(f"task_id must be an int, got {type(value).__name__}") from None


def _optional_id(value: Any) -> int | None:
    """An optional task id (an upstream pointer): an int, or None when it is not one."""
    if value is None or type(value) is int:
        return value
    try:
        return operator.index(value)
    except Exception:  # not an id: the pointer is left empty rather than the finish lost
        return None


def _attempt(value: Any) -> int:
    if type(value) is int:
        return value
    try:
        return operator.index(value)
    except Exception:  # anything else counts as the first attempt, as a missing one does
        return 1


def _count(value: Any) -> int | float | None:
    """A step or total as stored: an int, a finite float as is, else None (column unchanged)."""
    if type(value) is int:
        return value
    try:
        return operator.index(value)
    except Exception:
        pass
    try:
        number = float(value)
    except Exception:  # not a number at all
        return None
    return number if math.isfinite(number) else None


def _status(value: Any) -> str:
    """A finish status as text: a string, a string enum's value, else the value as text."""
    if type(value) is str:
        return value
    try:
        if isinstance(value, enum.Enum) and type(value.value) is str:
            return value.value
        if isinstance(value, str):
            return str.__str__(value)
    except Exception as exc:  # a user __class__ may raise inside isinstance
        log.debug("status of type %s is unreadable: %s", type(value).__name__, exc)
    return storable(value)


def _progress_of(step: Any, total: Any) -> float | None:
    try:
        value = float(step) / float(total)
    except Exception:  # not numbers, zero total, or a user __float__ that raises
        return None
    if not math.isfinite(value):
        return None
    return min(max(value, 0.0), 1.0)


# Column order of the folded per-task change; None means "leave the stored value".
_KEY, _NAME, _STATUS, _PROGRESS, _STEP, _TOTAL, _MESSAGE = range(7)
_STARTED, _FINISHED, _RESULT, _ERROR, _ATTEMPT = range(7, 12)
_STAGE, _UPSTREAM_STAGE, _UPSTREAM_TASK = range(12, 15)
_WIDTH = 15


class _Fold:
    """Folds one batch's lifecycle messages into one row change per task.

    Started, Progress and Finished of one task in one batch become a single INSERT.
    Progress is the hot path (a task may report hundreds of steps per batch), so only its
    message text is applied at once; the step/total of a task's latest progress are applied
    when the task finishes or the batch ends, which gives the same row as applying every one.
    """

    __slots__ = ("applied", "pending", "rows")

    def __init__(self) -> None:
        self.rows: dict[int, list[Any]] = {}
        self.applied = AppliedBatch()
        self.pending: dict[int, MsgTaskProgress] = {}
        """task_id -> its latest progress not yet applied to the row."""

    def add(self, msg: Any) -> None:
        self.add_all((msg,))

    def add_all(self, msgs: Iterable[Any]) -> None:
        # The usual messages (int ids and attempts, short ASCII text, no error) are folded
        # inline: the same row as _started/_finished give, without their calls and checks.
        # Anything else takes those methods, which apply every rule.
        rows, pending = self.rows, self.pending
        applied = self.applied
        started, finished = applied.started.append, applied.finished.append
        limit = MAX_TEXT_CHARS
        for msg in msgs:
            cls = msg.__class__
            if cls is MsgTaskProgress:
                task_id = msg.task_id
                if type(task_id) is not int:
                    task_id = _task_id(task_id)
                row = rows.get(task_id)
                if row is None:
                    row = rows[task_id] = [None] * _WIDTH
                elif row[_STATUS] in _TERMINAL_SET:
                    continue
                text = msg.message
                if type(text) is str and text:
                    pending[task_id] = msg  # its text goes in with its step (_apply_progress)
                    continue
                # No text of its own: the text of the progress it replaces is the latest.
                earlier = pending.get(task_id)
                if earlier is not None:
                    self._apply_text(row, earlier.message)
                pending[task_id] = msg
                if text is not None and type(text) is not str:
                    row[_MESSAGE] = _text(text) or row[_MESSAGE]
            elif cls is MsgTaskStarted:
                task_id, name, at = msg.task_id, msg.name, msg.started_at
                if (
                    type(task_id) is int
                    and task_id not in rows
                    and type(msg.attempt) is int
                    and msg.key is None
                    and msg.stage is None
                    and type(name) is str
                    and name.isascii()
                    and len(name) <= limit
                    and type(at) is str
                    and at.isascii()
                    and len(at) <= limit
                ):
                    # fmt: off
                    rows[task_id] = [
                        None, name, "running", None, None, None, None, at, None, None, None,
                        msg.attempt, None, None, None,
                    ]
                    # fmt: on
                    started((task_id, name))
                else:
                    self._started(msg)
            elif cls is MsgTaskFinished:
                task_id, status, at, result = msg.task_id, msg.status, msg.finished_at, msg.result
                message = msg.message
                if (
                    type(task_id) is int
                    and type(status) is str
                    and status in _TERMINAL_SET
                    and type(at) is str
                    and at.isascii()
                    and len(at) <= limit
                    and type(msg.attempt) is int
                    and (
                        result is None
                        or (type(result) is str and result.isascii() and len(result) <= limit)
                    )
                    and (message is None or (type(message) is str and not message))
                    and msg.error is None
                    and msg.name is None
                    and msg.key is None
                    and msg.stage is None
                ):
                    attempt = msg.attempt
                    row = rows.get(task_id)
                    if row is None:
                        row = rows[task_id] = [None] * _WIDTH
                    else:
                        earlier = pending.pop(task_id, None)
                        if earlier is not None:  # progress sent before this finish lands first
                            step, total = earlier.step, earlier.total
                            if type(step) is int and type(total) is int and 0 <= step <= total:
                                row[_STEP], row[_TOTAL] = step, total  # _apply_progress, inline
                                row[_PROGRESS] = step / total if total else None
                                text = earlier.message  # _apply_text, inline
                                if type(text) is str and text:
                                    row[_MESSAGE] = (
                                        text
                                        if text.isascii() and len(text) <= limit
                                        else storable(text)
                                    )
                            else:
                                self._apply_progress(row, earlier)
                        if row[_STATUS] in _TERMINAL_SET and attempt <= (row[_ATTEMPT] or 1):
                            continue  # duplicate finish: the first one stands
                    row[_STATUS] = status
                    row[_FINISHED] = at
                    if status == "done" or status == "skipped":
                        row[_PROGRESS] = 1.0
                    if result is not None:
                        row[_RESULT] = result
                    row[_ATTEMPT] = attempt
                    applied.progress.pop(task_id, None)
                    finished((task_id, status))
                else:
                    self._finished(msg)
            else:
                raise TypeError(f"not a lifecycle message: {cls.__name__}")
        if pending:
            progress = self.applied.progress
            for task_id, msg in pending.items():
                progress[task_id] = self._apply_progress(rows[task_id], msg)
            pending.clear()

    def _row(self, task_id: int) -> list[Any]:
        row = self.rows.get(task_id)
        if row is None:
            row = self.rows[task_id] = [None] * _WIDTH
        return row

    @staticmethod
    def _apply_text(row: list[Any], message: Any) -> None:
        """A progress message's own text, applied with its step: non-empty text replaces."""
        if type(message) is str and message:
            row[_MESSAGE] = (
                message
                if message.isascii() and len(message) <= MAX_TEXT_CHARS
                else storable(message)
            )

    @staticmethod
    def _apply_progress(row: list[Any], msg: MsgTaskProgress) -> tuple[int, int, str]:
        step, total, message = msg.step, msg.total, msg.message
        _Fold._apply_text(row, message)
        if type(step) is int and type(total) is int and 0 <= step <= total:  # the usual case
            row[_STEP], row[_TOTAL], row[_PROGRESS] = step, total, step / total if total else None
            if type(message) is str and message.isascii() and len(message) <= MAX_TEXT_CHARS:
                return (step, total, message)
        else:
            row[_STEP] = step if type(step) is int else _count(step)
            row[_TOTAL] = total if type(total) is int else _count(total)
            row[_PROGRESS] = _progress_of(step, total)
        text = (storable(message) if message else "") if type(message) is str else _text(message)
        return (row[_STEP] or 0, row[_TOTAL] or 0, text or "")

    def _started(self, msg: MsgTaskStarted) -> None:
        task_id = _task_id(msg.task_id)
        row = self._row(task_id)
        attempt = _attempt(msg.attempt)
        if row[_STATUS] in _TERMINAL_SET and attempt <= (row[_ATTEMPT] or 1):
            return  # a late or duplicate start must not reopen a finished task
        row[_KEY] = None if msg.key is None else storable(msg.key)
        row[_NAME] = storable(msg.name)
        row[_STATUS] = "running"
        if row[_STARTED] is None or attempt > (row[_ATTEMPT] or 1):
            row[_STARTED] = storable(msg.started_at)  # the row tells its latest attempt
        row[_FINISHED] = None
        row[_ATTEMPT] = attempt
        if msg.stage is not None:
            row[_STAGE] = storable(msg.stage)
        self.applied.started.append((task_id, row[_NAME]))

    def _finished(self, msg: MsgTaskFinished) -> None:
        task_id = _task_id(msg.task_id)
        row = self._row(task_id)
        earlier = self.pending.pop(task_id, None)
        if earlier is not None:  # progress sent before this finish lands first
            self._apply_progress(row, earlier)
        attempt = _attempt(msg.attempt)
        if row[_STATUS] in _TERMINAL_SET and attempt <= (row[_ATTEMPT] or 1):
            return  # duplicate finish: the first one stands
        status = _status(msg.status)
        if status not in _TERMINAL_SET:
            raise ValueError(f"status {status!r} is not one of {_TERMINAL_LIST}")
        row[_STATUS] = status
        row[_FINISHED] = storable(msg.finished_at)
        if msg.name is not None and row[_NAME] is None:
            row[_NAME] = storable(msg.name)
        if msg.key is not None and row[_KEY] is None:
            row[_KEY] = storable(msg.key)
        if status == "done" or status == "skipped":  # skipped: done by an earlier run
            row[_PROGRESS] = 1.0
        if msg.result is not None:
            row[_RESULT] = result_text(msg.result)
        message = _text(msg.message)
        if message:
            row[_MESSAGE] = message
        if msg.error is not None:
            row[_ERROR] = storable(msg.error)
        if msg.stage is not None:
            row[_STAGE] = storable(msg.stage)
            if msg.upstream_stage is not None:
                row[_UPSTREAM_STAGE] = storable(msg.upstream_stage)
            row[_UPSTREAM_TASK] = _optional_id(msg.upstream_task_id)
        row[_ATTEMPT] = attempt
        self.applied.progress.pop(task_id, None)
        self.applied.finished.append((task_id, status))
