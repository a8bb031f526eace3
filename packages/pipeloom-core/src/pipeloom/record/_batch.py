"""Applying one batch of messages in one transaction, then telling the listeners.

The writer's drain (`pipeloom.writer`) hands over a batch already sorted into lifecycle
messages, finishes that carry outputs, and the rest. Here lifecycle messages are folded into
one row change per task (`_fold`, `_task_sql`), attempts and task logs are stored, user
messages go to their handlers in the sandbox (`_handlers`), the engine's control messages are
noted, what could not be applied becomes a dead letter, the run row's live counts move, and
it all commits at once; then the listeners see what the commit made durable. Mixed into
`pipeloom.writer.SQLiteWriter`, whose attributes it uses; it runs only in the writer thread.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from pipeloom._control import Refused, RunEnd
from pipeloom._text import storable
from pipeloom.messages import MsgRunFinished, MsgTaskAttempt, MsgTaskFinished, MsgTaskLog, utc_now
from pipeloom.record._atomic import HeldCounts
from pipeloom.record._fold import AppliedBatch, _Fold, _payload
from pipeloom.record._handlers import (
    Step,
    TransactionEnded,
    is_fatal,
    reason,
    store_dead,
    type_name_of,
)
from pipeloom.record._lifecycle import WriterLifecycle
from pipeloom.record._registry import Handler, find_handler
from pipeloom.record._runs import LiveCounts
from pipeloom.record._task_sql import upsert_tasks
from pipeloom.status import ENDED_RUN_STATUSES, FAILED
from pipeloom.tasklogs import TaskLogStore

__all__ = ["BatchApplier"]

log = logging.getLogger("pipeloom.writer")

_SIGN_OF_LIFE = 1.0
"""Seconds between heartbeats written by commits that change no count (progress alone)."""


class BatchApplier(WriterLifecycle):
    """The batch half of `pipeloom.writer.SQLiteWriter`: one transaction per batch."""

    handlers: dict[type[Any], Handler]
    _listeners: list[Callable[[AppliedBatch], None]]
    _warned_types: set[type[Any]]
    _uncounted: int
    _live: LiveCounts
    _live_next: LiveCounts | None
    _task_logs: TaskLogStore

    def _apply(
        self, lifecycle: list[Any], held: list[MsgTaskFinished], others: list[Any], taken: int
    ) -> None:
        """Apply one batch: ``taken`` messages, sorted by the drain (see `_sort_one`)."""
        conn = self._conn
        assert conn is not None
        steps, known_dead = self._sort(others)
        fold = _Fold()
        while True:
            dead = list(known_dead)
            try:
                outputs = self._apply_once(conn, lifecycle, steps, fold, dead, held)
                break
            except TransactionEnded as ended:
                # A handler committed or rolled back the batch's transaction. Its messages
                # are dead; what it committed stays, what it threw away is applied again.
                log.warning(
                    "%s; its %d message(s) are dead-lettered", ended.reason, len(ended.msgs)
                )
                lost = {id(m) for m in ended.msgs}
                its_dead = [(m, ended.reason) for m in ended.msgs]
                if ended.committed:
                    known_dead = dead + its_dead  # this attempt's dead letters are not stored yet
                    lifecycle = []  # committed, and fold.applied already says so
                    rest = [m for m in ended.rest if id(m) not in lost]
                    steps = [(ended.cls, ended.handler, rest), *steps[ended.index + 1 :]]
                else:
                    known_dead = known_dead + its_dead
                    steps = [
                        (cls, handler, [m for m in msgs if id(m) not in lost])
                        for cls, handler, msgs in steps
                    ]
                    fold = _Fold()
        # A held finish counts as one message of the batch; its outputs count on their own.
        n_dead = len(dead) + outputs.dead
        applied = fold.applied
        applied.messages = taken + outputs.messages
        applied.dead_letters = n_dead
        self.messages_applied += taken + outputs.messages - n_dead - self._uncounted
        self._uncounted = 0
        self.messages_dead += n_dead
        live = self._live_next
        if live is not None:
            # Counted once per task (a duplicate or late finish is not a second failure).
            self.failed_task_ids.extend(t for t, status in live.new if status in FAILED)
            self._live, self._live_next = live.adopt(), None
        self._task_logs.forget(task_id for task_id, _status in applied.finished)
        self._notify(applied)

    def _sort(self, others: list[Any]) -> tuple[list[Step], list[tuple[Any, str]]]:
        """Split what is not a lifecycle message: handler steps, and dead letters.

        Only ``type(msg)`` and identity are used on a message here: its ``__class__``,
        ``__eq__`` or ``__hash__`` may be user code that raises.
        """
        groups: dict[type[Any], list[Any]] = {}
        dead: list[tuple[Any, str]] = []
        logs: list[MsgTaskLog] = []
        one = _one_type(others)
        if one is not None:  # streamed rows of one type: the list as it is, no step a row
            groups[one] = others
            others = []
        for msg in others:
            cls = type(msg)
            if cls is MsgTaskLog:
                logs.append(msg)
            elif cls is MsgRunFinished or cls is RunEnd or cls is Refused:
                self._control(msg, dead)
            else:
                try:
                    group = groups.get(cls)
                    if group is None:
                        group = groups[cls] = []
                except Exception as exc:  # a metaclass __hash__/__eq__ that raises
                    dead.append((msg, f"message type cannot be looked up: {reason(exc)}"))
                    continue
                group.append(msg)
        steps: list[Step] = []
        attempts = groups.pop(MsgTaskAttempt, None)
        if attempts:
            steps.append((MsgTaskAttempt, self._apply_attempts, attempts))
        if logs:
            steps.append((MsgTaskLog, self._apply_logs, logs))
        for cls, msgs in groups.items():
            handler = find_handler(self.handlers, cls)
            if handler is None:
                if cls not in self._warned_types:
                    self._warned_types.add(cls)
                    log.warning(
                        "no handler for message type %s; dead-lettered (register one "
                        "with handlers={%s: fn})",
                        cls.__name__,
                        cls.__name__,
                    )
                why = f"no handler registered for {type_name_of(cls)}"
                dead.extend((m, why) for m in msgs)
                continue
            steps.append((cls, handler, msgs))
        return steps, dead

    def _apply_once(
        self,
        conn: sqlite3.Connection,
        lifecycle: list[Any],
        steps: list[Step],
        fold: _Fold,
        dead: list[tuple[Any, str]],
        held: list[MsgTaskFinished],
    ) -> HeldCounts:
        """Apply one batch in one transaction; ``dead`` gains what could not be applied.

        Raises:
            TransactionEnded: a handler ended the transaction (already cleaned up).
        """
        # IMMEDIATE takes the write lock up front, waiting out another process's commit
        # (busy timeout). A deferred BEGIN whose first statement reads (a user handler's
        # SELECT) fails at once with "database is locked" when another writer commits first.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if lifecycle:  # first: on failure it rolls the transaction back and begins again
                self._apply_lifecycle(conn, lifecycle, fold, dead)
            if steps or held:
                self._sandbox.write_mark(conn)
                # The guard judges statements when they are prepared; re-arming it expires
                # every cached one, so a cached "COMMIT" is judged again when a handler runs it.
                conn.set_authorizer(self._sandbox.authorize)
            for index, (cls, handler, msgs) in enumerate(steps):
                if msgs:
                    self._sandbox.apply_group(conn, index, cls, msgs, handler, dead)
            outputs = HeldCounts()
            if held:
                outputs = self._sandbox.apply_held(
                    conn,
                    held,
                    fold.applied,
                    handlers=self.handlers,
                    run_id=self.run_id,
                    store_tasks=self.store_task_status,
                )
            if dead:
                store_dead(conn, dead, run_id=self.run_id, store_tasks=self.store_task_status)
            self._write_live(conn, fold.applied)
            conn.execute("COMMIT")
        except TransactionEnded:
            raise  # the connection is already out of any transaction
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as err:  # closed or broken: the error that got here says why
                log.debug("rollback after %s failed too: %s", type(exc).__name__, err)
            raise
        self._check_file(soon=True)
        return outputs

    def _control(self, msg: Any, dead: list[tuple[Any, str]]) -> None:
        """Note the engine's account of the run; dead-letter what a worker tried to send."""
        cls = msg.__class__
        if cls is RunEnd:
            self._run_end = msg
            self._uncounted += 1  # the engine's bookkeeping, not a message anybody sent
        elif cls is Refused:
            dead.append((msg.msg, msg.reason))
        elif type(msg.status) is str and msg.status in ENDED_RUN_STATUSES:
            # A bare writer's owner may say the run was stopped; whether it is done is
            # decided from the rows (decide_run_status), never taken on someone's word.
            if msg.status in ("cancelled", "interrupted"):
                self._stop_hint = msg.status
        else:
            reason = (
                f"run status {_payload(msg.status)} is not one of {', '.join(ENDED_RUN_STATUSES)}"
            )
            dead.append((msg, reason))

    def _apply_lifecycle(
        self,
        conn: sqlite3.Connection,
        msgs: list[Any],
        fold: _Fold,
        dead: list[tuple[Any, str]],
    ) -> None:
        try:
            fold.add_all(msgs)
            if self.store_task_status:
                upsert_tasks(conn, self.run_id, fold)
            return
        except Exception as exc:
            if is_fatal(exc):
                raise
            # The batch's first writes (see _apply_once): rolling its transaction back undoes
            # only them, with no savepoint (two statements, and two GIL hand-offs) per batch.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            log.debug("lifecycle batch failed (%s); retrying message by message", reason(exc))
        # Slow path: one message at a time so one bad message costs only itself.
        applied = fold.applied = AppliedBatch()
        for msg in msgs:
            single = _Fold()
            try:
                single.add(msg)
                if self.store_task_status:
                    conn.execute("SAVEPOINT one")
                    try:
                        upsert_tasks(conn, self.run_id, single)
                    except BaseException:
                        conn.execute("ROLLBACK TO one")
                        raise
                    finally:
                        conn.execute("RELEASE one")
            except Exception as exc:
                if is_fatal(exc):
                    raise
                dead.append((msg, reason(exc)))
                continue
            applied.started.extend(single.applied.started)
            applied.progress.update(single.applied.progress)
            for item in single.applied.finished:
                applied.progress.pop(item[0], None)
                applied.finished.append(item)

    def _apply_attempts(self, conn: sqlite3.Connection, msgs: list[MsgTaskAttempt]) -> None:
        if not self.store_task_status:
            return
        conn.executemany(
            "INSERT INTO task_attempts (run_id, task_id, attempt, status, started_at, "
            "finished_at, error, discarded) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    self.run_id,
                    m.task_id,
                    m.attempt,
                    storable(m.status),
                    None if m.started_at is None else storable(m.started_at),
                    storable(m.finished_at),
                    storable(m.error),
                    m.discarded if type(m.discarded) is int else 0,
                )
                for m in msgs
            ],
        )

    def _write_live(self, conn: sqlite3.Connection, applied: AppliedBatch) -> None:
        """Move the run row's counts with this batch, in its transaction (see `LiveCounts`)."""
        if not (applied.started or applied.finished):
            # Progress alone is a sign of life too: a crashed run ends at its last one.
            if self.run_id is not None and time.monotonic() - self._last_beat >= _SIGN_OF_LIFE:
                conn.execute(
                    "UPDATE pipeline_runs SET heartbeat_at = ? WHERE id = ?",
                    (utc_now(), self.run_id),
                )
                self._last_beat = time.monotonic()
            return
        self._live_next = self._live.after(applied)
        if self.run_id is not None:
            self._live_next.write(conn, self.run_id)  # its heartbeat too
            self._last_beat = time.monotonic()

    def _apply_logs(self, conn: sqlite3.Connection, msgs: list[MsgTaskLog]) -> None:
        if self.store_task_status:
            self._task_logs.store(conn, self.run_id, msgs)

    def _notify(self, applied: AppliedBatch) -> None:
        for listener in self._listeners:
            try:
                listener(applied)
            except Exception:
                log.exception("progress listener %r failed; continuing", listener)


def _one_type(msgs: list[Any]) -> type[Any] | None:
    """The one type of every message in ``msgs`` when it is a domain type, else None.

    Classes are compared by identity only after the set is made; a class whose metaclass
    ``__hash__`` raises makes it None, and the message-by-message path judges it.
    """
    if not msgs:
        return None
    try:
        kinds = set(map(type, msgs))
    except Exception:  # a metaclass __hash__/__eq__ that raises: judged one by one
        return None
    if len(kinds) != 1:
        return None
    (cls,) = kinds
    if cls is MsgTaskLog or cls is MsgRunFinished or cls is RunEnd or cls is Refused:
        return None
    return cls
