"""``pipeloom db upgrade|info``: inspect and migrate a run database."""

from __future__ import annotations

import shlex
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeloom._text import printable
from pipeloom.db import describe_error
from pipeloom.errors import DatabaseError
from pipeloom_cli._dbfile import file_size
from pipeloom_cli._errors import user_errors

if TYPE_CHECKING:
    from pipeloom_observe.info import DatabaseInfo

app = typer.Typer(help="Inspect and upgrade a run database.", no_args_is_help=True)

DbArg = Annotated[Path, typer.Argument(help="The run database file.", show_default=False)]


@app.command("upgrade")
def upgrade(db: DbArg) -> None:
    """Bring a run database's schema up to date in place, keeping every row.

    A table pipeloom did not create (an application's own ``task_runs``) is never changed:
    the upgrade is refused with an error naming it.
    """
    # sqlite-utils is imported here so that other commands start faster.
    from pipeloom_observe.info import database_info
    from pipeloom_observe.migrations import upgrade as apply_migrations

    with user_errors():
        try:
            # What the file held before: a migration it already held (core created it at
            # that version) is only recorded by the upgrade, its schema unchanged.
            held = set(database_info(db).unrecorded)
        except DatabaseError:
            held = set()  # the upgrade itself says what is wrong with the file, below
        try:
            applied = apply_migrations(db)
        except sqlite3.DatabaseError as exc:  # damaged pages: one line naming the file
            raise describe_error(db, exc, writing=True) from exc
        info = database_info(db)
    for name in applied:
        typer.echo(f"recorded {name} (already in effect)" if name in held else f"applied {name}")
    state = "upgraded to" if set(applied) - held else "already at"
    typer.echo(f"{printable(db)}: {state} schema version {info.schema_version}")


def _prune_command() -> Any:
    from pipeloom_cli.commands.db_prune import prune

    return prune


def _describe(info: DatabaseInfo) -> list[str]:
    wal = "none" if info.wal_bytes is None else file_size(info.wal_bytes)
    lines = [
        f"file:            {printable(info.path)}",
        f"size:            {file_size(info.size_bytes)} (wal: {wal})",
        f"journal mode:    {info.journal_mode}",
        f"schema version:  {info.schema_version} (this pipeloom writes {info.current_version})",
    ]
    lines.append("applied:         " + (", ".join(info.in_effect) or "none"))
    if info.unrecorded:
        some = len(info.unrecorded)
        which = "all" if some == len(info.in_effect) else f"{some}"
        lines.append(
            f"                 ({which} held by the schema pipeloom created at version "
            f"{info.schema_version}, without a migration record)"
        )
    lines.append("pending:         " + (", ".join(info.pending) or "none"))
    if info.layout == "newer":
        lines.append("                 written by a newer pipeloom; upgrade pipeloom to use it")
    elif info.layout == "outdated":
        quoted = printable(shlex.quote(str(info.path)))
        lines.append(f"                 run `pipeloom db upgrade {quoted}` to upgrade in place")
    elif info.layout in ("empty", "foreign"):
        lines.append("                 no pipeloom tables in this file")
    elif info.layout == "conflict":
        lines.append(f"                 not usable by pipeloom: {info.conflict}")
        lines.append(
            "                 (record runs in another file, or pass store_task_status=False)"
        )
    lines.append(f"runs:            {'-' if info.runs is None else info.runs}")
    by_status = ", ".join(
        f"{printable(status)} {count}" for status, count in info.tasks_by_status.items()
    )
    lines.append(f"tasks:           {info.tasks}" + (f" ({by_status})" if by_status else ""))
    return lines


@app.command("info")
def info(db: DbArg) -> None:
    """Show a run database's migrations, runs, task counts, size and journal mode.

    Then rows and bytes per pipeloom table (indexes included), what retention would shrink.
    """
    from pipeloom.retention import table_sizes
    from pipeloom_observe.info import database_info

    with user_errors():
        described = database_info(db)
        sizes = table_sizes(db) if described.layout == "current" else []
    for line in _describe(described):
        typer.echo(line)
    for size in sizes:  # rows and bytes per pipeloom table: what retention would shrink
        shown = "" if size.bytes is None else f"  {file_size(size.bytes):>10}"
        typer.echo(f"  {size.table:<16} {size.rows:>12} rows{shown}")


# Retention lives in its own module; registered here so `pipeloom db --help` lists it.
app.command("prune")(_prune_command())
