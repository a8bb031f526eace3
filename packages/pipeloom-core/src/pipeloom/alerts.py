"""Alerts: hooks called when a run ends and when a task fails for good, for unattended runs.

A pipeline run from cron or a systemd timer has nobody watching its terminal. Its hooks::

    from pipeloom import Pipeline
    from pipeloom.notify import webhook

    pipe = Pipeline("nightly", db="runs.db")
    pipe.on_run_end(webhook("https://hooks.slack.com/services/..."))  # on failure only

    @pipe.on_task_failure
    def page(failure):
        print(failure.text())

``on_task_failure(failure)`` is called once per task that failed for good (after its
retries; with ``every_attempt=True`` for each failed attempt, retried ones included),
``on_run_end(summary)`` once per run. Both are called in the driver, on a thread of their
own, after the writer has committed what they describe, so a hook reading the file sees it.
A hook can never change the record or the exit code: each call is time-boxed
(`Alerts.timeout`); one that raises is logged, one that does not return in time is logged
and not called again in that run, and either is noted on the run (``pipeline_runs.note``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import shlex
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pipeloom._text import printable, storable
from pipeloom.db import BUSY_TIMEOUT_MS, MEMORY, connect_readonly
from pipeloom.status import FAILED, STOP_TEXT
from pipeloom.writer import AppliedBatch

if TYPE_CHECKING:
    from pipeloom.result import RunResult

__all__ = [
    "Alerts",
    "FailureLine",
    "RunEndHook",
    "RunSummary",
    "TaskFailure",
    "TaskFailureHook",
    "extra_alerts",
]

log = logging.getLogger("pipeloom.alerts")

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds one hook call may take before the run stops waiting for it."""


