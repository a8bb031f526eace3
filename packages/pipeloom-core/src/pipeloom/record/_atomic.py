"""Applying a task's domain messages together with its ``done`` row: all of them or none.

A declarative task holds what it emits and sends it on its finish
(``MsgTaskFinished(..., outputs=...)``). The writer holds such finishes out of the lifecycle
fold and applies them here, after the batch's other messages, inside savepoints:

1. Fast path: every held task of the batch under one savepoint, each message type's outputs
   of all those tasks in one handler call (so ``executemany`` still sees big lists), then
   their finish rows. One commit for 200 tasks x 1,000 rows costs what streaming costs.
2. If anything in it fails, that savepoint is rolled back and each task is tried under a
   savepoint of its own, so only the guilty task fails: its rows are rolled back, its
   messages go to ``dead_letters``, and its row says ``error`` naming the handler, the message
   type and the handler's error instead of ``done``.

A finish whose task is already terminal (a duplicate, or a finish that arrives after the run
recorded the task) does not apply its outputs twice: they are dead-lettered, never lost.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeloom._text import SUMMARY_CHARS as _SUMMARY_CHARS
from pipeloom._text import exc_summary, exc_text, storable
from pipeloom.messages import MsgTaskFinished, utc_now
from pipeloom.record._culprit import first_rejected
from pipeloom.record._fold import AppliedBatch, _Fold, _payload, _truncate, origin_of
from pipeloom.record._registry import Handler, find_handler, unmatched_note
from pipeloom.record._task_sql import upsert_tasks
from pipeloom.status import TERMINAL, sql_in

__all__ = ["HeldCounts", "apply_held", "holds_outputs"]

log = logging.getLogger("pipeloom.writer")

_IDS_PER_QUERY = 500
"""Task ids per ``IN (...)`` lookup, well below SQLite's parameter limit."""


def holds_outputs(msg: MsgTaskFinished) -> bool:
    """Tell whether ``msg`` carries outputs to apply atomically (only a ``done`` finish does).

    A finish of any other status keeps its place in the lifecycle stream; its outputs are
    never applied, which is the point: a failed attempt leaves nothing behind.
    """
    if msg.status == "done":
        return True
    log.warning(
        "task %s: a %r finish carried %s; only a done finish applies its outputs, so they "
        "were discarded",
        msg.task_id,
        msg.status,
        _count_text(msg.outputs),
    )
    return False


@dataclass(slots=True)
class HeldCounts:
    """What `apply_held` did, for the writer's message counters."""

    messages: int = 0
    """Output messages carried by the held finishes (applied or dead-lettered)."""
    dead: int = 0
    """Output messages dead-lettered because their task could not commit them."""


@dataclass(slots=True)
class _Unit:
    """One task's finish and its outputs grouped by type, in first-arrival order."""

    finish: MsgTaskFinished
    outputs: list[Any]
    groups: dict[type[Any], list[Any]] = field(default_factory=dict)


