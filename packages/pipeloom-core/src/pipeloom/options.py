"""How a run records itself: the writer's settings, in one object.

`run_pipeline` takes them as keywords; a `~pipeloom.Pipeline` takes them as one
``options=RunOptions(...)``, so every setting the engine has is reachable from a pipeline
(``synchronous="FULL"`` for power-loss durability, a shorter ``lease``, extra listeners)
without `Pipeline` copying each keyword by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, get_args

from pipeloom.db import Synchronous
from pipeloom.queue import DEFAULT_MAXSIZE
from pipeloom.tasklogs import DEFAULT_TASK_LOG_LIMIT

if TYPE_CHECKING:  # the writer takes RunOptions itself
    from pipeloom.writer import Listener

__all__ = ["RunOptions"]


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

    def __post_init__(self) -> None:
        """Refuse a setting no run could use, when it is written rather than mid-run.

        Raises:
            ValueError: naming the field, the value and what it takes.
        """
        if str(self.synchronous).upper() not in get_args(Synchronous):
            raise ValueError(
                f"RunOptions(synchronous={self.synchronous!r}): use NORMAL (the default) or "
                "FULL (survives power loss); OFF and EXTRA also work"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"RunOptions(batch_size={self.batch_size}): use 1 or more")
        if self.queue_size < 2:
            raise ValueError(f"RunOptions(queue_size={self.queue_size}): use 2 or more")
        if self.task_log_limit < 0:
            raise ValueError(
                f"RunOptions(task_log_limit={self.task_log_limit}): use 0 (store no task "
                f"logs) or more (default {DEFAULT_TASK_LOG_LIMIT})"
            )
        if self.lease is not None and not 0 < self.lease < float("inf"):
            raise ValueError(f"RunOptions(lease={self.lease!r}): use a positive number of seconds")

    def as_kwargs(self) -> dict[str, Any]:
        """The options as `run_pipeline` keywords."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
