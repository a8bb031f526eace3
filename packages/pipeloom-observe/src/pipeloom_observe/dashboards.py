"""The two datasette-dashboards configurations: one run's charts, and one pipeline's runs.

Kept for the charts the plugin's pages link to (``/-/dashboards/run``, ``/-/dashboards/
run-history``); their SQL comes from `pipeloom_observe.sql`, their colors from
`pipeloom_observe.colors`.
"""

from __future__ import annotations

import html
from typing import Any, Final

from datasette.utils import tilde_encode

from pipeloom.schema import RUNS_SELECT
from pipeloom_observe.colors import STATUS_COLORS
from pipeloom_observe.sql import (
    ACTIVE_SQL,
    FAILED_SQL,
    RUN_END_SQL,
    RUN_SQL,
    SECONDS_SQL,
    STOP_TEXT_SQL,
    SUCCEEDED_SQL,
    TASK_END_SQL,
    TERMINAL_SQL,
    TIMED_SQL,
    badge_sql,
    html_sql,
)

__all__ = ["EMBED", "HISTORY_DASHBOARD", "RUN_DASHBOARD", "color_channel", "dashboards"]

RUN_DASHBOARD: Final = "run"
"""Slug of the per-run dashboard: ``/-/dashboards/run?run_id=N`` (newest run without it)."""
HISTORY_DASHBOARD: Final = "run-history"
"""Slug of the cross-run dashboard: duration of a pipeline's runs, the task x run grid."""


def color_channel(field: str = "status") -> dict[str, Any]:
    """A vega-lite color channel with the fixed status scale: colors never shift."""
    return {
        "field": field,
        "type": "nominal",
        "title": "status",
        "scale": {"domain": list(STATUS_COLORS), "range": list(STATUS_COLORS.values())},
    }


# Every chart renders as SVG (crisp, and its marks can be inspected) with no action menu.
EMBED: Final = {"embedOptions": {"renderer": "svg", "actions": False}}


def _task_link(db_name: str, label: str) -> str:
    """SQL for a link to the task page of ``t``'s row, labelled with SQL ``label``."""
    base = html.escape(f"/-/pipeloom/{tilde_encode(db_name)}/task/")
    return f"'<a href=\"{base}' || t.run_id || '/' || t.task_id || '\">' || {label} || '</a>'"


