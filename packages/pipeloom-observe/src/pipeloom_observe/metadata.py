"""Datasette metadata that turns a run database into a run-history browser.

Written for Datasette 0.65, where canned queries and plugin configuration live in
``metadata=``. Every key under ``databases`` is the file's stem, because that is the name
Datasette gives the database; a fixed key would silently not apply to other file names.
"""

from __future__ import annotations

import copy
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from datasette.utils import tilde_encode

from pipeloom.errors import PipeloomError
from pipeloom.lease import stale_sql
from pipeloom.schema import RUNS_SELECT
from pipeloom.status import ACTIVE, FAILED, STOP_TEXT, SUCCEEDED, TERMINAL, sql_in
from pipeloom_observe._sqlite import Layout
from pipeloom_observe.plugin import HISTORY_DASHBOARD, RUN_DASHBOARD, STATUS_COLORS

__all__ = [
    "DASHBOARD",
    "HISTORY_DASHBOARD",
    "QUERIES",
    "MetadataError",
    "default_metadata",
    "layout_note",
    "load_metadata",
    "merge_metadata",
]

DASHBOARD: Final = RUN_DASHBOARD
"""Slug of the per-run dashboard: ``/-/dashboards/run`` (newest run), ``?run_id=N`` for another."""

_FAILED: Final = sql_in(FAILED)
"""`pipeloom.status.FAILED` as SQL: the same "failed" as the bar, `RunResult` and status."""
_SUCCEEDED: Final = sql_in(SUCCEEDED)
_TERMINAL: Final = sql_in(TERMINAL)
_ACTIVE: Final = sql_in(ACTIVE)
# Tasks whose start and finish both describe the work: an interrupted task's finish is when
# someone noticed its process had died, a cancelled or skipped one never ran here.
_TIMED: Final = sql_in((SUCCEEDED | FAILED) - {"skipped", "interrupted"})

# Durations come from ISO 8601 UTC text; julianday() understands the "+00:00" suffix.
_SECONDS = "ROUND((julianday({end}) - julianday({start})) * 86400, 3)"

# A running run whose lease expired (pipeloom.lease, the one definition): its clock stops at
# its last heartbeat instead of growing forever.
_STALE = stale_sql("r")
_RUN_END = f"CASE WHEN {_STALE} THEN r.heartbeat_at ELSE COALESCE(r.finished_at, 'now') END"
# Where an unfinished task's bar ends: now while its run lives, its run's last sign of life
# once the run is stale (its process died; the task is not running on).
_TASK_END = (
    f"CASE WHEN {_STALE} THEN r.heartbeat_at ELSE strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now') END"
)


def _stop_text(reason: str, stale: str) -> str:
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


_STOP_TEXT_SQL: Final = _stop_text("v.stop_reason", "v.stale = 1")
"""Why a run of the runs view ``v`` stopped."""

_RUN: Final = "COALESCE(CAST(NULLIF(:run_id, '') AS INTEGER), (SELECT MAX(id) FROM pipeline_runs))"
"""The run a query is about: its ``run_id`` parameter, or the newest run when left blank."""

_RUN_PARAM_NOTE: Final = " Leave run_id blank for the newest run."


def _html(expr: str) -> str:
    """SQL that HTML-escapes ``expr``, for cells the dashboards' tables insert as HTML."""
    return (
        f"replace(replace(replace(replace(COALESCE({expr}, ''), '&', '&amp;'), '<', '&lt;'), "
        "'>', '&gt;'), '\"', '&quot;')"
    )


def _badge(expr: str) -> str:
    """SQL for a status badge in `STATUS_COLORS`, the same as the cells' badges."""
    cases = " ".join(f"WHEN '{status}' THEN '{color}'" for status, color in STATUS_COLORS.items())
    return (
        f'\'<span class="pl-status" style="background:\' || CASE {expr} {cases} '
        f"ELSE '#e5e7eb' END || '\">' || {_html(expr)} || '</span>'"
    )


