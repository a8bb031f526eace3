"""``pipeloom status --state``: each pipeline's incremental state and who last set each key.

The values are what ``ctx.state.set`` committed with a task's done row (`pipeloom.state`); the
run and task beside each say where to look when a cursor seems wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from pipeloom._text import printable
from pipeloom.logs import console
from pipeloom.state import state_entries
from pipeloom_cli._history import open_history
from pipeloom_cli._options import Format

__all__ = ["show_state"]

VALUE_CHARS = 80
"""Characters of a value shown in the table; JSON output has them whole."""


def show_state(db: Path, pipeline: str | None, fmt: Format) -> None:
    """Print the stored state (of one pipeline, or of all) as a table or JSON."""
    reader = open_history(db)
    try:
        with reader.snapshot() as snap:
            entries = list(state_entries(snap.conn, pipeline))
    finally:
        reader.close()
    if fmt is Format.json:
        payload = {
            "db": str(db),
            "state": [
                {
                    "pipeline": e.pipeline,
                    "key": e.key,
                    "value": json.loads(e.value),
                    "run_id": e.run_id,
                    "task_id": e.task_id,
                    "task_key": e.task_key,
                    "updated_at": e.updated_at,
                }
                for e in entries
            ],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    if not entries:
        which = f" of pipeline {printable(pipeline)!r}" if pipeline else ""
        console.print(
            Text(f"{printable(db)}: no state{which} yet (tasks set it with ctx.state.set)")
        )
        return
    table = Table(title=Text(f"state in {printable(db)}"), box=box.SIMPLE_HEAD)
    for column in ("pipeline", "key", "value", "set by run", "task", "at (UTC)"):
        table.add_column(column, overflow="fold")
    for e in entries:
        value = printable(e.value)
        if len(value) > VALUE_CHARS:
            value = value[: VALUE_CHARS - 1] + "…"
        table.add_row(
            Text(printable(e.pipeline)),
            Text(printable(e.key)),
            Text(value),
            "-" if e.run_id is None else str(e.run_id),
            Text(printable(e.task_key or str(e.task_id or "-"))),
            e.updated_at[:19].replace("T", " "),
        )
    console.print(table)
