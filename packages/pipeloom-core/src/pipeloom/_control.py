"""Messages only the engine sends to its writer; a worker can never send them.

A worker's queue (`pipeloom.executors.TaskQueue`) wraps anything that looks like one of
pipeloom's control messages (`SENTINEL`, `MsgRunFinished`, these) in `Refused`, which the
writer stores as a dead letter: no message a worker sends can stop the writer or decide
how the run ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Refused", "RunEnd"]


@dataclass(frozen=True, slots=True)
class RunEnd:
    """The engine's account of the run, sent once, after the last task and before SENTINEL."""

    taken: int
    """Tasks taken from the task source (each must have exactly one terminal row)."""
    stop: str | None = None
    """Why admission stopped early: ``cancelled``, ``interrupted``, or None."""
    error: str | None = None
    """Why the run failed as a whole (the task source or the executor raised)."""
    note: str | None = None
    """What else a reader should know (how many tasks were never started)."""
    cause: str | None = None
    """What stopped the run early (a `pipeloom.status.StopReason`), or None."""
    planned: int | None = None
    """Tasks the source held when the run began (None: it has no length)."""
    not_started: int | None = 0
    """Tasks the source still held when the run stopped (None: unknown, no length)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A control message a worker tried to send; stored as a dead letter, never applied."""

    msg: Any
    """What the worker sent."""
    reason: str
    """Why it was refused."""