def _color(field: str = "status") -> dict[str, Any]:
    """A vega-lite color channel with the fixed status scale: colors never shift."""
    return {
        "field": field,
        "type": "nominal",
        "title": "status",
        "scale": {"domain": list(STATUS_COLORS), "range": list(STATUS_COLORS.values())},
    }


# Every chart renders as SVG (crisp, and its marks can be inspected) with no action menu.
_EMBED: Final = {"embedOptions": {"renderer": "svg", "actions": False}}

QUERIES: Final[dict[str, dict[str, Any]]] = {
    "run_list": {
        "title": "Runs",
        "description": (
            "Every run, newest first: status, duration, tasks done (skipped included) / "
            "failed / planned total, tasks not started and why the run stopped, progress "
            "of a live run. stale: still 'running' in the file, but its writer stopped sending "
            "heartbeats (its process died or is stuck); its duration ends at its last sign of "
            "life. Open a run id for its dashboard."
        ),
        "hide_sql": True,
        "sql": f"""
SELECT
  v.id AS run_id,
  v.shown_status AS status,
  v.stale,
  v.name,
  v.started_at,
  v.duration_s,
  v.tasks_done AS done,
  v.tasks_failed AS failed,
  v.tasks_total AS total,
  v.tasks_not_started AS not_started,
  {_STOP_TEXT_SQL} AS stopped,
  CASE WHEN v.status = 'running' THEN v.progress END AS progress,
  ROUND(v.tasks_per_s, 1) AS tasks_per_s,
  r.params,
  r.error
FROM ({RUNS_SELECT}) AS v
JOIN pipeline_runs r ON r.id = v.id
ORDER BY v.id DESC
LIMIT 1000
""".strip(),
    },
    "latest_run": {
        "title": "Run summary",
        "description": "One run with its task counts, counted live from task_runs."
        + _RUN_PARAM_NOTE,
        "hide_sql": True,
        "sql": f"""
SELECT
  r.id AS run_id,
  r.name,
  r.status,
  {_STALE} AS stale,
  r.heartbeat_at,
  r.started_at,
  r.finished_at,
  {_SECONDS.format(end=_RUN_END, start="r.started_at")} AS seconds,
  r.workers,
  MAX(r.tasks_total, COUNT(t.id)) AS tasks,
  COALESCE(SUM(t.status IN {_SUCCEEDED}), 0) AS done,
  COALESCE(SUM(t.status IN {_FAILED}), 0) AS failed,
  COALESCE(SUM(t.status IN {_ACTIVE}), 0) AS in_flight,
  r.tasks_not_started AS not_started,
  {_stop_text("r.stop_reason", _STALE)} AS stopped
FROM pipeline_runs r
LEFT JOIN task_runs t ON t.run_id = r.id
WHERE r.id = {_RUN}
GROUP BY r.id
""".strip(),
    },
    "failures": {
        "title": "Failed tasks",
        "description": "Tasks of a run that failed (error, timeout, interrupted), with their error."
        + _RUN_PARAM_NOTE,
        "hide_sql": True,
        "sql": f"""
SELECT
  t.run_id,
  t.task_id,
  t.name,
  t.status,
  t.attempt,
  t.finished_at,
  t.message,
  t.error
FROM task_runs t
WHERE t.run_id = {_RUN} AND t.status IN {_FAILED}
ORDER BY t.task_id
LIMIT 1000
""".strip(),
    },
    "slowest_tasks": {
        "title": "Slowest tasks",
        "description": (
            "The 100 longest tasks of a run that ran to an end (done, error, timeout; an "
            "interrupted task's finish is only when its death was noticed)." + _RUN_PARAM_NOTE
        ),
        "hide_sql": True,
        "sql": f"""
SELECT
  t.run_id,
  t.task_id,
  t.name,
  t.status,
  t.started_at,
  t.finished_at,
  {_SECONDS.format(end="t.finished_at", start="t.started_at")} AS seconds
FROM task_runs t
WHERE t.run_id = {_RUN} AND t.status IN {_TIMED}
  AND t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
ORDER BY seconds DESC, t.task_id
LIMIT 100
""".strip(),
    },
    "tasks_per_minute": {
        "title": "Tasks finished per minute",
        "description": "Throughput of a run, in UTC minutes." + _RUN_PARAM_NOTE,
        "hide_sql": True,
        "sql": f"""
SELECT
  substr(finished_at, 1, 16) AS minute,
  COUNT(*) AS tasks,
  SUM(status IN {_SUCCEEDED}) AS done,
  SUM(status IN {_FAILED}) AS failed
FROM task_runs
WHERE run_id = {_RUN} AND finished_at IS NOT NULL
GROUP BY minute
ORDER BY minute
""".strip(),
    },
    "flaky_tasks": {
        "title": "Flaky tasks",
        "description": (
            "Task keys that failed in some runs and succeeded in others, across every run of "
            "the file: the tasks to look at first. run_id and task_id: its latest failure."
        ),
        "hide_sql": True,
        "sql": f"""
SELECT
  t.task_key,
  COUNT(*) AS runs,
  SUM(t.status IN {_SUCCEEDED}) AS succeeded,
  SUM(t.status IN {_FAILED}) AS failed,
  f.run_id AS run_id,
  f.task_id AS task_id
FROM task_runs t
-- Its latest failure, to open on the task page.
JOIN task_runs f ON f.id = (
  SELECT l.id FROM task_runs l WHERE l.task_key = t.task_key AND l.status IN {_FAILED}
  ORDER BY l.run_id DESC LIMIT 1
)
WHERE t.task_key IS NOT NULL
GROUP BY t.task_key
HAVING failed > 0 AND succeeded > 0
ORDER BY failed DESC, t.task_key
LIMIT 1000
""".strip(),
    },
}
"""Canned queries: the questions people ask of run history first (their SQL folded away)."""

