"""``pipeloom status DB --failures``: failed tasks over many runs, grouped by their error.

Read in one snapshot (`pipeloom.history.HistoryReader`), grouped by `pipeloom.failures`.
Imported only when the option is used.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from pipeloom._text import printable
from pipeloom.failures import FailureGroup, failure_groups
from pipeloom.logs import console
from pipeloom_cli._errors import user_errors
from pipeloom_cli._history import open_history
from pipeloom_cli._options import Format, age_in_days

__all__ = ["show_failures"]


def _table(groups: list[FailureGroup], shown: int) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="Failures by error", title_justify="left")
    for column in ("count", "runs", "error", "first seen", "last seen", "example"):
        if column == "error":
            table.add_column(column, ratio=1, min_width=24, overflow="fold")
        else:
            table.add_column(
                column, no_wrap=True, justify="right" if column in "count runs" else "left"
            )
    for group in groups[:shown]:
        error = f"{group.error_type}: {group.pattern}" if group.error_type else group.pattern
        table.add_row(
            str(group.count),
            str(group.runs),
            Text(printable(error), style="red"),
            (group.first_seen or "")[:16].replace("T", " "),
            (group.last_seen or "")[:16].replace("T", " "),
            Text(printable(f"run {group.example_run} {group.example_task}")),
        )
    return table


def show_failures(
    db: Path, since: str | None, pipeline: str | None, fmt: Format, limit: int | None, verbose: int
) -> None:
    """Print the failure groups of ``db`` (all runs, or ``since`` an age, of ``pipeline``)."""
    with user_errors(verbose):
        days = age_in_days("--since", since)
        reader = open_history(db)
        try:
            with reader.snapshot() as snap:
                label = shlex.quote(str(db))
                groups = failure_groups(snap, since_days=days, pipeline=pipeline, db_label=label)
        finally:
            reader.close()
    if fmt is Format.json:
        doc = {
            "db": str(db),
            "since": since,
            "pipeline": pipeline,
            "failed_tasks": sum(g.count for g in groups),
            "groups": [g.as_json() for g in groups[: limit or len(groups)]],
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    if not groups:
        scope = f" since {since} ago" if since else ""
        typer.echo(f"{printable(db)}: no failed tasks{scope}")
        return
    shown = limit or 20
    console.print(_table(groups, shown))
    total = sum(g.count for g in groups)
    typer.echo(f"{total} failed task(s) in {len(groups)} group(s)")
    if len(groups) > shown:
        typer.echo(f"... {len(groups) - shown} more group(s): --limit N or --format json")
    latest = groups[0]
    typer.echo(f"example: {printable(latest.example_command)}")
