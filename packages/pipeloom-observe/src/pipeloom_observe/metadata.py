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
from pipeloom.status import FAILED, sql_in
from pipeloom_observe._sqlite import Layout

__all__ = [
    "DASHBOARD",
    "QUERIES",
    "MetadataError",
    "default_metadata",
    "layout_note",
    "load_metadata",
    "merge_metadata",
]

DASHBOARD: Final = "run-history"
"""Slug of the datasette-dashboards dashboard: ``/-/dashboards/run-history``."""

_FAILED: Final = sql_in(FAILED)
"""`pipeloom.status.FAILED` as SQL: the same "failed" as the bar, `RunResult` and status."""

# Durations come from ISO 8601 UTC text; julianday() understands the "+00:00" suffix.
_SECONDS = "ROUND((julianday({end}) - julianday({start})) * 86400, 3)"

# A running run whose lease expired (pipeloom.lease, the one definition): its clock stops at
# its last heartbeat instead of growing forever.
_STALE = stale_sql("r")
_RUN_END = f"CASE WHEN {_STALE} THEN r.heartbeat_at ELSE COALESCE(r.finished_at, 'now') END"

QUERIES: Final[dict[str, dict[str, Any]]] = {
    "latest_run": {
        "title": "Latest run",
        "description": "The newest run with its task counts, counted live from task_runs.",
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
  COUNT(t.id) AS tasks,
  COALESCE(SUM(t.status = 'done'), 0) AS done,
  COALESCE(SUM(t.status IN {_FAILED}), 0) AS failed,
  COALESCE(SUM(t.status IN ('running', 'queued')), 0) AS in_flight
FROM pipeline_runs r
LEFT JOIN task_runs t ON t.run_id = r.id
WHERE r.id = (SELECT MAX(id) FROM pipeline_runs)
GROUP BY r.id
""".strip(),
    },
    "runs": {
        "title": "Runs",
        "description": (
            "Every run, newest first. stale = 1: still 'running' in the file, but its writer "
            "stopped sending heartbeats (its process died or is stuck)."
        ),
        "sql": f"""
SELECT
  r.id AS run_id,
  r.name,
  CASE WHEN {_STALE} THEN 'stale' ELSE r.status END AS status,
  {_STALE} AS stale,
  r.started_at,
  r.finished_at,
  {_SECONDS.format(end=_RUN_END, start="r.started_at")} AS seconds,
  r.heartbeat_at,
  r.error
FROM pipeline_runs r
ORDER BY r.id DESC
LIMIT 1000
""".strip(),
    },
    "failures": {
        "title": "Failed tasks",
        "description": "Tasks that ended in error or timeout, newest run first, with their error.",
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
WHERE t.status IN {_FAILED}
ORDER BY t.run_id DESC, t.task_id
LIMIT 1000
""".strip(),
    },
    "slowest_tasks": {
        "title": "Slowest tasks",
        "description": "The 100 longest finished tasks across all runs.",
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
WHERE t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
ORDER BY seconds DESC, t.run_id DESC, t.task_id
LIMIT 100
""".strip(),
    },
    "tasks_per_minute": {
        "title": "Tasks finished per minute",
        "description": "Throughput over time (UTC minutes), all runs together.",
        "sql": f"""
SELECT
  substr(finished_at, 1, 16) AS minute,
  COUNT(*) AS tasks,
  SUM(status = 'done') AS done,
  SUM(status IN {_FAILED}) AS failed
FROM task_runs
WHERE finished_at IS NOT NULL
GROUP BY minute
ORDER BY minute
""".strip(),
    },
}
"""Canned queries: the questions people ask of run history first."""

_TABLES: Final[dict[str, dict[str, Any]]] = {
    "pipeline_runs": {
        "description": "One row per run_pipeline call, newest first. Open a run for its tasks.",
        "sort_desc": "id",
        "facets": ["status", "name"],
        "label_column": "name",
    },
    "task_runs": {
        "description": "One row per task per run, newest first.",
        "sort_desc": "id",
        "facets": ["status", "run_id"],
        "label_column": "name",
    },
    "task_attempts": {
        "description": "Failed attempts of tasks that were retried.",
        "sort_desc": "id",
        "facets": ["status"],
    },
    "dead_letters": {
        "description": "Messages the writer could not apply, with the error it met.",
        "sort_desc": "id",
        "facets": ["msg_type"],
    },
    "_sqlite_migrations": {"hidden": True},
}


def _dashboard(db_name: str) -> dict[str, Any]:
    return {
        "title": "pipeloom run history",
        "description": "Throughput and outcomes across every run in this file.",
        # Redraw every minute, so the dashboard follows a run in progress.
        "settings": {"autorefresh": 1, "allow_fullscreen": True},
        "charts": {
            "tasks-per-minute": {
                "title": "Tasks finished per minute",
                "db": db_name,
                "query": QUERIES["tasks_per_minute"]["sql"],
                "library": "vega-lite",
                "display": {
                    "mark": {"type": "bar", "tooltip": True},
                    "encoding": {
                        "x": {"field": "minute", "type": "ordinal", "title": "minute (UTC)"},
                        "y": {"field": "tasks", "type": "quantitative", "title": "tasks"},
                    },
                },
            },
            "tasks-by-status": {
                "title": "Tasks by status",
                "db": db_name,
                "query": (
                    "SELECT status, COUNT(*) AS tasks FROM task_runs "
                    "GROUP BY status ORDER BY tasks DESC"
                ),
                "library": "vega-lite",
                "display": {
                    "mark": {"type": "bar", "tooltip": True},
                    "encoding": {
                        "x": {"field": "status", "type": "nominal", "sort": "-y"},
                        "y": {"field": "tasks", "type": "quantitative"},
                        "color": {"field": "status", "type": "nominal"},
                    },
                },
            },
            "runs": {
                "title": "Runs recorded",
                "db": db_name,
                "query": "SELECT COUNT(*) AS runs FROM pipeline_runs",
                "library": "metric",
                "display": {"field": "runs", "prefix": "", "suffix": " runs"},
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
        metadata["plugins"] = {"datasette-dashboards": {DASHBOARD: _dashboard(db_name)}}
        metadata["description_html"] = _start_here(db_name, metadata["description"])
    return metadata


def _start_here(db_name: str, description: str) -> str:
    """Link the home page to the questions people ask first."""
    route = "/" + tilde_encode(db_name)
    links = [
        f'<a href="{route}/{name}">{html.escape(query["title"].lower())}</a>'
        for name, query in QUERIES.items()
    ]
    links.append(f'<a href="{route}/pipeline_runs">all runs</a>')
    links.append(f'<a href="/-/dashboards/{DASHBOARD}">the dashboard</a>')
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
