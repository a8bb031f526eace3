"""Log records emitted inside a task, sent to the writer and stored per task in ``task_logs``.

Two ways in, one message (`~pipeloom.messages.MsgTaskLog`):

- ``ctx.log`` sends its records itself (INFO and above always; DEBUG when its logger is
  enabled for it, as with ``-vv``), whatever the console shows.
- The user's own ``logging`` calls made while a task runs reach a handler on the root logger,
  which sends them for the task that is running in that thread, asyncio task or process.
  They obey the user's logging configuration: a record its logger does not emit (an INFO line
  while the root level is WARNING, a logger with ``propagate = False``) is not stored either.

Which task is running is a context variable set by the executor around each task
(`task_scope`), so it follows threads, asyncio tasks, worker processes and Dask workers
alike. Threads a task starts itself do not inherit it. The writer bounds what it stores per
task (``task_log_limit``) and counts the rest.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from pipeloom._text import storable
from pipeloom.messages import MsgTaskLog, utc_now

__all__ = [
    "DEFAULT_TASK_LOG_LIMIT",
    "TaskLogHandler",
    "TaskLogStore",
    "enter_task",
    "leave_task",
    "record_text",
    "send_log",
    "set_attempt",
    "task_scope",
    "within_attempt",
]

Put = Callable[..., None]

DEFAULT_TASK_LOG_LIMIT = 200
"""Log records stored per task; the rest are counted in one summary row of the task."""


class _Scope:
    """The task running here: where its records go and under which id and attempt."""

    __slots__ = ("attempt", "closed", "put", "task_id")

    def __init__(self, put: Put, task_id: int, attempt: int) -> None:
        self.put = put
        self.task_id = task_id
        self.attempt = attempt
        self.closed = False
        """Set when the attempt was abandoned (timed out): its late records are dropped."""


_current: ContextVar[_Scope | None] = ContextVar("pipeloom_task", default=None)
_install_lock = threading.Lock()


def record_text(msg: object, args: Any, exc_info: Any = None) -> str:
    """A record's text as `logging` would format it, plus its traceback; never raises."""
    try:
        text = str(msg) % args if args else str(msg)
    except Exception:  # a bad format string or a user __str__ that raises
        text = f"{msg!r} % {args!r}"
    if exc_info:
        try:
            if exc_info is True:
                formatted = traceback.format_exc()
            elif isinstance(exc_info, BaseException):
                formatted = "".join(traceback.format_exception(exc_info))
            else:
                formatted = "".join(traceback.format_exception(*exc_info))
            if formatted and formatted != "NoneType: None\n":
                text = f"{text}\n{formatted.rstrip()}"
        except Exception as exc:  # a broken exception object: keep the message at least
            text = f"{text}\n(traceback unavailable: {type(exc).__name__})"
    return text


def send_log(
    put: Put, task_id: int, attempt: int, level: int, logger: str | None, message: str
) -> None:
    """Put one task log record on the writer's queue."""
    put(
        MsgTaskLog(
            task_id,
            message,
            level=logging.getLevelName(level),
            logger=logger,
            attempt=attempt,
            created_at=utc_now(),
        )
    )