class _Rejected(Exception):
    """A task's outputs could not be applied; carries the sentence for its error row."""

    def __init__(
        self, reason: str, cause: BaseException | None, cls: type[Any] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause
        self.cls = cls
        """The message type whose handler rejected them (None: no handler, or not a handler)."""


def apply_held(
    conn: sqlite3.Connection,
    held: list[MsgTaskFinished],
    *,
    handlers: Mapping[type[Any], Handler],
    run_id: int | None,
    store_tasks: bool,
    applied: AppliedBatch,
    is_fatal: Callable[[BaseException], bool],
) -> HeldCounts:
    """Apply each held finish with its outputs in the writer's open transaction.

    Args:
        conn: the writer's connection, inside its batch transaction.
        held: ``done`` finishes carrying outputs, in the order they arrived.
        handlers: message type -> the user's batched handler.
        run_id: the run the task rows belong to.
        store_tasks: False when pipeloom keeps no tables (handlers still run atomically).
        applied: the batch's record for listeners; finished tasks are added to it.
        is_fatal: tells errors after which no write can succeed; those propagate.

    Returns:
        How many output messages there were and how many were dead-lettered.
    """
    batch = _HeldBatch(conn, handlers, run_id, store_tasks, applied, is_fatal)
    batch.apply(held)
    return batch.counts


class _HeldBatch:
    """The held finishes of one writer batch and everything needed to apply them."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        handlers: Mapping[type[Any], Handler],
        run_id: int | None,
        store_tasks: bool,
        applied: AppliedBatch,
        is_fatal: Callable[[BaseException], bool],
    ) -> None:
        self.conn = conn
        self.handlers = handlers
        self.run_id = run_id
        self.store_tasks = store_tasks
        self.applied = applied
        self.is_fatal = is_fatal
        self.counts = HeldCounts()

    def apply(self, held: list[MsgTaskFinished]) -> None:
        units = self._units(held)
        if len(units) > 1:
            try:
                self._apply_together(units)
                return
            except Exception as exc:
                self._raise_if_fatal(exc)
                log.debug(
                    "outputs of %d tasks failed together (%s); one task at a time", len(units), exc
                )
        for unit in units:
            try:
                self._apply_together([unit])
            except Exception as exc:
                self._raise_if_fatal(exc)
                if isinstance(exc, _Rejected):
                    culprit = self._culprit(unit, exc)
                    self._fail(unit.finish, unit.outputs, exc.reason, exc.cause, culprit)
                else:
                    reason = f"recording its finish failed ({exc_summary(exc)})"
                    self._fail(unit.finish, unit.outputs, reason, exc)

    def _units(self, held: list[MsgTaskFinished]) -> list[_Unit]:
        """One unit per task that may apply its outputs; the others are settled here."""
        units: list[_Unit] = []
        seen: dict[int, int] = {}
        terminal = self._terminal_rows(held) if self.store_tasks else {}
        for msg in held:
            outputs = msg.outputs
            if not isinstance(outputs, list | tuple):
                reason = f"its outputs must be a list or tuple, not {type(outputs).__name__}"
                self._fail(msg, [], reason, None)
                continue
            self.counts.messages += len(outputs)
            attempt = msg.attempt if isinstance(msg.attempt, int) else 1
            stored = terminal.get(msg.task_id)
            earlier = seen.get(msg.task_id)
            if earlier is not None:
                stored = ("done", earlier)
            if stored is not None and attempt <= stored[1]:
                # The first finish stands (as for the row itself): never apply twice.
                reason = (
                    f"task {msg.task_id} was already recorded {stored[0]}; the outputs of "
                    f"a later finish (attempt {attempt}) are not applied"
                )
                log.warning("%s; %s dead-lettered", reason, _count_text(outputs))
                self._dead_letter(outputs, reason, msg)
                continue
            seen[msg.task_id] = attempt
            unit = _Unit(msg, list(outputs))
            classes = set(map(type, outputs))  # in C: one type is the common case
            if len(classes) == 1:
                unit.groups[classes.pop()] = unit.outputs
            else:
                for out in unit.outputs:
                    cls = out.__class__
                    group = unit.groups.get(cls)
                    if group is None:
                        group = unit.groups[cls] = []
                    group.append(out)
            units.append(unit)
        return units

    def _raise_if_fatal(self, exc: Exception) -> None:
        """Re-raise what means no write can succeed (disk full, a handler that committed)."""
        cause = exc.cause if isinstance(exc, _Rejected) else exc
        if (cause is not None and self.is_fatal(cause)) or not self.conn.in_transaction:
            raise cause or exc

    def _apply_together(self, units: list[_Unit]) -> None:
        """Apply ``units``' outputs and finishes under one savepoint, or roll all of it back."""
        merged: dict[type[Any], list[Any]] = {}
        for unit in units:
            for cls, msgs in unit.groups.items():
                group = merged.get(cls)
                if group is None:
                    merged[cls] = list(msgs) if len(units) > 1 else msgs
                else:
                    group.extend(msgs)
        conn = self.conn
        conn.execute("SAVEPOINT pipeloom_atomic")
        try:
            for cls, msgs in merged.items():
                self._call(cls, msgs)
            fold = _Fold()
            fold.add_all(unit.finish for unit in units)
            if self.store_tasks:
                upsert_tasks(conn, self.run_id, fold)
        except BaseException:
            self._rollback()
            raise
        conn.execute("RELEASE pipeloom_atomic")
        _merge(self.applied, fold.applied)

    def _call(self, cls: type[Any], msgs: list[Any]) -> None:
        handler = find_handler(self.handlers, cls)
        if handler is None:
            raise _Rejected(
                f"no handler is registered for {_type_name(cls)}"
                f"{unmatched_note(cls, self.handlers.keys())}, so none of the task's "
                f"messages were applied; register one with handlers={{{cls.__name__}: fn}}",
                None,
            )
        name = getattr(handler, "__qualname__", None) or repr(handler)
        try:
            handler(self.conn, msgs)
        except Exception as exc:
            raise _Rejected(
                f"handler {name} rejected {cls.__name__} messages ({exc_summary(exc)}), so "
                "none of the task's messages were applied",
                exc,
                cls,
            ) from exc
        if not self.conn.in_transaction:
            # The savepoints this relies on went with the transaction; going on would apply
            # half a task. Stop with the handler's name rather than "no such savepoint".
            raise RuntimeError(
                f"handler {name} for {cls.__name__} committed or rolled back the writer's "
                "transaction; a handler must leave transaction control to the writer"
            )

    def _culprit(self, unit: _Unit, rejected: _Rejected) -> _Culprit | None:
        """Find the row of ``unit`` that its handler rejected (see `_culprit`)."""
        cls = rejected.cls
        if cls is None or cls not in unit.groups:
            return None
        handler = find_handler(self.handlers, cls)
        if handler is None:
            return None
        earlier = [(c, m) for c, m in unit.groups.items() if c is not cls]
        earlier = earlier[: list(unit.groups).index(cls)]

        def before() -> None:
            for c, m in earlier:
                self._call(c, m)

        msgs = unit.groups[cls]
        try:
            found = first_rejected(
                self.conn,
                lambda part: handler(self.conn, part),
                msgs,
                rejected.cause or rejected,
                before=before if earlier else None,
                is_fatal=self.is_fatal,
            )
        except Exception as exc:
            self._raise_if_fatal(exc)
            log.warning("task %s: could not find the rejected row: %s", unit.finish.task_id, exc)
            return None
        if found is None:
            return None
        index, error = found
        row = msgs[index]
        name = getattr(handler, "__qualname__", None) or repr(handler)
        # By identity: an equal row may come earlier (a duplicate key is the second of two).
        position = next(i for i, out in enumerate(unit.outputs) if out is row)
        return _Culprit(row, position, error, f"handler {name}")

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK TO pipeloom_atomic")
            self.conn.execute("RELEASE pipeloom_atomic")

    def _fail(
        self,
        finish: MsgTaskFinished,
        outputs: list[Any],
        reason: str,
        cause: BaseException | None,
        culprit: _Culprit | None = None,
    ) -> None:
        """Record the task ``error`` instead of ``done``; keep its outputs as dead letters.

        With a ``culprit`` the row that broke it is named in the task's error and stored
        first, with its own error; the other dead letters point to it.
        """
        if culprit is not None:
            reason = culprit.reason(len(outputs))
        log.warning(
            "task %s: %s; it is recorded as error and its %s were dead-lettered",
            finish.task_id,
            reason,
            _count_text(outputs),
        )
        message = storable(f"{reason} ({_count_text(outputs)} dead-lettered)", _SUMMARY_CHARS)
        error = message if cause is None else f"{message}\n\n{exc_text(cause)}"
        failed = dataclasses.replace(
            finish, status="error", result=None, message=message, error=error, outputs=()
        )
        fold = _Fold()
        fold.add(failed)
        if self.store_tasks:
            self.conn.execute("SAVEPOINT pipeloom_atomic")
            try:
                upsert_tasks(self.conn, self.run_id, fold)
            except Exception as exc:
                self._rollback()
                if self.is_fatal(exc):
                    raise
                log.error("task %s: could not record its error either: %s", finish.task_id, exc)
                return
            self.conn.execute("RELEASE pipeloom_atomic")
        _merge(self.applied, fold.applied)
        self._dead_letter(outputs, f"task {finish.task_id}: {reason}", finish, culprit)

    def _dead_letter(
        self,
        outputs: list[Any] | tuple[Any, ...],
        reason: str,
        finish: MsgTaskFinished,
        culprit: _Culprit | None = None,
    ) -> None:
        """Keep ``outputs`` in ``dead_letters`` under their task and attempt (the caller logs).

        The ``culprit`` goes first, with the handler's error for that row alone; the others
        then name its dead letter's id.
        """
        self.counts.dead += len(outputs)
        if not outputs or not self.store_tasks:
            return
        now = utc_now()
        task_id, attempt = origin_of(finish)
        sql = (
            "INSERT INTO dead_letters (run_id, task_id, attempt, created_at, msg_type, payload, "
            "error) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        rest: list[Any] | tuple[Any, ...] = outputs
        if culprit is not None:
            m = culprit.row
            own = (
                f"task {task_id}: this {type(m).__name__} (output {culprit.position + 1} of "
                f"{len(outputs)}) was rejected by {culprit.handler}: "
                f"{exc_summary(culprit.error)}; the task's other outputs are dead letters too"
            )
            cur = self.conn.execute(
                sql, (self.run_id, task_id, attempt, now, _type_name(type(m)), _payload(m), own)
            )
            reason = f"{reason} (dead letter {cur.lastrowid})"
            rest = [o for i, o in enumerate(outputs) if i != culprit.position]
        error = _truncate(reason)
        self.conn.executemany(
            sql,
            [
                (self.run_id, task_id, attempt, now, _type_name(type(m)), _payload(m), error)
                for m in rest
            ],
        )

    def _terminal_rows(self, held: list[MsgTaskFinished]) -> dict[int, tuple[str, int]]:
        """task_id -> (status, attempt) of the held tasks already terminal in the database."""
        ids = sorted({m.task_id for m in held if isinstance(m.task_id, int)})
        found: dict[int, tuple[str, int]] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            chunk = ids[start : start + _IDS_PER_QUERY]
            sql = (
                "SELECT task_id, status, attempt FROM task_runs WHERE run_id = ? AND task_id "
                f"IN ({', '.join('?' * len(chunk))}) AND status IN {sql_in(TERMINAL)}"
            )
            for task_id, status, attempt in self.conn.execute(sql, (self.run_id, *chunk)):
                found[int(task_id)] = (str(status), int(attempt))
        return found


@dataclass(frozen=True, slots=True)
class _Culprit:
    """The output a handler rejected: the row, where it was among the task's outputs, why."""

    row: Any
    position: int
    error: BaseException
    handler: str

    def reason(self, total: int) -> str:
        """The task's error: the handler, which output, why, then the row (cut if long)."""
        try:
            text = repr(self.row)
        except Exception as exc:  # a user __repr__ may raise
            text = f"<{type(self.row).__name__}: repr failed: {exc_summary(exc)}>"
        if len(text) > 200:
            text = text[:197] + "..."
        return (
            f"{self.handler} rejected {type(self.row).__name__} output {self.position + 1:,} "
            f"of {total:,} ({exc_summary(self.error)}), so none of the task's messages were "
            f"applied: {text}"
        )


def _merge(into: AppliedBatch, part: AppliedBatch) -> None:
    for task_id, status in part.finished:
        into.progress.pop(task_id, None)
        into.finished.append((task_id, status))


def _type_name(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _count_text(outputs: object) -> str:
    n = len(outputs) if isinstance(outputs, list | tuple) else 0
    return f"{n} output message{'' if n == 1 else 's'}"
