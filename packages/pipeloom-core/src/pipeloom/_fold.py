"""Folding a batch's lifecycle messages into one row change per task.

The writer's hot path: every Started, Progress and Finished message passes through `_Fold`,
which applies pipeloom's normalisation rules (a duplicate finish loses, a late start does not
reopen a finished task, progress is clamped to 0..1, text is size-capped) before any SQL runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeloom.messages import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted

__all__ = ["MAX_PAYLOAD_CHARS", "TERMINAL", "AppliedBatch"]

log = logging.getLogger("pipeloom.writer")

TERMINAL = ("done", "error", "cancelled", "timeout", "skipped", "interrupted")
_TERMINAL_SET = frozenset(TERMINAL)
MAX_PAYLOAD_CHARS = 100_000
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


def _truncate(text: str) -> str:
    if len(text) <= MAX_PAYLOAD_CHARS:
        return text
    return text[:MAX_PAYLOAD_CHARS] + f"... [truncated, {len(text)} chars in all]"


def _payload(msg: Any) -> str:
    try:
        if dataclasses.is_dataclass(msg) and not isinstance(msg, type):
            data = {f.name: getattr(msg, f.name, None) for f in dataclasses.fields(msg)}
            return _truncate(json.dumps(data, default=repr))
    except (TypeError, ValueError, RecursionError) as exc:
        log.debug("payload of %s is not JSON (%s); storing its repr", type(msg).__name__, exc)
    try:
        return _truncate(repr(msg))
    except Exception as exc:  # a user __repr__ may raise anything
        return f"<unrepresentable {type(msg).__name__}: {exc!r}>"


def _result_text(result: Any) -> str:
    """A task's result as text: a string as is, else JSON, else its repr (never an error)."""
    if isinstance(result, str):
        return _truncate(result)
    try:
        return _truncate(json.dumps(result))
    except (TypeError, ValueError, RecursionError):
        return _payload(result)


def _progress_of(step: Any, total: Any) -> float | None:
    try:
        value = float(step) / float(total)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if not math.isfinite(value):
        return None
    return min(max(value, 0.0), 1.0)


# Column order of the folded per-task change; None means "leave the stored value".
_KEY, _NAME, _STATUS, _PROGRESS, _STEP, _TOTAL, _MESSAGE = range(7)
_STARTED, _FINISHED, _RESULT, _ERROR, _ATTEMPT = range(7, 12)


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
        rows, pending = self.rows, self.pending
        for msg in msgs:
            cls = msg.__class__
            if cls is MsgTaskProgress:
                task_id = msg.task_id
                if type(task_id) is not int:
                    raise TypeError(f"task_id must be an int, got {type(task_id).__name__}")
                row = rows.get(task_id)
                if row is None:
                    row = rows[task_id] = [None] * 12
                elif row[_STATUS] in _TERMINAL_SET:
                    continue
                pending[task_id] = msg
                if msg.message:
                    text = _truncate(str(msg.message))
                    if text:
                        row[_MESSAGE] = text
            elif cls is MsgTaskStarted:
                self._started(msg)
            elif cls is MsgTaskFinished:
                self._finished(msg)
            else:
                raise TypeError(f"not a lifecycle message: {cls.__name__}")
        if pending:
            progress = self.applied.progress
            for task_id, msg in pending.items():
                progress[task_id] = self._apply_progress(rows[task_id], msg)
            pending.clear()

    def _row(self, task_id: Any) -> list[Any]:
        if type(task_id) is not int:
            raise TypeError(f"task_id must be an int, got {type(task_id).__name__}")
        row = self.rows.get(task_id)
        if row is None:
            row = self.rows[task_id] = [None] * 12
        return row

    @staticmethod
    def _apply_progress(row: list[Any], msg: MsgTaskProgress) -> tuple[int, int, str]:
        step, total = msg.step, msg.total
        row[_STEP] = step if isinstance(step, int) else None
        row[_TOTAL] = total if isinstance(total, int) else None
        row[_PROGRESS] = _progress_of(step, total)
        text = _truncate(str(msg.message)) if msg.message else ""
        return (row[_STEP] or 0, row[_TOTAL] or 0, text)

    def _started(self, msg: MsgTaskStarted) -> None:
        task_id = msg.task_id
        row = self._row(task_id)
        attempt = msg.attempt if isinstance(msg.attempt, int) else 1
        if row[_STATUS] in _TERMINAL_SET and attempt <= (row[_ATTEMPT] or 1):
            return  # a late or duplicate start must not reopen a finished task
        row[_KEY] = None if msg.key is None else _truncate(str(msg.key))
        row[_NAME] = _truncate(str(msg.name))
        row[_STATUS] = "running"
        row[_STARTED] = row[_STARTED] or _truncate(str(msg.started_at))
        row[_FINISHED] = None
        row[_ATTEMPT] = attempt
        self.applied.started.append((task_id, row[_NAME]))

    def _finished(self, msg: MsgTaskFinished) -> None:
        task_id = msg.task_id
        row = self._row(task_id)
        earlier = self.pending.pop(task_id, None)
        if earlier is not None:  # progress sent before this finish lands first
            self._apply_progress(row, earlier)
        attempt = msg.attempt if isinstance(msg.attempt, int) else 1
        if row[_STATUS] in _TERMINAL_SET and attempt <= (row[_ATTEMPT] or 1):
            return  # duplicate finish: the first one stands
        status = str(msg.status)
        if status not in _TERMINAL_SET:
            raise ValueError(f"status {status!r} is not one of {', '.join(TERMINAL)}")
        row[_STATUS] = status
        row[_FINISHED] = _truncate(str(msg.finished_at))
        if msg.name is not None and row[_NAME] is None:
            row[_NAME] = _truncate(str(msg.name))
        if msg.key is not None and row[_KEY] is None:
            row[_KEY] = _truncate(str(msg.key))
        if status == "done" or status == "skipped":  # skipped: done by an earlier run
            row[_PROGRESS] = 1.0
        if msg.result is not None:
            row[_RESULT] = _result_text(msg.result)
        if msg.message:
            row[_MESSAGE] = _truncate(str(msg.message))
        if msg.error is not None:
            row[_ERROR] = _truncate(str(msg.error))
        row[_ATTEMPT] = attempt
        self.applied.progress.pop(task_id, None)
        self.applied.finished.append((task_id, status))
