"""``pipeloom status [DB]``: what the latest (or a chosen) run did, from the database alone.

It opens the file read-only, so it is safe beside a pipeline that is still writing, and
it never creates a file. ``--watch`` re-reads it until the run ends. What the file holds
(names, messages, the path) is shown as ``Text`` through `printable`, never as Rich markup.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pipeloom_cli._options import MAX_ID, Verbose, number

__all__ = ["Format", "status"]

DEFAULT_DB = Path("./pipeloom.db")
TABLE_TASK_LIMIT = 50
"""Tasks shown in the table by default, so a run of a million tasks stays readable."""


class Format(StrEnum):
    """Output formats of ``pipeloom status``."""

    table = "table"
    json = "json"


def status(
    db_arg: Annotated[
        Path | None,
        typer.Argument(
            metavar="DB", help="Run database (default ./pipeloom.db).", show_default=False
        ),
    ] = None,
    db_opt: Annotated[
        Path | None, typer.Option("--db", help="Run database, as an option.", show_default=False)
    ] = None,
    run_id: Annotated[
        int | None,
        number(
            "--run", low=1, high=MAX_ID, metavar="ID", help="Show run ID instead of the latest."
        ),
    ] = None,
    task_ref: Annotated[
        str | None,
        typer.Option(
            "--task",
            metavar="ID|KEY",
            help="Show one task of the run (--run, default the latest) by id or by key "
            "(load:data/a.csv, the same in every run): its row, error, attempts and logs.",
            show_default=False,
        ),
    ] = None,
    runs: Annotated[bool, typer.Option("--runs", help="List recent runs.")] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table or json.")] = Format.table,
    limit: Annotated[
        int | None,
        number(
            "--limit",
            low=1,
            high=MAX_ID,
            help=f"Most tasks (or runs) to show (default: {TABLE_TASK_LIMIT} in a table, "
            "all tasks in JSON, 20 runs).",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until the run ends (Ctrl-C stops).")
    ] = False,
    interval: Annotated[
        float,
        number(
            "--interval", low=0.05, high=86_400.0, kind=float, help="Seconds between refreshes."
        ),
    ] = 1.0,
    verbose: Verbose = 0,
) -> None:
    """Show a run's summary and tasks.

    The latest run by default: failed tasks first, then running, then done; skipped ones
    (a resumed run's) are counted under the table. --task ID|KEY shows one task in full. The
    database is opened read-only and never created.
    """
    from pipeloom_cli.commands._status_show import show

    show(db_arg, db_opt, run_id, task_ref, runs, fmt, limit, watch, interval, verbose)