_TABLES: Final[dict[str, dict[str, Any]]] = {
    "pipeline_runs": {
        "description": "One row per run_pipeline call, newest first. Open a run for its tasks.",
        "sort_desc": "id",
        "facets": ["status", "name"],
        # Facets and foreign-key cells name a run by its id: by name, every run of a
        # pipeline would look the same ("demo x 6").
        "label_column": "id",
    },
    "task_runs": {
        "description": "One row per task per run, newest first. Open a task id for its page.",
        "sort_desc": "id",
        "facets": ["status", "run_id"],
        "label_column": "name",
    },
    "task_attempts": {
        "description": "Failed attempts of tasks that were retried.",
        "sort_desc": "id",
        "facets": ["status"],
    },
    "task_logs": {
        "description": "Log records written inside tasks (ctx.log and logging), per attempt.",
        "sort_desc": "id",
        "facets": ["level"],
    },
    "dead_letters": {
        "description": "Messages the writer could not apply, with the error it met.",
        "sort_desc": "id",
        "facets": ["msg_type"],
    },
    "pipeloom_state": {
        "description": (
            "Each pipeline's incremental state (ctx.state.set): the JSON value of each key, "
            "committed with the task that set it; run_id and task_key say which."
        ),
        "sort": "key",
        "facets": ["pipeline"],
    },
    "_sqlite_migrations": {"hidden": True},
}


def _task_link(db_name: str, label: str) -> str:
    """SQL for a link to the task page of ``t``'s row, labelled with SQL ``label``."""
    base = html.escape(f"/-/pipeloom/{tilde_encode(db_name)}/task/")
    return f"'<a href=\"{base}' || t.run_id || '/' || t.task_id || '\">' || {label} || '</a>'"


