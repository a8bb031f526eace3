"""The one status vocabulary: every task and run status, and the named sets built from them.

Core, the CLI and observe all count with these sets (SQL included, through `sql_in`), so the
live bar, `RunResult`, ``pipeloom status`` and Datasette always give the same numbers.

A task that started and did not complete its work for a reason other than a deliberate stop
is *failed*: ``error``, ``timeout`` and ``interrupted`` (its process or writer died, or a
second Ctrl-C abandoned it). ``cancelled`` tasks never started because the run was stopped;
``skipped`` tasks were done by an earlier run and count as succeeded. ``upstream_failed``
tasks never ran because a task whose result they consume did not succeed: not a failure of
their own (not in `FAILED`), but a run that holds one has not done its work, so it fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias, get_args

from pipeloom.messages import FinishStatus

__all__ = [
    "ACTIVE",
    "ENDED_RUN_STATUSES",
    "EXIT_CODES",
    "FAILED",
    "RUN_STATUSES",
    "SIGNAL_STOPS",
    "STOP_REASONS",
    "STOP_TEXT",
    "SUCCEEDED",
    "TASK_STATUSES",
    "TERMINAL",
    "RunStatus",
    "StopReason",
    "TaskStatus",
    "count_failed",
    "count_succeeded",
    "decide_run_status",
    "exit_code",
    "sql_in",
]

TaskStatus: TypeAlias = Literal[
    "queued",
    "running",
    "done",
    "error",
    "timeout",
    "cancelled",
    "skipped",
    "interrupted",
    "upstream_failed",
]
"""Every status a ``task_runs`` row can hold."""

RunStatus: TypeAlias = Literal["running", "done", "error", "cancelled", "interrupted"]
"""Every status a ``pipeline_runs`` row can hold."""

StopReason: TypeAlias = Literal[
    "sigint",
    "sigterm",
    "sighup",
    "fail_fast",
    "source_failed",
    "executor_failed",
    "cluster_lost",
    "writer_failed",
    "crashed",
]
"""Why a run stopped before its task source was done (``pipeline_runs.stop_reason``).