def _run_dashboard(db_name: str) -> dict[str, Any]:
    """One run at a glance: its numbers, Gantt, failures, slowest tasks and throughput."""
    run_filter = f"WHERE r.id = {RUN_SQL}"
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
                    + html_sql("v.name")
                    + " || ' ' || "
                    + badge_sql("v.status")
                    + " || CASE WHEN v.stale THEN ' ' || "
                    + badge_sql("'stale'")
                    + " ELSE '' END || CASE WHEN v.stop_reason IS NOT NULL OR v.stale "
                    "THEN '<br>' || "
                    + html_sql(STOP_TEXT_SQL)
                    + " ELSE '' END || CASE WHEN v.tasks_not_started > 0 THEN '<br>' || "
                    "v.tasks_not_started || ' not started' ELSE '' END AS run "
                    f"FROM ({RUNS_SELECT}) AS v WHERE v.id = {RUN_SQL}"
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
                    "FROM (SELECT v.duration_s AS d "
                    f"FROM ({RUNS_SELECT}) AS v WHERE v.id = {RUN_SQL})"
                ),
                "library": "metric",
                "display": {"field": "duration"},
            },
            "tasks": {
                "title": "Tasks done / failed / planned",
                "db": db_name,
                "query": (
                    "SELECT COALESCE(SUM(t.status IN " + SUCCEEDED_SQL + "), 0) || ' / ' || "
                    "COALESCE(SUM(t.status IN " + FAILED_SQL + "), 0) || ' / ' || "
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
                    f"FROM ({RUNS_SELECT}) AS v WHERE v.id = {RUN_SQL}"
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
  COALESCE(t.finished_at, {TASK_END_SQL}) AS finished_at,
  {SECONDS_SQL.format(end=f"COALESCE(t.finished_at, {TASK_END_SQL})", start="t.started_at")}
    AS seconds
FROM task_runs t
JOIN pipeline_runs r ON r.id = t.run_id
LEFT JOIN (
  SELECT stage AS s, MIN(id) AS first FROM task_runs
  WHERE run_id = {RUN_SQL} AND stage IS NOT NULL GROUP BY stage
) f ON f.s = t.stage
WHERE t.run_id = {RUN_SQL} AND t.started_at IS NOT NULL
-- A pipeline with stages reads as bands, one per stage, in the order the stages began.
ORDER BY f.first, t.started_at, t.task_id
LIMIT 1000
""".strip(),
                "library": "vega-lite",
                "display": {
                    "usermeta": EMBED,
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
                        "color": color_channel(),
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
  SUM(t.status IN {SUCCEEDED_SQL}) AS done,
  SUM(t.status IN {FAILED_SQL}) AS failed,
  SUM(t.status = 'upstream_failed') AS upstream_failed,
  SUM(t.status IN {ACTIVE_SQL}) AS running,
  COUNT(*) AS tasks
FROM task_runs t
WHERE t.run_id = {RUN_SQL}
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
  {_task_link(db_name, html_sql("t.name"))} AS task,
  {badge_sql("t.status")} AS status,
  '<span class="pl-mono">' || {html_sql("COALESCE(t.message, t.error)")} || '</span>' AS error
FROM task_runs t
WHERE t.run_id = {RUN_SQL} AND t.status IN {FAILED_SQL}
UNION ALL
SELECT 'none', '', ''
WHERE NOT EXISTS (SELECT 1 FROM task_runs t WHERE t.run_id = {RUN_SQL} AND t.status IN {FAILED_SQL})
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
    {_task_link(db_name, html_sql("t.name"))} AS task,
    {badge_sql("t.status")} AS status,
    {SECONDS_SQL.format(end="t.finished_at", start="t.started_at")} AS seconds
  FROM task_runs t
  WHERE t.run_id = {RUN_SQL} AND t.status IN {TIMED_SQL}
    AND t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
  ORDER BY seconds DESC, t.task_id
  LIMIT 10
)
UNION ALL
SELECT 'none yet', '', ''
WHERE NOT EXISTS (
  SELECT 1 FROM task_runs t WHERE t.run_id = {RUN_SQL} AND t.status IN {TIMED_SQL}
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
    CAST((julianday({RUN_END_SQL}) - julianday(r.started_at)) * 86400 / 120
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
WHERE t.finished_at IS NOT NULL AND t.status IN {TERMINAL_SQL}
GROUP BY from_s, t.status
ORDER BY from_s
""".strip(),
                "library": "vega-lite",
                "display": {
                    "usermeta": EMBED,
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
                        "color": color_channel(),
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
                # Blank draws the newest run's pipeline: the label says so, as the run
                # dashboard's "Run id (blank: newest)" does, instead of looking unset.
                "name": "Pipeline (blank: the newest run's)",
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
  CASE WHEN v.stop_reason IS NOT NULL OR v.stale = 1 THEN {STOP_TEXT_SQL} END AS stopped
FROM ({RUNS_SELECT}) AS v
WHERE v.name = {name}
ORDER BY v.id DESC
LIMIT 1000
""".strip(),
                "library": "vega-lite",
                "display": {
                    "usermeta": EMBED,
                    "height": 200,
                    "encoding": {
                        "x": {
                            "field": "started_at",
                            "type": "temporal",
                            "scale": {"type": "utc"},
                            # One clock everywhere: 24-hour UTC (vega's default is 12-hour).
                            "axis": {"format": "%Y-%m-%d %H:%M", "labelAngle": -30},
                            "title": "run started (UTC, 24-hour)",
                        },
                        "y": {"field": "duration_s", "type": "quantitative", "title": "seconds"},
                    },
                    "layer": [
                        {"mark": {"type": "line", "color": "#94a3b8"}},
                        {
                            "mark": {"type": "point", "filled": True, "size": 70},
                            "encoding": {
                                "color": color_channel(),
                                # A stopped run is marked apart from one that ran to its end.
                                "shape": {
                                    "field": "stopped",
                                    "type": "nominal",
                                    "title": "stopped",
                                },
                                "tooltip": [
                                    {"field": "run_id", "type": "ordinal"},
                                    {"field": "status", "type": "nominal"},
                                    {"field": "duration_s", "type": "quantitative"},
                                    {"field": "stopped", "type": "nominal"},
                                    {
                                        "field": "started_at",
                                        "type": "temporal",
                                        "format": "%Y-%m-%d %H:%M:%S",
                                        "scale": {"type": "utc"},
                                    },
                                ],
                            },
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
  HAVING SUM(status IN {SUCCEEDED_SQL}) < COUNT(*)
  ORDER BY SUM(status IN {FAILED_SQL}) DESC, task_key
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
                    "usermeta": EMBED,
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
                        "color": color_channel(),
                    },
                },
            },
        },
    }


def dashboards(db_name: str) -> dict[str, Any]:
    """The datasette-dashboards configuration for the database ``db_name``."""
    return {RUN_DASHBOARD: _run_dashboard(db_name), HISTORY_DASHBOARD: _history_dashboard(db_name)}