def _error_line(text: str | None) -> str:
    """The error's last non-blank line (``ValueError: bad row``): what a message shows."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def status_command(db_path: str, run_id: int | None, task: str | None = None) -> str:
    """The ``pipeloom status`` command that shows more, quoted for a shell."""
    parts = ["pipeloom", "status", shlex.quote(db_path)]
    if run_id is not None:
        parts += ["--run", str(run_id)]
    if task is not None:
        parts += ["--task", shlex.quote(task)]
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """One failed task (or, with ``every_attempt``, one failed attempt): what an alert says."""

    run_id: int
    pipeline: str
    db_path: str
    task_id: int
    name: str
    key: str | None
    status: str
    """``error``, ``timeout`` or ``interrupted`` (`pipeloom.status.FAILED`)."""
    attempt: int
    final: bool
    """True for the task's last attempt (its row is terminal); False for one retried."""
    error_line: str
    """The error's last line (``ValueError: bad row 3``)."""
    error: str | None
    """The whole traceback text."""
    status_command: str
    """``pipeloom status runs.db --run 7 --task load:a.csv``: the command that shows more."""

    def text(self) -> str:
        """One line for a chat message or a log."""
        retry = "" if self.final else " (will be retried)"
        return (
            f"pipeloom {self.pipeline} run {self.run_id}: task {self.key or self.name} "
            f"{self.status} on attempt {self.attempt}{retry}: {self.error_line}"
        )

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FailureLine:
    """A failed task, in one line of a run summary."""

    task_id: int
    name: str
    error_line: str


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a message about a finished run needs, and `text` to send as it is."""

    run_id: int | None
    pipeline: str
    db_path: str
    status: str
    """done, error, cancelled or interrupted."""
    ok: bool
    """True only when every task it took ended done or skipped."""
    exit_code: int
    counts: dict[str, int]
    """Tasks per terminal status."""
    failed: int
    """Tasks in a failed status (`pipeloom.status.FAILED`)."""
    duration_s: float
    stop_reason: str | None
    """What stopped it early (`pipeloom.status.StopReason`), None if nothing did."""
    stopped: str | None
    """The stop reason in words (`pipeloom.status.STOP_TEXT`)."""
    failures: tuple[FailureLine, ...]
    """The first failed tasks (up to five), each with its one-line error."""
    error: str | None
    """Why the run failed as a whole (its source or executor raised), if it did."""
    status_command: str
    """``pipeloom status runs.db --run 7``: the command that shows more."""

    @property
    def total(self) -> int:
        """Tasks that reached a terminal status."""
        return sum(self.counts.values())

    def text(self) -> str:
        """A few lines for a chat message: status, counts, duration, first failures."""
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        head = (
            f"pipeloom {self.pipeline} run {self.run_id}: {self.status} "
            f"({counts or 'no tasks'}) in {self.duration_s:.1f} s"
        )
        lines = [head]
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        if self.error:
            lines.append(f"error: {self.error}")
        for failure in self.failures:
            lines.append(f"- task {failure.task_id} {failure.name}: {failure.error_line}")
        if self.failed > len(self.failures):
            lines.append(f"... and {self.failed - len(self.failures)} more failed")
        lines.append(f"see: {self.status_command}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """Plain data for JSON (with ``total``)."""
        return {**asdict(self), "total": self.total}


TaskFailureHook = Callable[[TaskFailure], object]
"""``hook(failure)``: called once per final task failure (its return value is ignored)."""
RunEndHook = Callable[[RunSummary], object]
"""``hook(summary)``: called once per run, after its record is closed."""


@dataclass(frozen=True, slots=True)
class Alerts:
    """The hooks of a run; `pipeloom.Pipeline` builds one from its ``on_*`` decorators."""

    on_run_end: tuple[RunEndHook, ...] = ()
    on_task_failure: tuple[TaskFailureHook, ...] = ()
    """Called once per task that failed for good (after its retries)."""
    on_attempt_failure: tuple[TaskFailureHook, ...] = ()
    """Called for every failed attempt: each one retried (``final=False``) and the last."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds one hook call may take; the run stops waiting for it then."""

    @property
    def active(self) -> bool:
        """True when there is a hook to call."""
        return bool(self.on_run_end or self.on_task_failure or self.on_attempt_failure)

    def merged(self, other: Alerts | None) -> Alerts:
        """Both sets of hooks (with the longer timeout)."""
        if other is None:
            return self
        return Alerts(
            self.on_run_end + other.on_run_end,
            self.on_task_failure + other.on_task_failure,
            self.on_attempt_failure + other.on_attempt_failure,
            max(self.timeout, other.timeout),
        )


_EXTRA: contextvars.ContextVar[Alerts | None] = contextvars.ContextVar(
    "pipeloom_extra_alerts", default=None
)


@contextlib.contextmanager
def extra_alerts(alerts: Alerts) -> Iterator[None]:
    """Add ``alerts`` to every run started in the block (``pipeloom run --notify`` uses it).

    So a plain function that calls `~pipeloom.run_pipeline` gets the CLI's webhook too.
    """
    token = _EXTRA.set(alerts.merged(_EXTRA.get()))
    try:
        yield
    finally:
        _EXTRA.reset(token)


def _name(hook: object) -> str:
    named = getattr(hook, "hook_name", None) or getattr(hook, "__name__", None)
    return str(named or type(hook).__name__)


@dataclass(slots=True)
class _Outcome:
    problems: list[str] = field(default_factory=list)
    hung: set[int] = field(default_factory=set)


