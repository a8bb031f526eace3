"""An attempt's deadline, from a worker process to the driver that can kill it.

The declarative runner calls `attempt_deadline` around each attempt. In a process of the
process executor (which `install`s its channel to the driver) the driver then kills the
process if the attempt outlives its timeout, the one way to stop a stuck attempt for good;
anywhere else it is a no-op and the runner falls back to its thread timeout. It sits apart
from `pipeloom.executors.processes` so the runner need not import an executor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["attempt_deadline", "held_now", "install"]

log = logging.getLogger("pipeloom.executors")

_guard: Any = None
"""In a child: sends attempt deadlines to the driver (see `attempt_deadline`)."""
_held: Callable[[], int] | None = None
"""In a child: how many messages the running attempt holds (asked when it expires)."""


def attempt_deadline(
    seconds: float | None,
    attempt: int = 1,
    retry: bool = False,
    held: Callable[[], int] | None = None,
) -> bool:
    """Ask the driver to kill this process if the attempt outlives ``seconds``.

    Called by the declarative runner around each attempt; a no-op (False) outside a worker
    process, where the runner falls back to its thread timeout.

    Args:
        seconds: the attempt's timeout, or None once the attempt is over.
        attempt: the attempt number.
        retry: whether a timeout of this attempt would be retried.
        held: counts the messages the attempt holds, which a kill discards.
    """
    global _held
    if _guard is None:
        return False
    _held = held if seconds is not None else None
    _guard(("deadline", seconds, attempt, retry))
    return True


def held_now() -> int | None:
    count = _held
    try:
        return None if count is None else int(count())
    except Exception as exc:  # never let the count stop the kill
        log.debug("could not count the attempt's held messages: %s", exc)
        return None


def install(send: Callable[[Any], None]) -> None:
    """In a worker process: send deadlines to the driver through ``send``."""
    global _guard
    _guard = send
