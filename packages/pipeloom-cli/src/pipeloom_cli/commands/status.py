"""``pipeloom status [DB]``: what the latest (or a chosen) run did, from the database alone.

It opens the file read-only, so it is safe beside a pipeline that is still writing, and
it never creates a file. ``--watch`` re-reads it until the run ends, then exits with the
run's own exit code (the table in docs/cli.md), so it can gate a CI job. What the file holds
(names, messages, the path) is shown as ``Text`` through `printable`, never as Rich markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeloom_cli._options import DEFAULT_DB, MAX_ID, TABLE_TASK_LIMIT, Format, Verbose, number

__all__ = ["Format", "status"]


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
    state: Annotated[
        bool,
        typer.Option(
            "--state",
            help="Show each pipeline's stored state (ctx.state) and the run and task that "
            "last set each key.",
        ),
    ] = False,
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
    failures: Annotated[
        bool,
        typer.Option(
            "--failures",
            help="Failed tasks over many runs, grouped by error (type and message with "
            "numbers, ids, paths and quoted values as placeholders).",
        ),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="AGE",
            help="With --failures: only the last AGE (7d, 12h).",
            show_default=False,
        ),
    ] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(
            "--pipeline",
            metavar="NAME",
            help="With --state or --failures: only this pipeline's.",
            show_default=False,
        ),
    ] = None,
    verbose: Verbose = 0,
) -> None:
    """Show a run's summary and tasks.

    The latest run by default: failed tasks first, then running, then done; skipped ones
    (a resumed run's) are counted under the table. --failures groups the failed tasks of
    every run (--since 7d, --pipeline NAME) by their error. --task ID|KEY shows one task in
    full. The database is opened read-only and never created.
    """
    from pipeloom_cli.commands._status_show import show

    if failures or since is not None:
        _failures(db_arg or db_opt or DEFAULT_DB, failures, since, pipeline, fmt, limit, verbose)
        return
    if state or pipeline is not None:
        from pipeloom_cli._errors import UsageError, user_errors
        from pipeloom_cli.commands._status_state import show_state

        with user_errors(verbose):
            if not state:
                raise UsageError(
                    "--pipeline chooses whose state (--state) or failures (--failures) to "
                    "show; add one of them"
                )
            if runs or task_ref is not None or watch or run_id is not None:
                raise UsageError("--state shows the stored state; drop --runs/--task/--run/--watch")
            if db_arg is not None and db_opt is not None and db_arg != db_opt:
                raise UsageError(f"two databases given ({db_arg} and --db {db_opt}); pass one")
            show_state(db_arg or db_opt or DEFAULT_DB, pipeline, fmt)
        return
    watched = None
    if watch and task_ref is None and not runs:
        # Follow the run that is latest now, and exit with its outcome once it has ended.
        watched = run_id if run_id is not None else latest_run_id(db_arg or db_opt or DEFAULT_DB)
    show(db_arg, db_opt, watched or run_id, task_ref, runs, fmt, limit, watch, interval, verbose)
    if watched is not None:
        raise typer.Exit(watched_exit_code(db_arg or db_opt or DEFAULT_DB, watched))


def _failures(
    db: Path,
    failures: bool,
    since: str | None,
    pipeline: str | None,
    fmt: Format,
    limit: int | None,
    verbose: int,
) -> None:
    from pipeloom_cli._errors import UsageError, user_errors
    from pipeloom_cli.commands._status_failures import show_failures

    if not failures:
        with user_errors(verbose):
            raise UsageError("--since goes with --failures; add --failures")
    show_failures(db, since, pipeline, fmt, limit, verbose)


def latest_run_id(db: Path) -> int | None:
    """The latest run's id, or None when the file cannot say (`show` then reports why)."""
    import sqlite3

    from pipeloom.errors import PipeloomError
    from pipeloom.history import open_history

    try:
        conn = open_history(db)
    except PipeloomError:
        return None
    try:
        row = conn.execute("SELECT max(id) FROM pipeline_runs").fetchone()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    return None if row is None or row[0] is None else int(row[0])


def watched_exit_code(db: Path, run_id: int) -> int:
    """The exit code of a watched run's outcome, from its row (docs/cli.md's table).

    The same rule as ``pipeloom run``'s, from the row's ``status`` and ``stop_reason``. A run
    whose lease expired counts as crashed (1); one still running means the watch itself was
    stopped, and exits with that signal's code.
    """
    from pipeloom.history import open_history
    from pipeloom.lease import STALE_SQL
    from pipeloom.status import exit_code
    from pipeloom_cli._signals import received

    conn = open_history(db)
    try:
        row = conn.execute(
            f"SELECT status, stop_reason, {STALE_SQL} FROM pipeline_runs WHERE id = ?", (run_id,)
        ).fetchone()
    finally:
        conn.close()
    status, reason, stale = row
    if stale:
        return exit_code("interrupted", "crashed")
    if status == "running":
        return exit_code("interrupted", received() or "sigint")
    return exit_code(str(status), reason)
