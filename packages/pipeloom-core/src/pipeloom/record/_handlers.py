"""The handler sandbox: user handler code run inside the writer's transaction.

A handler runs in a savepoint, so its failure costs only its own messages: a failed batch is
retried one message at a time, and a message that still fails becomes a dead letter. An
authorizer refuses BEGIN, COMMIT and ROLLBACK while handler code runs; a handler that gets past
it (by removing the guard) ends the batch's transaction, which `TransactionEnded` reports to
the writer so the batch is applied again without its messages. Which SQLite errors mean no
write can succeed any more (`is_fatal`), and how a refusal is worded (`reason`), live here too.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from pipeloom._text import storable
from pipeloom.errors import DatabaseError
from pipeloom.messages import MsgTaskFinished, utc_now
from pipeloom.record._atomic import HeldCounts, apply_held
from pipeloom.record._fold import AppliedBatch, _payload, origin_of
from pipeloom.record._registry import Handler, callable_name

__all__ = [
    "HandlerSandbox",
    "Step",
    "TransactionEnded",
    "is_fatal",
    "reason",
    "store_dead",
    "type_name_of",
]

log = logging.getLogger("pipeloom.writer")

# SQLite primary result codes after which no further write can succeed.
_FATAL_CODES = frozenset({8, 10, 11, 13, 14, 26})  # READONLY IOERR CORRUPT FULL CANTOPEN NOTADB

Step = tuple[type[Any], Handler, list[Any]]
"""One message type of a batch: its class, its handler and its messages, in arrival order."""
_GROUP = "pipeloom_group"
_ONE = "pipeloom_one"
_OWN_SAVEPOINTS = frozenset({_GROUP, _ONE})
"""Savepoints around handler calls; a handler may use savepoints of its own, not these."""


def is_fatal(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a SQLite error after which no further write can succeed."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _FATAL_CODES


def reason(exc: BaseException) -> str:
    """Why a message was refused, as stored in ``dead_letters.error``; never raises."""
    return storable(f"{type(exc).__name__}: {storable(exc)}")


def type_name_of(cls: type[Any]) -> str:
    """The dotted name of a message class, as stored in ``dead_letters``; never raises."""
    try:
        return storable(f"{cls.__module__}.{cls.__qualname__}")
    except Exception:  # a metaclass may make even these raise
        return storable(type.__repr__(cls))


def store_dead(
    conn: sqlite3.Connection,
    dead: list[tuple[Any, str]],
    *,
    run_id: int | None,
    store_tasks: bool,
) -> None:
    """Log each dead letter and, when pipeloom's tables exist, keep it in ``dead_letters``."""
    for msg, why in dead:
        log.warning("dead-lettered %s: %s", type(msg).__name__, why)
    if not store_tasks:
        return
    now = utc_now()
    conn.executemany(
        "INSERT INTO dead_letters (run_id, task_id, attempt, created_at, msg_type, payload, "
        "error) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                run_id,
                *origin_of(msg),
                now,
                type_name_of(type(msg)),
                _payload(msg),
                storable(why),
            )
            for msg, why in dead
        ],
    )


