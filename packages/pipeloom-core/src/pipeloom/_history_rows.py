"""A run history's rows as Python objects: runs, tasks, attempts, logs, dead letters.

`pipeloom.history` reads them from a file and hands them out; ``pipeloom status`` prints them
and turns them into JSON (``as_json``). Times are ISO strings as stored; the durations are
worked out here so every reader shows the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pipeloom.messages import parse_utc
from pipeloom.status import (
    ACTIVE,
    STOP_TEXT,
    TERMINAL,
    count_failed,
    count_succeeded,
)

__all__ = ["AttemptInfo", "DeadLetterInfo", "LogInfo", "RunInfo", "TaskInfo"]


def _seconds_between(start: str | None, end: str | None) -> float | None:
    began = parse_utc(start)
    if began is None:
        return None
    ended = parse_utc(end) or datetime.now(UTC)
    return max(0.0, (ended - began).total_seconds())


@dataclass
class RunInfo:
    """One ``pipeline_runs`` row, with its task counts as the task rows hold them now."""

    id: int
    name: str
    status: str
    started_at: str
    finished_at: str | None
    workers: int | None
    tasks_total: int
    counts: dict[str, int]
    """Tasks per status, counted from ``task_runs``."""
    messages: int
    params: Any
    host: str | None
    pid: int | None
    heartbeat_at: str | None = None
    """When the run's writer last said it was alive (None: written before leases)."""
    lease_s: float | None = None
    """Seconds after ``heartbeat_at`` that the run counts as stale."""
    stale: bool = False
    """Still ``running`` in the file, but its lease expired: its writer is gone or stuck."""
    elapsed: float | None = None
    """Seconds from start to finish (to now while running; to the last heartbeat if stale)."""
    finished: int = 0
    """Tasks in a terminal status."""
    throughput: float | None = None
    """Finished tasks per second."""
    stop_reason: str | None = None
    """What stopped the run early (a `pipeloom.status.StopReason`), None if nothing did."""
    not_started: int | None = 0
    """Tasks the run never started because it stopped early (None: unknown)."""
    planned: int | None = None
    """Tasks it was planned with (None: its source had no length)."""
    note: str | None = None
    """What the run row notes beside its status: tasks not started, an alert hook that
    raised or hung (``pipeline_runs.note``)."""

    def __post_init__(self) -> None:
        """Derive elapsed time and throughput from the row."""
        end = self.heartbeat_at if self.stale else self.finished_at
        self.elapsed = _seconds_between(self.started_at, end)
        self.finished = sum(n for s, n in self.counts.items() if s in TERMINAL)
        self.tasks_total = max(self.tasks_total, sum(self.counts.values()))
        if self.elapsed:
            self.throughput = self.finished / self.elapsed

    @property
    def active(self) -> bool:
        """True while the run may still change (a stale run's writer is gone)."""
        return self.status in ACTIVE and not self.stale

    @property
    def failed(self) -> int:
        """Tasks in a `pipeloom.status.FAILED` status."""
        return count_failed(self.counts)

    @property
    def lease_expires_at(self) -> str | None:
        """When the lease runs out unless the writer beats again (ISO UTC; None: no lease)."""
        beat = parse_utc(self.heartbeat_at)
        if beat is None or self.lease_s is None:
            return None
        return (beat + timedelta(seconds=self.lease_s)).isoformat(timespec="seconds")

    @property
    def shown_status(self) -> str:
        """The status to show: ``stale`` for a running run whose lease expired."""
        return "stale" if self.stale else self.status

    @property
    def done(self) -> int:
        """Tasks whose work is done: ``done`` plus ``skipped`` (done by an earlier run)."""
        return count_succeeded(self.counts)

    @property
    def stopped(self) -> str | None:
        """Why the run stopped early, in words (None when it ran to the end of its source)."""
        if self.stop_reason is None:
            return STOP_TEXT["crashed"] if self.stale else None  # its lease says so already
        return STOP_TEXT.get(self.stop_reason, self.stop_reason)

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON (with ``done`` and ``stopped``)."""
        return {**asdict(self), "done": self.done, "stopped": self.stopped}


class _Timed:
    """What a row with a start and a finish answers: how long it ran, and itself as JSON.

    A mixin without fields, so each dataclass keeps its own field order.
    """

    __dataclass_fields__: ClassVar[dict[str, Any]]  # each subclass is a dataclass
    started_at: str | None
    finished_at: str | None

    @property
    def elapsed(self) -> float | None:
        """Seconds it ran (so far, while running)."""
        return _seconds_between(self.started_at, self.finished_at)

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON, with ``elapsed``."""
        return {**asdict(self), "elapsed": self.elapsed}


@dataclass
class TaskInfo(_Timed):
    """One ``task_runs`` row: a task as its run left it (or as it stands, while running)."""

    task_id: int
    name: str
    status: str
    progress: float
    step: int | None
    total: int | None
    message: str | None
    started_at: str | None
    finished_at: str | None
    attempt: int
    result: str | None
    error: str | None
    """The traceback of a failure, as text."""
    key: str | None = None
    """The task's stable key (``load:data/a.csv``); its name may be a shortened form of it."""
    stale_at: str | None = None
    """For a task left active by a stale run: the run's last sign of life, where its time
    ends (it is not running on, whatever the row says)."""

    @property
    def elapsed(self) -> float | None:
        """Seconds it ran (so far while running; up to its run's last sign of life if stale)."""
        return _seconds_between(self.started_at, self.finished_at or self.stale_at)

    @property
    def label(self) -> str:
        """What to call the task on screen: its full key when it has one, else its name."""
        return self.key or self.name


@dataclass
class AttemptInfo(_Timed):
    """One ``task_attempts`` row: an attempt that failed (the last one is the task's row)."""

    attempt: int
    status: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    discarded: int
    """Messages the attempt sent that were dropped with it (a failed attempt's output)."""

    @property
    def error_line(self) -> str:
        """The error's last non-blank line (``ValueError: bad row``), for one table cell."""
        lines = [line for line in (self.error or "").splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


@dataclass
class LogInfo:
    """One ``task_logs`` row: a record logged inside a task."""

    created_at: str
    level: str
    logger: str | None
    message: str
    attempt: int
    dropped: int
    """More than 0 on the row that counts the records dropped beyond the bound."""

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


@dataclass
class DeadLetterInfo:
    """One ``dead_letters`` row of a task: a message it sent that could not be applied."""

    id: int
    attempt: int | None
    created_at: str
    msg_type: str
    error: str
    payload: str | None

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)
