"""``pipeloom init-db DB``: create pipeloom's tables in a file before any run (as 0.0.7 had).

Useful to point a dashboard or a reader at a file before the first pipeline writes to it.
An existing file keeps its tables and rows: one written by pipeloom 0.0.7 is upgraded in
place, another application's file gets pipeloom's tables next to its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeloom_cli._errors import UsageError, user_errors
from pipeloom_cli._options import DEFAULT_DB

__all__ = ["init_db"]


def init_db(
    db: Annotated[
        Path | None,
        typer.Argument(help="The run database file (default: ./pipeloom.db).", show_default=False),
    ] = None,
    db_option: Annotated[
        Path | None,
        typer.Option("--db", help="The same file, as pipeloom 0.0.7 spelled it.", hidden=True),
    ] = None,
) -> None:
    """Create pipeloom's run tables in DB (a new or an existing file)."""
    from pipeloom.db import connect, init_schema, wal_checkpoint

    if db is not None and db_option is not None and db != db_option:
        with user_errors():
            raise UsageError(f"DB {db} and --db {db_option}: give the file once")
    path = db or db_option or DEFAULT_DB
    with user_errors():
        conn = connect(path, wal=True)
        try:
            init_schema(conn, path)
            wal_checkpoint(conn, "FULL")
        finally:
            conn.close()
    typer.echo(f"{path}: pipeloom tables ready")