def _run_dashboard(db_name: str) -> dict[str, Any]:
    """One run at a glance: its numbers, Gantt, failures, slowest tasks and throughput."""
    run_filter = f"WHERE r.id = {_RUN}"
    return {
        "title": "Run",
        "description": "One run: the newest unless you pick another run id.",
        "settings": {"autorefresh": 1, "allow_fullscreen": True},
        "filters": {
            "run_id": {
                "name": "Run id (blank: newest)",
                "type": "select",
                "db": db_name,
                # Text, as the page compares it with ?run_id=N to select the option.
                "query": "SELECT CAST(id AS TEXT) FROM pipeline_runs ORDER BY id DESC",
            }
        },
        "layout": [
            ["run", "duration", "tasks", "throughput"],
            ["stages", "stages", "stages", "stages"],
            ["gantt", "gantt", "gantt", "gantt"],
            ["failures", "failures", "slowest", "slowest"],
            ["finished", "finished", "finished", "finished"],
        ],
        "charts": {
            "run": {
                "title": "Run",
                "db": db_name,
                "query": (
                    "SELECT '#' || v.id || ' ' || "
                    + _html("v.name")
                    + " || ' ' || "
                    + _badge("v.status")
                    + " || CASE WHEN v.stale THEN ' ' || "
                    + _badge("'stale'")
                    + " ELSE '' END || CASE WHEN v.stop_reason IS NOT NULL OR v.stale "
                    "THEN '<br>' || "
                    + _html(_STOP_TEXT_SQL)
                    + " ELSE '' END || CASE WHEN v.tasks_not_started > 0 THEN '<br>' || "
                    "v.tasks_not_started || ' not started' ELSE '' END AS run "
                    f"FROM ({RUNS_SELECT}) AS v WHERE v.id = {_RUN}"
                ),
                "library": "metric",
                "display": {"field": "run"},
            },
            "duration": {
                "title": "Duration",
                "db": db_name,
                "query": (
                    "SELECT CASE WHEN d < 10 THEN printf('%.2f s', d) "
                    "WHEN d < 60 THEN printf('%.1f s', d) "
                    "WHEN d < 3600 THEN printf('%d m %02d s', d / 60, d % 60) "
                    "ELSE printf('%d h %02d m', d / 3600, (d % 3600) / 60) END AS duration "
                    f"FROM (SELECT v.duration_s AS d FROM ({RUNS_SELECT}) AS v WHERE v.id = {_RUN})"
                ),
                "library": "metric",
                "display": {"field": "duration"},
            },
            "tasks": {
                "title": "Tasks done / failed / planned",
                "db": db_name,
                "query": (
                    "SELECT COALESCE(SUM(t.status IN " + _SUCCEEDED + "), 0) || ' / ' || "
                    "COALESCE(SUM(t.status IN " + _FAILED + "), 0) || ' / ' || "
                    "MAX(r.tasks_total, COUNT(t.id)) "
                    "AS tasks FROM pipeline_runs r LEFT JOIN task_runs t ON t.run_id = r.id "
                    + run_filter
                ),
                "library": "metric",
                "display": {"field": "tasks"},
            },
            "throughput": {
                "title": "Throughput",
                "db": db_name,
                "query": (
                    "SELECT printf('%.1f', COALESCE(v.tasks_per_s, 0)) AS per_s "
                    f"FROM ({RUNS_SELECT}) AS v WHERE v.id = {_RUN}"
                ),
                "library": "metric",
                "display": {"field": "per_s", "suffix": " tasks/s"},
            },
            "gantt": {
                "title": "Tasks, start to finish (one bar per task that started)",
                "db": db_name,
                "query": f"""
SELECT
  t.task_id,
  CASE WHEN t.stage IS NULL THEN t.task_id || ' ' || t.name
       ELSE t.stage || ' · ' || COALESCE(t.task_key, t.task_id) END AS task,
  COALESCE(t.stage, t.name) AS stage,
  t.status,
  t.started_at,
  COALESCE(t.finished_at, {_TASK_END}) AS finished_at,
  {_SECONDS.format(end=f"COALESCE(t.finished_at, {_TASK_END})", start="t.started_at")} AS seconds
FROM task_runs t
JOIN pipeline_runs r ON r.id = t.run_id
LEFT JOIN (
  SELECT stage AS s, MIN(id) AS first FROM task_runs
  WHERE run_id = {_RUN} AND stage IS NOT NULL GROUP BY stage
) f ON f.s = t.stage
WHERE t.run_id = {_RUN} AND t.started_at IS NOT NULL
-- A pipeline with stages reads as bands, one per stage, in the order the stages began.
ORDER BY f.first, t.started_at, t.task_id
LIMIT 1000
""".strip(),
                "library": "vega-lite",
                "display": {
                    "usermeta": _EMBED,
                    "height": {"step": 18},
                    "mark": {"type": "bar", "tooltip": True, "cornerRadius": 2},
                    "encoding": {
                        "y": {"field": "task", "type": "nominal", "sort": None, "title": None},
                        "x": {
                            "field": "started_at",
                            "type": "temporal",
                            "scale": {"type": "utc"},
                            "axis": {"format": "%H:%M:%S", "title": "UTC"},
                        },
                        "x2": {"field": "finished_at"},
                        "color": _color(),
                        "tooltip": [
                            {"field": "task", "type": "nominal"},
                            {"field": "stage", "type": "nominal"},
                            {"field": "status", "type": "nominal"},
                            {"field": "seconds", "type": "quantitative"},
                            {"field": "started_at", "type": "nominal"},
                            {"field": "finished_at", "type": "nominal"},
                        ],
                    },
                },
            },
            "stages": {
                "title": "Stages (a pipeline whose tasks consume other tasks' results)",
                "db": db_name,
                "query": f"""
SELECT
  COALESCE(t.stage, '(no stages)') AS stage,
  COALESCE(MAX(t.upstream_stage), '') AS consumes,
  SUM(t.status IN {_SUCCEEDED}) AS done,
  SUM(t.status IN {_FAILED}) AS failed,
  SUM(t.status = 'upstream_failed') AS upstream_failed,
  SUM(t.status IN {_ACTIVE}) AS running,
  COUNT(*) AS tasks
FROM task_runs t
WHERE t.run_id = {_RUN}
GROUP BY t.stage
ORDER BY MIN(t.id)
""".strip(),
                "library": "table",
            },
            "failures": {
                "title": "Failures",
                "db": db_name,
                "query": f"""
SELECT
  {_task_link(db_name, _html("t.name"))} AS task,
  {_badge("t.status")} AS status,
  '<span class="pl-mono">' || {_html("COALESCE(t.message, t.error)")} || '</span>' AS error
FROM task_runs t
WHERE t.run_id = {_RUN} AND t.status IN {_FAILED}
UNION ALL
SELECT 'none', '', ''
WHERE NOT EXISTS (SELECT 1 FROM task_runs t WHERE t.run_id = {_RUN} AND t.status IN {_FAILED})
LIMIT 200
""".strip(),
                "library": "table",
            },
            "slowest": {
                "title": "Slowest tasks",
                "db": db_name,
                "query": f"""
SELECT task, status, seconds FROM (
  SELECT
    {_task_link(db_name, _html("t.name"))} AS task,
    {_badge("t.status")} AS status,
    {_SECONDS.format(end="t.finished_at", start="t.started_at")} AS seconds
  FROM task_runs t
  WHERE t.run_id = {_RUN} AND t.status IN {_TIMED}
    AND t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
  ORDER BY seconds DESC, t.task_id
  LIMIT 10
)
UNION ALL
SELECT 'none yet', '', ''
WHERE NOT EXISTS (
  SELECT 1 FROM task_runs t WHERE t.run_id = {_RUN} AND t.status IN {_TIMED}
    AND t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
)
""".strip(),
                "library": "table",
            },
            "finished": {
                "title": "Tasks finished over the run (throughput, at most 120 bars)",
                "db": db_name,
                "query": f"""
WITH run AS (
  SELECT
    r.id,
    r.started_at,
    -- Bars of a whole number of seconds, at most 120 of them however long the run.
    CAST((julianday({_RUN_END}) - julianday(r.started_at)) * 86400 / 120
      AS INTEGER) + 1 AS width
  FROM pipeline_runs r
  {run_filter}
)
SELECT
  CAST((julianday(t.finished_at) - julianday(run.started_at)) * 86400 / run.width AS INTEGER)
    * run.width AS from_s,
  (CAST((julianday(t.finished_at) - julianday(run.started_at)) * 86400 / run.width AS INTEGER)
    + 1) * run.width AS to_s,
  t.status,
  COUNT(*) AS tasks
FROM task_runs t JOIN run ON t.run_id = run.id
WHERE t.finished_at IS NOT NULL AND t.status IN {_TERMINAL}
GROUP BY from_s, t.status
ORDER BY from_s
""".strip(),
                "library": "vega-lite",
                "display": {
                    "usermeta": _EMBED,
                    "height": 160,
                    "mark": {"type": "bar", "tooltip": True},
                    "encoding": {
                        "x": {
                            "field": "from_s",
                            "type": "quantitative",
                            "title": "seconds since the run started",
                        },
                        "x2": {"field": "to_s"},
                        "y": {"field": "tasks", "type": "quantitative", "stack": True},
                        "color": _color(),
                    },
                },
            },
        },
    }