``sigint`` is Ctrl-C; ``sigterm`` and ``sighup`` are a process manager or a closed terminal;
``fail_fast`` a task failed under ``fail_fast=True``; ``source_failed`` the task source raised
or gave a bad task id; ``executor_failed`` / ``cluster_lost`` the executor (or its Dask
cluster) could not go on; ``writer_failed`` the writer could not write (disk full, file
removed); ``crashed`` the run's process died without closing it (set by the next writer, once
its lease expired). The first cause wins: a second Ctrl-C does not change it.
"""

STOP_TEXT: Final[dict[str, str]] = {
    "sigint": "stopped by Ctrl-C (SIGINT)",
    "sigterm": "stopped by SIGTERM",
    "sighup": "stopped by SIGHUP (its terminal closed)",
    "fail_fast": "stopped after the first failure (fail_fast)",
    "source_failed": "stopped: the task source failed",
    "executor_failed": "stopped: the executor failed",
    "cluster_lost": "stopped: the Dask cluster was lost",
    "writer_failed": "stopped: the writer could not write",
    "crashed": "its process died (no sign of life since)",
}
"""Each `StopReason` in words, for the summary, ``pipeloom status`` and observe."""

STOP_REASONS: Final[tuple[StopReason, ...]] = get_args(StopReason)
"""`StopReason` as a tuple, in its order."""

SIGNAL_STOPS: Final = {"sigint": 130, "sighup": 129, "sigterm": 143}
"""Stops by a signal and their exit codes, as shells report a process killed by it (128 + n)."""

EXIT_CODES: Final = {
    "done": 0,
    "failed": 1,
    "usage": 2,
    "lost": 3,
    **SIGNAL_STOPS,
}
"""The documented exit-code table (docs/cli.md): 0 every task done or skipped; 1 a task failed
or the run did not do all its work (fail_fast, a failed source, a crash); 2 a usage error;
3 the run could not go on (its executor, cluster or writer was lost); 129/130/143 it was
stopped by SIGHUP/SIGINT/SIGTERM, whatever else happened."""

TASK_STATUSES: Final[tuple[TaskStatus, ...]] = get_args(TaskStatus)
"""`TaskStatus` as a tuple, in its order (written once, in the Literal)."""
RUN_STATUSES: Final[tuple[RunStatus, ...]] = get_args(RunStatus)
"""`RunStatus` as a tuple, in its order."""
ENDED_RUN_STATUSES: Final[tuple[RunStatus, ...]] = tuple(s for s in RUN_STATUSES if s != "running")
"""The statuses a run can end with: what a `MsgRunFinished` may set."""

TERMINAL: Final = frozenset(get_args(FinishStatus))
"""A task in one of these has finished for good in its run (`MsgTaskFinished`'s statuses)."""
SUCCEEDED: Final = frozenset({"done", "skipped"})
"""The work is done (``skipped``: by an earlier run)."""
FAILED: Final = frozenset({"error", "timeout", "interrupted"})
"""The task started and did not complete its work."""
ACTIVE: Final = frozenset({"queued", "running"})
"""Not finished yet; in a finished run, a lie the writer never leaves behind."""


def sql_in(statuses: Iterable[str]) -> str:
    """Render a status set as a SQL list, ``('error', 'interrupted', 'timeout')``.

    Sorted, so the SQL text is the same in every process (views compare equal).
    """
    return "(" + ", ".join(f"'{s}'" for s in sorted(statuses)) + ")"


def count_succeeded(counts: Mapping[str, int]) -> int:
    """Tasks whose work is done (``done``, or ``skipped``: done by an earlier run)."""
    return sum(n for status, n in counts.items() if status in SUCCEEDED)


def exit_code(status: str, stop_reason: str | None) -> int:
    """The exit code a run's outcome maps to: the one rule behind `EXIT_CODES`.

    A stop by a signal decides the code whatever else happened (tasks that failed before a
    Ctrl-C still exit 130, so a wrapper script can tell "stopped" from "failed"); then a lost
    executor, cluster or writer (3); then the run's status: ``done`` 0, anything else 1.
    """
    if stop_reason in SIGNAL_STOPS:
        return SIGNAL_STOPS[stop_reason]
    if stop_reason in ("executor_failed", "cluster_lost", "writer_failed"):
        return EXIT_CODES["lost"]
    return EXIT_CODES["done"] if status == "done" else EXIT_CODES["failed"]


def count_failed(counts: Mapping[str, int]) -> int:
    """Tasks in a `FAILED` status, from a status -> count mapping."""
    return sum(n for status, n in counts.items() if status in FAILED)


def decide_run_status(
    counts: Mapping[str, int],
    *,
    taken: int | None = None,
    stop: str | None = None,
    source_failed: bool = False,
) -> RunStatus:
    """Decide how a run ended: the one place that does.

    Args:
        counts: terminal task rows of the run per status.
        taken: tasks the engine took from the task source (None when unknown, such as a bare
            writer fed by hand); fewer terminal rows than this means some task is unaccounted.
        stop: why the run stopped early, if it did: ``"cancelled"`` (Ctrl-C, fail_fast's
            stop without a failure), ``"interrupted"`` (a second Ctrl-C, a dead writer).
        source_failed: the task source raised, so tasks after that point were never seen.

    Returns:
        ``interrupted`` after an abandoning stop; ``error`` when the source failed, any task
        failed or was ``upstream_failed``, or some task taken has no terminal row;
        ``cancelled`` after a deliberate stop; ``done`` only when every task taken ended
        ``done`` or ``skipped``.
    """
    terminal = sum(n for status, n in counts.items() if status in TERMINAL)
    unaccounted = sum(n for status, n in counts.items() if status not in TERMINAL)
    if taken is not None and terminal < taken:
        unaccounted += taken - terminal
    if stop == "interrupted":
        return "interrupted"
    if source_failed or unaccounted or count_failed(counts) or counts.get("upstream_failed", 0):
        return "error"
    if stop == "cancelled" or counts.get("cancelled", 0):
        return "cancelled"
    return "done"