class HandlerSandbox:
    """Runs user handlers in the writer's transaction, and keeps them from ending it.

    One per writer, used only in the writer thread. ``authorize`` is the connection's
    authorizer; it refuses transaction statements only while handler code runs.
    """

    def __init__(self) -> None:
        """Start outside any handler, with no batch marked yet."""
        self._in_handler = False
        """True while user handler code runs: transaction statements are then refused."""
        self._refused: str | None = None
        """The transaction statement a handler tried (and was refused), if it did."""
        self._mark = 0
        """Counts batches with user handlers, to tell a handler's COMMIT from its ROLLBACK."""

    def apply_held(
        self,
        conn: sqlite3.Connection,
        held: list[MsgTaskFinished],
        applied: AppliedBatch,
        *,
        handlers: Mapping[type[Any], Handler],
        run_id: int | None,
        store_tasks: bool,
    ) -> HeldCounts:
        """Apply the finishes that carry a task's outputs (see `_atomic`), handlers guarded."""
        self._refused = None
        self._in_handler = True
        try:
            return apply_held(
                conn,
                held,
                handlers=handlers,
                run_id=run_id,
                store_tasks=store_tasks,
                applied=applied,
                is_fatal=is_fatal,
            )
        finally:
            self._in_handler = False
            if self._refused is not None:
                log.warning(
                    "a handler tried to end the writer's transaction (%s) while applying a "
                    "task's outputs; it was refused and the task recorded error: handlers must "
                    "not commit or roll back",
                    self._refused,
                )

    def write_mark(self, conn: sqlite3.Connection) -> None:
        """Note this batch in a temp table, inside its transaction.

        If a handler ends the transaction, the mark tells which way: a COMMIT kept it, a
        ROLLBACK threw it away (and the batch's earlier work with it).
        """
        self._mark += 1
        conn.execute("DELETE FROM temp.pipeloom_mark")
        conn.execute("INSERT INTO temp.pipeloom_mark VALUES (?)", (self._mark,))

    def mark_committed(self, conn: sqlite3.Connection) -> bool:
        """Tell whether the batch's mark survived: the handler committed, not rolled back."""
        row = conn.execute("SELECT max(batch) FROM temp.pipeloom_mark").fetchone()
        return bool(row and row[0] == self._mark)

    def authorize(self, action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        """Refuse BEGIN, COMMIT, ROLLBACK and the writer's own savepoints to handler code.

        A handler that commits (``conn.commit()``, ``with conn:``, ``executescript``) would
        end the batch's transaction under the writer; refused, it fails like any handler.
        """
        if self._in_handler and (
            action == sqlite3.SQLITE_TRANSACTION
            or (action == sqlite3.SQLITE_SAVEPOINT and arg2 in _OWN_SAVEPOINTS and arg1 != "BEGIN")
        ):
            if self._refused is None:  # the first one says what it did (`with conn:` tries both)
                self._refused = arg1 or "COMMIT"
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def apply_group(
        self,
        conn: sqlite3.Connection,
        index: int,
        cls: type[Any],
        msgs: list[Any],
        handler: Handler,
        dead: list[tuple[Any, str]],
    ) -> None:
        """Apply one type's messages with its handler: all at once, else one by one.

        Raises:
            TransactionEnded: the handler ended the batch's transaction.
        """
        failure = self.call_handler(conn, index, cls, handler, msgs, msgs, _GROUP)
        if failure is None:
            return
        if len(msgs) == 1:
            dead.append((msgs[0], failure))
            log.warning("handler for %s rejected a message: %s", cls.__name__, failure)
            return
        log.debug("handler for %s failed on a batch (%s); retrying one by one", cls, failure)
        for i, msg in enumerate(msgs):
            failure = self.call_handler(conn, index, cls, handler, [msg], msgs[i + 1 :], _ONE)
            if failure is not None:
                dead.append((msg, failure))
                log.warning("handler for %s rejected a message: %s", cls.__name__, failure)

    def call_handler(
        self,
        conn: sqlite3.Connection,
        index: int,
        cls: type[Any],
        handler: Handler,
        msgs: list[Any],
        rest: list[Any],
        savepoint: str,
    ) -> str | None:
        """Run ``handler(conn, msgs)`` in a savepoint; return why it failed, or None.

        Raises:
            TransactionEnded: the handler committed or rolled back the batch's transaction
                (past the writer's guard); the connection is out of any transaction again.
        """
        # Quoted: a handler's own "RELEASE pipeloom_group" must not reuse this cached statement.
        conn.execute(f'SAVEPOINT "{savepoint}"')
        error: Exception | None = None
        self._refused = None
        self._in_handler = True
        try:
            handler(conn, msgs)
        except Exception as exc:
            error = exc
        finally:
            self._in_handler = False
        refused = self._refused
        if error is not None and is_fatal(error):
            raise error
        ended = None
        try:
            if conn.in_transaction:
                if error is None and refused is None:
                    conn.execute(f'RELEASE "{savepoint}"')
                    return None
                conn.execute(f'ROLLBACK TO "{savepoint}"')
                conn.execute(f'RELEASE "{savepoint}"')
            else:
                ended = "ended"
        except sqlite3.OperationalError as exc:
            if "no such savepoint" not in str(exc):
                raise
            ended = "ended"  # it committed, then began a transaction of its own
        except sqlite3.ProgrammingError as exc:  # it closed the connection
            raise DatabaseError(
                f"handler {callable_name(handler)} for {cls.__name__} closed the writer's "
                f"connection ({exc}); handlers must not close it"
            ) from exc
        name = f"handler {callable_name(handler)} for {cls.__name__}"
        if ended is None:
            if refused is not None:
                return (
                    f"{name} tried to end the writer's transaction ({refused}), which the writer "
                    "refused; handlers must not commit or roll back (no conn.commit(), "
                    "`with conn:` or executescript): the writer commits each batch itself"
                )
            assert error is not None
            return reason(error)
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # whatever it began after ending ours
        conn.set_authorizer(self.authorize)  # it got past the guard, maybe by removing it
        committed = self.mark_committed(conn)
        how = "COMMIT" if committed else "ROLLBACK"
        raise TransactionEnded(
            index=index,
            cls=cls,
            handler=handler,
            msgs=msgs,
            rest=rest,
            committed=committed,
            reason=(
                f"{name} ended the writer's transaction ({how}); handlers must not commit or "
                "roll back: the writer commits each batch itself"
            ),
        )


class TransactionEnded(Exception):
    """A handler committed or rolled back the writer's transaction (past the guard)."""

    def __init__(
        self,
        *,
        index: int,
        cls: type[Any],
        handler: Handler,
        msgs: list[Any],
        rest: list[Any],
        committed: bool,
        reason: str,
    ) -> None:
        super().__init__(reason)
        self.index = index
        """Position of the handler's step in the batch."""
        self.cls = cls
        self.handler = handler
        self.msgs = msgs
        """The messages the handler was given when it ended the transaction."""
        self.rest = rest
        """Messages of the same step not applied yet (after ``msgs``)."""
        self.committed = committed
        """True when it committed: the batch's work before it is durable."""
        self.reason = reason