def _history_dashboard(db_name: str) -> dict[str, Any]:
    """Across runs of one pipeline: how long each took, and which tasks failed in which run."""
    name = "COALESCE(NULLIF(:name, ''), (SELECT name FROM pipeline_runs ORDER BY id DESC LIMIT 1))"
    return {
        "title": "Run history",
        "description": "Every run of one pipeline (the newest run's unless you pick another).",
        "settings": {"autorefresh": 1, "allow_fullscreen": True},
        "filters": {
            "name": {
                "name": "Pipeline",
                "type": "select",
                "db": db_name,
                "query": "SELECT DISTINCT name FROM pipeline_runs ORDER BY name",
            }
        },
        "layout": [["durations", "runs"], ["grid", "grid"]],
        "charts": {
            "durations": {
                "title": "Duration of each run",
                "db": db_name,
                "query": f"""
SELECT v.id AS run_id, v.shown_status AS status, v.started_at, v.duration_s,
  {_STOP_TEXT_SQL} AS stopped
FROM ({RUNS_SELECT}) AS v
WHERE v.name = {name}
ORDER BY v.id DESC
LIMIT 1000
""".strip(),
                "library": "vega-lite",
                "display": {
                    "usermeta": _EMBED,
                    "height": 200,
                    "encoding": {
                        "x": {
                            "field": "started_at",
                            "type": "temporal",
                            "scale": {"type": "utc"},
                            "title": "run started (UTC)",
                        },
                        "y": {"field": "duration_s", "type": "quantitative", "title": "seconds"},
                    },
                    "layer": [
                        {"mark": {"type": "line", "color": "#94a3b8"}},
                        {
                            "mark": {"type": "point", "filled": True, "size": 70, "tooltip": True},
                            "encoding": {"color": _color()},
                        },
                    ],
                },
            },
            "runs": {
                "title": "Runs of this pipeline",
                "db": db_name,
                "query": f"SELECT COUNT(*) AS runs FROM pipeline_runs WHERE name = {name}",
                "library": "metric",
                "display": {"field": "runs", "suffix": " runs"},
            },
            "grid": {
                "title": "Task x run: tasks that did not succeed in every one of the last 30 runs",
                "db": db_name,
                "query": f"""
WITH recent AS (
  SELECT id FROM pipeline_runs WHERE name = {name} ORDER BY id DESC LIMIT 30
),
unsteady AS (
  SELECT task_key FROM task_runs
  WHERE run_id IN (SELECT id FROM recent) AND task_key IS NOT NULL
  GROUP BY task_key
  HAVING SUM(status IN {_SUCCEEDED}) < COUNT(*)
  ORDER BY SUM(status IN {_FAILED}) DESC, task_key
  LIMIT 40
)
SELECT t.run_id, t.task_key, t.status
FROM task_runs t
WHERE t.run_id IN (SELECT id FROM recent) AND t.task_key IN (SELECT task_key FROM unsteady)
ORDER BY t.task_key, t.run_id
LIMIT 1000
""".strip(),
                "library": "vega-lite",
                "display": {
                    "usermeta": _EMBED,
                    "height": {"step": 18},
                    "mark": {"type": "rect", "tooltip": True, "stroke": "white"},
                    "encoding": {
                        "x": {
                            "field": "run_id",
                            "type": "ordinal",
                            "title": "run",
                            "axis": {"labelAngle": 0},
                        },
                        "y": {"field": "task_key", "type": "nominal", "title": None},
                        "color": _color(),
                    },
                },
            },
        },
    }


