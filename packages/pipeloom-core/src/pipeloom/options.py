"""How a run records itself: the writer's settings, in one object.

`run_pipeline` takes them as keywords; a `~pipeloom.Pipeline` takes them as one
``options=RunOptions(...)``, so every setting the engine has is reachable from a pipeline
(``synchronous="FULL"`` for power-loss durability, a shorter ``lease``, extra listeners)
without `Pipeline` copying each keyword by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, get_args

from pipeloom.db import Synchronous
from pipeloom.errors import InvalidArgumentError
from pipeloom.queue import DEFAULT_MAXSIZE
from pipeloom.tasklogs import DEFAULT_TASK_LOG_LIMIT

if TYPE_CHECKING:  # the writer takes RunOptions itself
    from pipeloom.alerts import Alerts
    from pipeloom.writer import Listener

__all__ = ["MAX_COUNT", "RunOptions", "check_settings"]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The writer's and the queue's settings for a run; every field has `run_pipeline`'s default."""

    wal: bool = True
    """Write-ahead logging, so readers never block the writer."""
    synchronous: Synchronous = "NORMAL"
    """NORMAL (fast; survives a crash of the process) or FULL (also survives power loss)."""
    batch_size: int | None = None
    """Most messages applied in one transaction (None: the writer's default, 5,000)."""
    commit_interval: float | None = None
    """Longest a lone message waits for company before its commit (None: 20 ms)."""
    queue_size: int = DEFAULT_MAXSIZE
    """Messages that may wait for the writer before workers pause."""
    lease: float | None = None
    """Seconds after its last heartbeat that readers call the run stale (None: 15 s)."""
    listeners: tuple[Listener, ...] = ()
    """Extra post-commit listeners, called with what each commit made durable."""
    task_log_limit: int = DEFAULT_TASK_LOG_LIMIT
    """Log records stored per task in ``task_logs``; the rest are counted, not stored."""
    # Running unattended (pipeloom.retention, pipeloom.alerts); not run_pipeline keywords.
    keep_runs: int | None = None
    """Retention: as the run starts, delete this pipeline's runs beyond the newest N."""
    keep_days: float | None = None
    """Retention: as the run starts, delete this pipeline's runs older than N days."""
    alerts: Alerts | None = None
    """Hooks called when the run ends and when a task fails for good (`pipeloom.alerts`)."""

    def __post_init__(self) -> None:
        """Refuse a setting no run could use, when it is written rather than mid-run.

        Raises:
            InvalidArgumentError: naming the field, the value and what it takes.
        """
        check_settings(
            "RunOptions",
            synchronous=self.synchronous,
            batch_size=self.batch_size,
            commit_interval=self.commit_interval,
            queue_size=self.queue_size,
            lease=self.lease,
            task_log_limit=self.task_log_limit,
        )
        if self.keep_runs is not None or self.keep_days is not None:
            from pipeloom.retention import Retention  # checks both, one line each

            Retention(self.keep_runs, self.keep_days)

    def as_kwargs(self) -> dict[str, Any]:
        """The options as `run_pipeline` keywords (the unattended ones go in ``options=``)."""
        unattended = {"keep_runs", "keep_days", "alerts"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in unattended}


MAX_COUNT = 2**63 - 1
"""Largest count a setting may hold: SQLite's INTEGER, where counts end up."""


def _count(where: str, name: str, value: object, low: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_COUNT:
        raise InvalidArgumentError(
            f"{where}({name}={value!r}): use a whole number from {low} to {MAX_COUNT}{note}"
        )


def _seconds(where: str, name: str, value: object, *, zero: bool, fix: str) -> None:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number < 0 or (not zero and number == 0):
        raise InvalidArgumentError(f"{where}({name}={value!r}): {fix}")


def check_settings(
    where: str,
    *,
    synchronous: object = "NORMAL",
    batch_size: object = None,
    commit_interval: object = None,
    queue_size: object = DEFAULT_MAXSIZE,
    lease: object = None,
    task_log_limit: object = DEFAULT_TASK_LOG_LIMIT,
) -> None:
    """Refuse a writer or queue setting no run could use: the one check for both ways in.

    `RunOptions` and `~pipeloom.engine.run_pipeline`'s keywords go through it, so a NaN,
    an infinity, a negative or a huge value fails before a run starts, in one line.

    Args:
        where: how the caller is named in the message (``RunOptions``, ``run_pipeline``).
        synchronous: NORMAL, FULL, OFF or EXTRA.
        batch_size: None or a whole number, 1 or more.
        commit_interval: None or finite seconds, 0 or more.
        queue_size: a whole number, 2 or more.
        lease: None or finite seconds, more than 0.
        task_log_limit: a whole number, 0 or more.

    Raises:
        InvalidArgumentError: naming the setting, the value and what it takes.
    """
    if str(synchronous).upper() not in get_args(Synchronous):
        raise InvalidArgumentError(
            f"{where}(synchronous={synchronous!r}): use NORMAL (the default) or "
            "FULL (survives power loss); OFF and EXTRA also work"
        )
    if batch_size is not None:
        _count(where, "batch_size", batch_size, 1)
    if commit_interval is not None:
        _seconds(
            where,
            "commit_interval",
            commit_interval,
            zero=True,
            fix="use a finite number of seconds, 0 or more",
        )
    _count(where, "queue_size", queue_size, 2)
    note = f" (0 stores no task logs; default {DEFAULT_TASK_LOG_LIMIT})"
    _count(where, "task_log_limit", task_log_limit, 0, note)
    if lease is not None:
        _seconds(where, "lease", lease, zero=False, fix="use a positive number of seconds")
