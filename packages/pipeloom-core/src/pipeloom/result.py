"""What a run reports back to its caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeloom.errors import RunFailedError
from pipeloom.status import exit_code

__all__ = ["RunResult"]


@dataclass(frozen=True)
class RunResult:
    """What `run_pipeline` reports back."""

    run_id: int | None
    """The ``pipeline_runs.id`` of this run (None when no tables are kept)."""
    status: str
    """done, error (a task failed, the task source raised, a task is unaccounted for),
    cancelled (Ctrl-C or fail_fast) or interrupted (abandoned by a second Ctrl-C)."""
    counts: dict[str, int]
    """Tasks per terminal status."""
    failed_task_ids: list[int]
    """task_id of every task in a failed status (`pipeloom.status.FAILED`)."""
    elapsed: float
    """Wall-clock seconds from start to the writer's last commit."""
    db_path: str
    """Where the run was recorded."""
    messages: int = 0
    """Messages the writer handled (applied plus dead-lettered)."""
    dead_letters: int = 0
    """Messages the writer could not apply."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What the layer above recorded (a pipeline's resume source, abandoned threads)."""
    error: str | None = None
    """Why the run failed as a whole (its task source or executor raised), if it did."""
    not_started: int | None = None
    """Tasks never started because the run stopped early (None: unknown, the source has no
    length)."""
    stop_reason: str | None = None
    """What stopped the run early (a `pipeloom.status.StopReason`: ``sigint``, ``sigterm``,
    ``fail_fast``, ``source_failed``, ...), or None when it ran to the end of its source."""
    planned: int | None = None
    """Tasks the run was planned with (None when its source has no length)."""

    @property
    def exit_code(self) -> int:
        """The exit code this outcome maps to (docs/cli.md's table): ``sys.exit(r.exit_code)``.

        0 done; 1 failed; 3 its executor, cluster or writer was lost; 130/143/129 stopped by
        SIGINT/SIGTERM/SIGHUP, whatever else happened.
        """
        return exit_code(self.status, self.stop_reason)

    @property
    def total(self) -> int:
        """Tasks that reached a terminal status."""
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """True only when the run is ``done``: every task it took ended done or skipped."""
        return self.status == "done" and not self.failed_task_ids

    def raise_for_status(self) -> RunResult:
        """Raise `RunFailedError` unless the run is `ok`; returns the result otherwise.

        A script ending in ``run_pipeline(...).raise_for_status()`` exits non-zero when its
        run failed, so cron jobs and CI steps notice.

        Raises:
            RunFailedError: the run is not ``done`` (a task failed, it was stopped, or tasks
                are unaccounted for).
        """
        if self.ok:
            return self
        failed = ", ".join(str(t) for t in self.failed_task_ids[:10])
        more = (
            f" and {len(self.failed_task_ids) - 10} more" if len(self.failed_task_ids) > 10 else ""
        )
        which = f"; failed task ids: {failed}{more}" if failed else ""
        raise RunFailedError(
            f"{self.db_path}: run {self.run_id} ended {self.status} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.counts.items()))}){which}; "
            f"`pipeloom status {self.db_path} --run {self.run_id}` shows why",
            result=self,
        )