def layout_note(kind: Layout, file_name: str) -> str | None:
    """Explain a file that pipeloom's queries and chart cannot read; None when they can."""
    if kind == "current":
        return None
    if kind == "outdated":
        return (
            f"{file_name} holds an older pipeloom schema: its tables are shown as they are; run "
            f"`pipeloom db upgrade {file_name}` for the run-history queries and chart."
        )
    if kind == "newer":
        return (
            f"{file_name} was written by a newer pipeloom: its tables are shown as they are; "
            "upgrade pipeloom-observe for the run-history queries and chart."
        )
    if kind == "conflict":
        return (
            f"{file_name} holds a table named like one of pipeloom's that pipeloom did not "
            "create (see `pipeloom db info`): it is shown as a plain SQLite file."
        )
    return (
        f"{file_name} has no pipeloom tables (pipeline_runs, task_runs): it is shown as a plain "
        "SQLite file; once a pipeline has run against it, restart pipeloom observe."
    )


def default_metadata(db_name: str, kind: Layout = "current", file_name: str = "") -> dict[str, Any]:
    """Return the metadata for one run database named ``db_name`` (the file's stem).

    Table settings, canned queries and the dashboard are only configured when the file holds
    the current schema, since they name its columns; other files get a note instead.
    """
    note = layout_note(kind, file_name or db_name)
    database: dict[str, Any] = {
        "description": note or "Runs and tasks recorded by pipeloom's single writer.",
        "tables": {"_sqlite_migrations": {"hidden": True}},
    }
    metadata: dict[str, Any] = {
        "title": "pipeloom run history",
        "description": (
            "Every run and every task pipeloom recorded in this file. Read-only: pages show "
            "rows committed so far, so reload to follow a run in progress."
        ),
        "databases": {db_name: database},
    }
    if note is None:
        # Sorts, facets and queries name today's columns; on other layouts they would fail.
        database["tables"] = copy.deepcopy(_TABLES)
        database["queries"] = copy.deepcopy(QUERIES)
        metadata["plugins"] = {
            "datasette-dashboards": {
                RUN_DASHBOARD: _run_dashboard(db_name),
                HISTORY_DASHBOARD: _history_dashboard(db_name),
            }
        }
        metadata["description_html"] = _start_here(db_name, metadata["description"])
    return metadata


