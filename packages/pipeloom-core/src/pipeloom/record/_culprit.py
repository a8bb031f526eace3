"""Which row broke a rejected batch: the first message whose prefix the handler refuses.

When a handler rejects a task's outputs (a CHECK constraint, a NOT NULL, a type error in the
handler) the whole task fails and every one of its messages is dead-lettered. Its error
alone ("CHECK constraint failed: amount >= 0") does not say which of the 1,076 rows to look
at. Here the handler is run again on prefixes of the list, each inside a savepoint that is
always rolled back, halving the range each time: about log2(n) calls and 2n rows of work,
paid only on the failure path. The first row whose prefix fails is the one that broke it
(for a duplicate key: the second of the two).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

__all__ = ["first_rejected"]

log = logging.getLogger("pipeloom.writer")

_SAVEPOINT = "pipeloom_probe"


def first_rejected(
    conn: sqlite3.Connection,
    call: Callable[[list[Any]], None],
    msgs: list[Any],
    error: BaseException,
    *,
    before: Callable[[], None] | None = None,
    is_fatal: Callable[[BaseException], bool],
) -> tuple[int, BaseException] | None:
    """Find the first message of ``msgs`` that ``call`` rejects; nothing is kept.

    Args:
        conn: the writer's connection, inside its transaction.
        call: applies a list of messages (the user's handler).
        msgs: what it rejected as a whole.
        error: what it raised for the whole list.
        before: applies what the task's messages of earlier types did first (the handler's
            rows may depend on them), inside the same probe.
        is_fatal: tells errors after which no write can succeed; those propagate.

    Returns:
        The index of the row that broke it and the error it raised; None when there is
        nothing to search or the rejection did not happen again (a handler that depends on
        more than its rows).
    """

    def fails(k: int) -> BaseException | None:
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            if before is not None:
                before()
            call(msgs[:k])
        except Exception as exc:
            if is_fatal(exc):
                raise
            return exc
        finally:
            if conn.in_transaction:
                conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
                conn.execute(f"RELEASE {_SAVEPOINT}")
        return None

    if not msgs or not conn.in_transaction:
        return None
    good, bad = 0, len(msgs)  # msgs[:good] is accepted, msgs[:bad] is rejected
    confirmed = False
    while bad - good > 1:
        mid = (good + bad) // 2
        exc = fails(mid)
        if exc is None:
            good = mid
        else:
            bad, error, confirmed = mid, exc, True
    if not confirmed:  # the whole list's failure was never reproduced here: check it once
        again = fails(bad)
        if again is None:
            log.debug("a rejected batch of %d messages was accepted when tried again", len(msgs))
            return None
        error = again
    return bad - 1, error