def _call(hook: Callable[[Any], object], arg: object, timeout: float, out: _Outcome) -> None:
    """Call ``hook(arg)`` on a thread of its own and wait ``timeout`` seconds at most."""
    if id(hook) in out.hung:
        return
    error: list[BaseException] = []

    def target() -> None:
        try:
            hook(arg)
        except BaseException as exc:  # reported below; a hook never ends the run
            error.append(exc)

    thread = threading.Thread(target=target, name=f"pipeloom-hook-{_name(hook)}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        out.hung.add(id(hook))
        what = f"hook {_name(hook)} did not return within {timeout:g} s (not called again)"
        log.warning("%s", what)
        out.problems.append(what)
    elif error:
        exc = error[0]
        what = f"hook {_name(hook)} raised {type(exc).__name__}: {printable(str(exc))[:200]}"
        log.warning("%s", what, exc_info=exc)
        out.problems.append(what)


class Dispatcher:
    """Calls a run's hooks in the driver; the engine's one seam for alerts.

    It is a post-commit listener (so it hears of a failure only once it is durable), and
    hands the work to a thread of its own: the writer never waits for a hook.
    """

    def __init__(self, alerts: Alerts, db_path: str, pipeline: str) -> None:
        """Prepare; nothing runs until `bind`."""
        self.alerts = alerts
        self.db_path = db_path
        self.pipeline = pipeline
        self.run_id: int | None = None
        self._events: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self._seen: set[int] = set()
        self._last_attempt = 0
        self._polling = threading.Event()
        self._out = _Outcome()
        self._thread = threading.Thread(target=self._work, name="pipeloom-alerts", daemon=True)
        self._conn: sqlite3.Connection | None = None
        self._deadline: float | None = None
        self._dropped = 0

    def bind(self, run_id: int | None) -> None:
        """Start calling hooks for run ``run_id`` (None: the run keeps no pipeloom tables)."""
        self.run_id = run_id
        failures = self.alerts.on_task_failure or self.alerts.on_attempt_failure
        if run_id is not None and failures and self.db_path != MEMORY:
            self._thread.start()

    def __call__(self, applied: AppliedBatch) -> None:
        """On the writer's thread after a commit: note failures, never block."""
        if not self._thread.is_alive():
            return
        for task_id, status in applied.finished:
            if status in FAILED and task_id not in self._seen:
                self._seen.add(task_id)
                self._events.put(("final", task_id))
        if self.alerts.on_attempt_failure and applied.messages and not self._polling.is_set():
            self._polling.set()
            self._events.put(("attempts", 0))

    def _read(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_readonly(Path(self.db_path))
        return self._conn

    def _failure(self, row: Sequence[Any], final: bool) -> TaskFailure:
        task_id, name, key, status, attempt, error = row
        assert self.run_id is not None
        return TaskFailure(
            run_id=self.run_id,
            pipeline=self.pipeline,
            db_path=self.db_path,
            task_id=int(task_id),
            name=str(name),
            key=key,
            status=str(status),
            attempt=int(attempt or 1),
            final=final,
            error_line=_error_line(error),
            error=error,
            status_command=status_command(self.db_path, self.run_id, key or str(task_id)),
        )

    def _rows(self, kind: str, task_id: int) -> list[TaskFailure]:
        conn = self._read()
        if kind == "final":
            row = conn.execute(
                "SELECT task_id, name, task_key, status, attempt, error FROM task_runs "
                "WHERE run_id = ? AND task_id = ?",
                (self.run_id, task_id),
            ).fetchone()
            return [] if row is None else [self._failure(row, True)]
        self._polling.clear()
        rows = conn.execute(
            "SELECT a.id, a.task_id, t.name, t.task_key, a.status, a.attempt, a.error "
            "FROM task_attempts a LEFT JOIN task_runs t "
            "ON t.run_id = a.run_id AND t.task_id = a.task_id "
            "WHERE a.run_id = ? AND a.id > ? ORDER BY a.id",
            (self.run_id, self._last_attempt),
        ).fetchall()
        found = []
        for row in rows:
            self._last_attempt = max(self._last_attempt, int(row[0]))
            found.append(self._failure((row[1], row[2] or "", *row[3:]), False))
        return found

    def _work(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                break
            if self._deadline is not None and time.monotonic() > self._deadline:
                self._dropped += 1  # the run has ended and its alerts ran out of time
                continue
            try:
                failures = self._rows(*event)
            except sqlite3.Error as exc:
                what = f"could not read failed task {event[1]} for its alert ({exc})"
                log.warning("%s", what)
                self._out.problems.append(what)
                continue
            for failure in failures:
                hooks = self.alerts.on_attempt_failure
                if failure.final:
                    hooks = self.alerts.on_task_failure + hooks
                for hook in hooks:
                    _call(hook, failure, self.alerts.timeout, self._out)
        if self._conn is not None:
            self._conn.close()

    def _drain(self) -> None:
        if not self._thread.is_alive():
            return
        if self.alerts.on_attempt_failure:
            self._events.put(("attempts", 0))
        self._events.put(None)
        # Each call is time-boxed and a hung hook is skipped after once; slow hooks get
        # twice their timeout after the run for what is still queued, then it is dropped.
        self._deadline = time.monotonic() + 2 * self.alerts.timeout
        self._thread.join()
        if self._dropped:
            what = f"{self._dropped} failure alert(s) not sent: the hooks were too slow"
            log.warning("%s", what)
            self._out.problems.append(what)

    def finish(self, result: RunResult, sample: Sequence[tuple[int, str, str]]) -> None:
        """After the run is closed: the last failures, then ``on_run_end``, then the note."""
        self._drain()
        summary = RunSummary(
            run_id=result.run_id,
            pipeline=self.pipeline,
            db_path=self.db_path,
            status=result.status,
            ok=result.ok,
            exit_code=result.exit_code,
            counts=dict(result.counts),
            failed=len(result.failed_task_ids),
            duration_s=round(result.elapsed, 3),
            stop_reason=result.stop_reason,
            stopped=None
            if result.stop_reason is None
            else STOP_TEXT.get(result.stop_reason, result.stop_reason),
            failures=tuple(FailureLine(t, n, _error_line(e)) for t, n, e in sample),
            error=result.error,
            status_command=status_command(self.db_path, result.run_id),
        )
        for hook in self.alerts.on_run_end:
            _call(hook, summary, self.alerts.timeout, self._out)
        self._note()

    def abandon(self) -> None:
        """The run raised instead of ending: stop calling hooks."""
        self._drain()

    def _note(self) -> None:
        """Record on the run row what went wrong with its hooks (``pipeline_runs.note``)."""
        if not self._out.problems or self.run_id is None or self.db_path == MEMORY:
            return
        text = storable("alerts: " + "; ".join(self._out.problems))
        try:
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                with conn:
                    conn.execute(
                        "UPDATE pipeline_runs SET note = CASE WHEN note IS NULL OR note = '' "
                        "THEN ? ELSE note || '; ' || ? END WHERE id = ?",
                        (text, text, self.run_id),
                    )
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.warning(
                "%s: could not note the hooks' problems on run %s (%s)",
                self.db_path,
                self.run_id,
                exc,
            )

    @property
    def problems(self) -> list[str]:
        """What went wrong with the hooks (raised, hung, unreadable)."""
        return list(self._out.problems)


def start(alerts: Alerts | None, db_path: str, pipeline: str) -> Dispatcher | None:
    """The dispatcher for a run's hooks (with `extra_alerts`), or None when it has none."""
    merged = (alerts or Alerts()).merged(_EXTRA.get())
    if not merged.active:
        return None
    return Dispatcher(merged, db_path, pipeline)


def with_hooks(
    alerts: Alerts | None,
    *,
    on_run_end: Sequence[RunEndHook] = (),
    on_task_failure: Sequence[TaskFailureHook] = (),
    on_attempt_failure: Sequence[TaskFailureHook] = (),
) -> Alerts:
    """``alerts`` plus these hooks (the pipeline's decorators add theirs this way)."""
    base = alerts or Alerts()
    return replace(
        base,
        on_run_end=base.on_run_end + tuple(on_run_end),
        on_task_failure=base.on_task_failure + tuple(on_task_failure),
        on_attempt_failure=base.on_attempt_failure + tuple(on_attempt_failure),
    )