class TaskLogHandler(logging.Handler):
    """On the root logger: sends records made inside a task to that task's log.

    Records of pipeloom's own loggers are left out (``ctx.log`` sends its records itself).
    Installing a root handler would silence Python's last-resort output for an application
    that configured no logging, so a record no other handler takes still goes there.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Send ``record`` to the running task's log, if a task is running here."""
        scope = _current.get()
        name = record.name
        if (
            scope is not None
            and not scope.closed
            and not (name == "pipeloom" or name.startswith("pipeloom."))
        ):
            try:
                text = record.getMessage()
                if record.exc_info:
                    text = record_text(text, None, record.exc_info)
                send_log(scope.put, scope.task_id, scope.attempt, record.levelno, name, text)
            except Exception:  # never let a task's logging call fail the task
                self.handleError(record)
        if not self._others_take(record):
            last = logging.lastResort
            if last is not None and record.levelno >= last.level:
                last.handle(record)

    def _others_take(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


_handler = TaskLogHandler()


def install() -> TaskLogHandler:
    """Put the capturing handler on the root logger of this process, if it is not there.

    Checked at every task, not once: ``logging.config.dictConfig``, ``basicConfig(force=True)``
    and test runners replace the root logger's handlers.
    """
    root = logging.root
    if _handler not in root.handlers:
        with _install_lock:
            if _handler not in root.handlers:
                root.addHandler(_handler)
    return _handler


def enter_task(put: Put, task_id: int, attempt: int = 1) -> Token[_Scope | None]:
    """Mark ``task_id`` as the task running in this context (executors call it per task).

    Returns:
        The token `leave_task` takes when the task returns.
    """
    if _handler not in logging.root.handlers:
        install()
    return _current.set(_Scope(put, task_id, attempt))


def leave_task(token: Token[_Scope | None]) -> None:
    """Undo `enter_task`: records made here no longer belong to that task."""
    _current.reset(token)


@contextmanager
def task_scope(put: Put, task_id: int, attempt: int = 1) -> Iterator[None]:
    """`enter_task` and `leave_task` around a block, for executors that are not hot paths."""
    token = enter_task(put, task_id, attempt)
    try:
        yield
    finally:
        leave_task(token)


def set_attempt(attempt: int) -> None:
    """Note that the running task moved on to ``attempt`` (a retry)."""
    scope = _current.get()
    if scope is not None:
        scope.attempt = attempt


def within_attempt(
    attempt: int, fn: Callable[[], Any]
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """Bind ``fn`` to a scope of its own for one attempt, wherever it then runs.

    An attempt with a timeout runs in a thread of its own, which does not inherit the
    caller's context: without this its ``logging`` calls would reach no task. Its own scope
    also lets a timed-out attempt be cut off: once abandoned, what it logs is dropped, never
    stored under a later attempt or after the task's final row.

    Returns:
        The bound callable, and ``abandon()`` which drops the attempt's later records.
    """
    outer = _current.get()
    if outer is None:
        return fn, _nothing
    scope = _Scope(outer.put, outer.task_id, attempt)

    def bound() -> Any:
        token = _current.set(scope)
        try:
            return fn()
        finally:
            _current.reset(token)

    def abandon() -> None:
        scope.closed = True

    return bound, abandon


def _nothing() -> None:
    return None


_LOG_CHARS = 20_000
"""Longest stored log record (a long traceback is cut, with a note)."""


class TaskLogStore:
    """The writer's side: stores records, at most ``limit`` per task, and counts the rest.

    The bound is kept in the one writer, so it holds whatever executor ran the task.
    Counters exist only for tasks that logged and are not finished yet (`forget`).
    """

    __slots__ = ("_dropped", "_kept", "limit")

    def __init__(self, limit: int) -> None:
        """Store at most ``limit`` records per task (0: none, only the count)."""
        self.limit = limit
        self._kept: dict[int, int] = {}
        """task_id -> records stored."""
        self._dropped: dict[int, list[int]] = {}
        """task_id -> [id of its summary row in task_logs, records dropped so far]."""

    def forget(self, task_ids: Iterable[int]) -> None:
        """These tasks finished: their records are all in (they travel ahead of a finish)."""
        kept = self._kept
        if not kept:  # the usual case: no task logged since the last batch
            return
        dropped = self._dropped
        for task_id in task_ids:
            kept.pop(task_id, None)
            dropped.pop(task_id, None)

    def store(self, conn: sqlite3.Connection, run_id: int | None, msgs: list[MsgTaskLog]) -> None:
        """Insert the records within the bound; keep one summary row per task for the rest."""
        limit, kept = self.limit, self._kept
        rows: list[tuple[object, ...]] = []
        over: dict[int, tuple[int, str, int]] = {}  # task_id -> (dropped now, when, attempt)
        for m in msgs:
            task_id = m.task_id if type(m.task_id) is int else int(m.task_id)
            attempt = m.attempt if type(m.attempt) is int else 1
            n = kept.get(task_id, 0)
            if n < limit:
                kept[task_id] = n + 1
                rows.append(
                    (
                        run_id,
                        task_id,
                        attempt,
                        storable(m.created_at),
                        storable(m.level, 20),
                        None if m.logger is None else storable(m.logger, 200),
                        storable(m.message, _LOG_CHARS),
                    )
                )
            else:
                kept[task_id] = n
                before = over.get(task_id, (0, "", 1))[0]
                over[task_id] = (before + 1, storable(m.created_at), attempt)
        if rows:
            conn.executemany(
                "INSERT INTO task_logs (run_id, task_id, attempt, created_at, level, logger, "
                "message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        for task_id, (n, when, attempt) in over.items():
            self._count_dropped(conn, run_id, task_id, n, when, attempt)

    def _count_dropped(
        self,
        conn: sqlite3.Connection,
        run_id: int | None,
        task_id: int,
        n: int,
        when: str,
        attempt: int,
    ) -> None:
        summary = self._dropped.get(task_id)
        total = n + (summary[1] if summary else 0)
        text = (
            f"{total} more log record(s) of this task were dropped "
            f"(task_log_limit={self.limit}; raise it in RunOptions to keep more)"
        )
        if summary is None:
            cur = conn.execute(
                "INSERT INTO task_logs (run_id, task_id, attempt, created_at, level, logger, "
                "message, dropped) VALUES (?, ?, ?, ?, 'WARNING', 'pipeloom', ?, ?)",
                (run_id, task_id, attempt, when, text, total),
            )
            self._dropped[task_id] = [int(cur.lastrowid or 0), total]
        else:
            conn.execute(
                "UPDATE task_logs SET dropped = ?, message = ?, created_at = ? WHERE id = ?",
                (total, text, when, summary[0]),
            )
            summary[1] = total
