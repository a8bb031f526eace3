"""Datasette metadata for a run database: loading, merging, and the defaults pipeloom sets.

The SQL lives elsewhere, one job per module: `pipeloom_observe.sql` (shared fragments),
`pipeloom_observe.queries` (canned queries, table settings), `pipeloom_observe.dashboards`
(datasette-dashboards charts); the pages people land on are the plugin's
(`pipeloom_observe.plugin`). This module puts them together for one file.

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
from pipeloom_observe._sqlite import Layout
from pipeloom_observe.dashboards import HISTORY_DASHBOARD, RUN_DASHBOARD, dashboards
from pipeloom_observe.plugin.pages import CONFIG_KEY
from pipeloom_observe.queries import QUERIES, TABLES

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
            "Every run and every task pipeloom recorded in this file. Read-only: a run's page "
            "follows a run in progress without reloading."
        ),
        "databases": {db_name: database},
    }
    if note is None:
        # Sorts, facets and queries name today's columns; on other layouts they would fail.
        database["tables"] = copy.deepcopy(TABLES)
        database["queries"] = copy.deepcopy(QUERIES)
        metadata["plugins"] = {
            "datasette-dashboards": dashboards(db_name),
            CONFIG_KEY: {"database": db_name},
        }
        metadata["description_html"] = _start_here(db_name, metadata["description"])
    return metadata


def _start_here(db_name: str, description: str) -> str:
    """Link the home page to the questions people ask first."""
    route = "/" + tilde_encode(db_name)
    links = [
        f'<a href="{route}/run_list">the runs as a table</a>',
        f'<a href="/-/dashboards/{RUN_DASHBOARD}">charts of the newest run</a>',
        f'<a href="/-/dashboards/{HISTORY_DASHBOARD}">run history charts</a>',
        *(
            f'<a href="{route}/{name}">{html.escape(query["title"].lower())}</a>'
            for name, query in QUERIES.items()
            if name != "run_list"
        ),
        f'<a href="{route}/task_runs">all tasks</a>',
    ]
    return (
        f"<p>{html.escape(description)}</p>"
        f"<p>Raw answers, with their SQL: {', '.join(links[:-1])} or {links[-1]}.</p>"
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
