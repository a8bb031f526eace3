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

__all__ = [
    "ACTIVE",
    "FAILED",
    "RUN_STATUSES",
    "SUCCEEDED",
    "TASK_STATUSES",
    "TERMINAL",
    "RunStatus",
    "TaskStatus",
    "count_failed",
    "decide_run_status",
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

TASK_STATUSES: Final[tuple[TaskStatus, ...]] = get_args(TaskStatus)
"""`TaskStatus` as a tuple, in its order (written once, in the Literal)."""
RUN_STATUSES: Final[tuple[RunStatus, ...]] = get_args(RunStatus)
"""`RunStatus` as a tuple, in its order."""

TERMINAL: Final = frozenset(
    {"done", "error", "timeout", "cancelled", "skipped", "interrupted", "upstream_failed"}
)
"""A task in one of these has finished for good in its run."""
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
