"""The small typed messages that workers send to the single writer thread.

Workers never touch the database: they put these frozen dataclasses on the message
queue and the writer applies them in batches. Users add their own message types (any
dataclass) and register a handler for each with the writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "PIPELOOM_MESSAGES",
    "SENTINEL",
    "FinishStatus",
    "Msg",
    "MsgRunFinished",
    "MsgTaskAttempt",
    "MsgTaskFinish",
    "MsgTaskFinished",
    "MsgTaskLog",
    "MsgTaskProgress",
    "MsgTaskStart",
    "MsgTaskStarted",
    "TaskDef",
    "parse_utc",
    "utc_now",
]

FinishStatus: TypeAlias = Literal[
    "done", "error", "cancelled", "timeout", "skipped", "interrupted", "upstream_failed"
]
"""Terminal statuses: the seed's three, the declarative layer's, and a forced stop's."""


def utc_now() -> str:
    """Return the current time as an ISO 8601 UTC string, the format every timestamp uses."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_utc(text: str | None) -> datetime | None:
    """Read a stored timestamp back as an aware UTC datetime; None when blank or not one.

    Readers meet text pipeloom did not write (an older release's, a user's ``Z`` suffix), so
    a bad value is None rather than an error; one without a zone is taken as UTC.
    """
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TaskDef:
    """One unit of work handed to a worker function."""

    task_id: int
    """Identifies the task within its run; unique per run."""
    name: str
    """Human-readable label shown in progress bars and stored on `task_runs`."""
    steps: int = 1
    """How many progress steps the worker intends to report."""
    payload: Any = None
    """Anything the worker needs (a path, a URL, a partition key)."""
    key: str | None = None
    """Stable identity across runs (used by resume); None when the task has none."""


@dataclass(frozen=True, slots=True)
class MsgTaskStarted:
    """A worker began a task."""

    task_id: int
    """The task that started."""
    name: str
    """Its label (stored on the row, so a task can start without being pre-registered)."""
    started_at: str
    """ISO 8601 UTC time the work began."""
    attempt: int = 1
    """1 for the first try; retries count up."""
    key: str | None = None
    """The task's stable key, if it has one."""
    stage: str | None = None
    """The stage (declarative task name) it belongs to, stored as ``task_runs.stage``."""


@dataclass(frozen=True, slots=True)
class MsgTaskProgress:
    """A task advanced; only the latest progress per task in a batch is written."""

    task_id: int
    """The task that advanced."""
    step: int
    """Steps completed so far."""
    total: int
    """Steps in all; progress is step / total, clamped to 0..1."""
    message: str = ""
    """Optional status text shown beside the bar."""


@dataclass(frozen=True, slots=True)
class MsgTaskFinished:
    """A task reached a terminal status."""

    task_id: int
    """The task that finished."""
    status: FinishStatus
    """done, error, cancelled (never ran), timeout or skipped."""
    finished_at: str
    """ISO 8601 UTC time it finished."""
    result: str | None = None
    """What the task produced, as text (JSON where possible)."""
    message: str = ""
    """Short text for the row's message column (an error's one-line summary)."""
    error: str | None = None
    """Full error text (a traceback) when the task failed."""
    attempt: int = 1
    """The attempt that produced this status."""
    name: str | None = None
    """The task's label, so a task that never started still gets a readable row."""
    key: str | None = None
    """The task's stable key, so a task that never started can still be matched by resume."""
    outputs: tuple[Any, ...] | list[Any] = ()
    """Domain messages that commit with this finish, all or none (only when ``done``).

    The writer applies them through their handlers in the same savepoint as the task's
    ``done`` row; if a handler rejects one, none of them stays and the task is recorded
    ``error`` instead. Outputs of any other status are never applied.
    """
    stage: str | None = None
    """The stage (declarative task name) it belongs to, stored as ``task_runs.stage``."""
    upstream_stage: str | None = None
    """The stage whose results this task consumed (``task_runs.upstream_stage``)."""
    upstream_task_id: int | None = None
    """The upstream task it consumed (a chain), or for a blocked fan-in the first upstream
    task that did not succeed (``task_runs.upstream_task_id``)."""


@dataclass(frozen=True, slots=True)
class MsgTaskAttempt:
    """One failed attempt of a task that is about to be retried."""

    task_id: int
    """The task being retried."""
    attempt: int
    """The attempt that failed."""
    status: str
    """How it failed: error or timeout."""
    error: str
    """The failure's text."""
    started_at: str | None = None
    """When the failed attempt began."""
    finished_at: str = field(default_factory=utc_now)
    """When it failed."""
    discarded: int = 0
    """Domain messages the attempt emitted that were thrown away with it (never applied)."""


@dataclass(frozen=True, slots=True)
class MsgTaskLog:
    """A log record emitted inside a task, stored in ``task_logs`` (bounded per task).

    Sent by pipeloom's capture (`pipeloom.tasklogs`) for ``ctx.log`` and the user's own
    ``logging`` calls made while the task runs; a worker function may send one itself.
    """

    task_id: int
    """The task the record belongs to."""
    message: str
    """The formatted record (with its traceback, if it had one)."""
    level: str = "INFO"
    """The record's level name."""
    logger: str | None = None
    """The logger's name."""
    attempt: int = 1
    """The attempt that logged it."""
    created_at: str = field(default_factory=utc_now)
    """When it was logged."""


@dataclass(frozen=True, slots=True)
class MsgRunFinished:
    """The engine's verdict on the whole run, sent just before SENTINEL."""

    status: str
    """done, error, cancelled or interrupted."""
    finished_at: str = field(default_factory=utc_now)
    """When the run ended."""


class _Sentinel:
    """Type of the shutdown marker; a class so it pickles and prints clearly."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SENTINEL"


SENTINEL: Final = _Sentinel()
"""Put this on the queue to make the writer commit, checkpoint and stop."""

Msg: TypeAlias = MsgTaskStarted | MsgTaskProgress | MsgTaskFinished
"""The lifecycle messages every worker may send."""

PIPELOOM_MESSAGES: Final = (
    MsgTaskStarted,
    MsgTaskProgress,
    MsgTaskFinished,
    MsgTaskAttempt,
    MsgTaskLog,
    MsgRunFinished,
)
"""Message types the writer applies itself; no user handler may be registered for them."""

MsgTaskStart = MsgTaskStarted
"""Alias kept from the seed."""
MsgTaskFinish = MsgTaskFinished
"""Alias kept from the seed."""