def _start_here(db_name: str, description: str) -> str:
    """Link the home page to the questions people ask first."""
    route = "/" + tilde_encode(db_name)
    links = [
        f'<a href="{route}/run_list">the runs</a>',
        f'<a href="/-/dashboards/{RUN_DASHBOARD}">the newest run</a>',
        f'<a href="/-/dashboards/{HISTORY_DASHBOARD}">run history</a>',
        *(
            f'<a href="{route}/{name}">{html.escape(query["title"].lower())}</a>'
            for name, query in QUERIES.items()
            if name != "run_list"
        ),
        f'<a href="{route}/task_runs">all tasks</a>',
    ]
    return (
        f"<p>{html.escape(description)}</p>"
        f"<p>Start with: {', '.join(links[:-1])} or {links[-1]}.</p>"
    )


def merge_metadata(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` over ``base``: mappings merge key by key, anything else replaces.

    Returns:
        A new dict; neither argument is changed.
    """
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_metadata(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class MetadataError(PipeloomError):
    """A ``--metadata`` file cannot be read or is not a mapping."""


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Read extra metadata from YAML (JSON is YAML too).

    Raises:
        MetadataError: the file cannot be read, is not YAML, or does not hold a mapping.
    """
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read metadata ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise MetadataError(f"{path}: metadata is not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise MetadataError(
            f"{path}: metadata holds a {type(loaded).__name__}; it must be a mapping "
            "(title:, databases:, plugins:)"
        )
    return loaded
