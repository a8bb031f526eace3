"""SQL fragments every observe view shares: one "failed", one "stale", one way to time a task.

The canned queries (`pipeloom_observe.queries`), the dashboards
(`pipeloom_observe.dashboards`) and the plugin's own pages build their SQL from these, so a
status set or the end of a stale run is written once (from `pipeloom.status` and
`pipeloom.lease`).
"""

from __future__ import annotations

from typing import Final

from pipeloom.lease import stale_sql
from pipeloom.status import ACTIVE, FAILED, STOP_TEXT, SUCCEEDED, TERMINAL, sql_in
from pipeloom_observe.colors import STATUS_COLORS

__all__ = [
    "ACTIVE_SQL",
    "FAILED_SQL",
    "RUN_END_SQL",
    "RUN_PARAM_NOTE",
    "RUN_SQL",
    "SECONDS_SQL",
    "STALE_SQL",
    "STOP_TEXT_SQL",
    "SUCCEEDED_SQL",
    "TASK_END_SQL",
    "TERMINAL_SQL",
    "TIMED_SQL",
    "badge_sql",
    "html_sql",
    "stop_text_sql",
]

FAILED_SQL: Final = sql_in(FAILED)
"""`pipeloom.status.FAILED` as SQL: the same "failed" as the bar, `RunResult` and status."""
SUCCEEDED_SQL: Final = sql_in(SUCCEEDED)
TERMINAL_SQL: Final = sql_in(TERMINAL)
ACTIVE_SQL: Final = sql_in(ACTIVE)
# Tasks whose start and finish both describe the work: an interrupted task's finish is when
# someone noticed its process had died, a cancelled or skipped one never ran here.
TIMED_SQL: Final = sql_in((SUCCEEDED | FAILED) - {"skipped", "interrupted"})

# Durations come from ISO 8601 UTC text; julianday() understands the "+00:00" suffix.
SECONDS_SQL = "ROUND((julianday({end}) - julianday({start})) * 86400, 3)"

# A running run whose lease expired (pipeloom.lease, the one definition): its clock stops at
# its last heartbeat instead of growing forever.
STALE_SQL = stale_sql("r")
RUN_END_SQL = f"CASE WHEN {STALE_SQL} THEN r.heartbeat_at ELSE COALESCE(r.finished_at, 'now') END"
# Where an unfinished task's bar ends: now while its run lives, its run's last sign of life
# once the run is stale (its process died; the task is not running on).
TASK_END_SQL = (
    f"CASE WHEN {STALE_SQL} THEN r.heartbeat_at ELSE strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now') END"
)


def stop_text_sql(reason: str, stale: str) -> str:
    """SQL for why a run stopped, in the words every view uses (`STOP_TEXT`).

    Args:
        reason: the SQL of its ``stop_reason``.
        stale: SQL true when the run is stale (its process died and nobody closed it yet).
    """
    cases = " ".join(f"WHEN '{key}' THEN '{text}'" for key, text in STOP_TEXT.items())
    return (
        f"CASE WHEN {reason} IS NULL AND {stale} THEN '{STOP_TEXT['crashed']}' "
        f"ELSE CASE {reason} {cases} ELSE {reason} END END"
    )


STOP_TEXT_SQL: Final = stop_text_sql("v.stop_reason", "v.stale = 1")
"""Why a run of the runs view ``v`` stopped."""

RUN_SQL: Final = (
    "COALESCE(CAST(NULLIF(:run_id, '') AS INTEGER), (SELECT MAX(id) FROM pipeline_runs))"
)
"""The run a query is about: its ``run_id`` parameter, or the newest run when left blank."""

RUN_PARAM_NOTE: Final = " Leave run_id blank for the newest run."


def html_sql(expr: str) -> str:
    """SQL that HTML-escapes ``expr``, for cells the dashboards' tables insert as HTML."""
    return (
        f"replace(replace(replace(replace(COALESCE({expr}, ''), '&', '&amp;'), '<', '&lt;'), "
        "'>', '&gt;'), '\"', '&quot;')"
    )


def badge_sql(expr: str) -> str:
    """SQL for a status badge in `STATUS_COLORS`, the same as the cells' badges."""
    cases = " ".join(f"WHEN '{status}' THEN '{color}'" for status, color in STATUS_COLORS.items())
    return (
        f'\'<span class="pl-status" style="background:\' || CASE {expr} {cases} '
        f"ELSE '#e5e7eb' END || '\">' || {html_sql(expr)} || '</span>'"
    )
