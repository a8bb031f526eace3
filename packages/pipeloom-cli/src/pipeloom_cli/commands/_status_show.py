"""What ``pipeloom status`` shows: tables and JSON built from the run database.

Imported only when the command runs (Rich's console and tables take a while to import, and
``pipeloom --help`` should not pay for them).

It opens the file read-only, so it is safe beside a pipeline that is still writing, and
it never creates a file. ``--watch`` re-reads it until the run ends. What the file holds
(names, messages, the path) is shown as ``Text`` through `printable`, never as Rich markup.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeloom._text import printable
from pipeloom.db import describe_error
from pipeloom.logs import console
from pipeloom_cli._errors import UsageError, user_errors
from pipeloom_cli._history import (
    ACTIVE_STATUSES,
    FAILED_STATUSES,
    RunInfo,
    TaskInfo,
    get_run,
    list_runs,
    open_history,
    run_tasks,
    stage_counts,
)
from pipeloom_cli.commands.status import DEFAULT_DB, TABLE_TASK_LIMIT, Format

__all__ = ["show"]

_STYLES = {
    "done": "green",
    "error": "red",
    "timeout": "red",
    "interrupted": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "dim",
    "stale": "magenta",
}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _when(stamp: str | None) -> str:
    """Shorten an ISO timestamp for a table cell: 2026-01-31 12:00:00 (UTC)."""
    return "-" if not stamp else stamp[:19].replace("T", " ")


def _styled(status: str) -> Text:
    return Text(printable(status), style=_STYLES.get(status, ""))


def _run_panel(run: RunInfo, db: Path) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", Text(f"{run.id} ({printable(run.name)})"))
    if run.stale:
        status = _styled("stale")
        status.append(
            f" (still 'running' in the file, but no heartbeat since {_when(run.heartbeat_at)} "
            f"UTC, lease {run.lease_s:g} s: its process died or is stuck)"
        )
        grid.add_row("status", status)
    else:
        grid.add_row("status", _styled(run.status))
    grid.add_row("started", f"{_when(run.started_at)} UTC")
    grid.add_row("finished", f"{_when(run.finished_at)} UTC" if run.finished_at else "-")
    grid.add_row("elapsed", _seconds(run.elapsed))
    counts = ", ".join(f"{s} {n}" for s, n in sorted(run.counts.items())) or "none yet"
    grid.add_row("tasks", f"{run.finished}/{run.tasks_total} finished: {counts}")
    rate = "-" if run.throughput is None else f"{run.throughput:,.1f} tasks/s"
    grid.add_row("throughput", rate)
    grid.add_row("workers", "-" if run.workers is None else str(run.workers))
    grid.add_row("database", Text(printable(db)))
    return grid


def _add_stages(grid: Table, stages: dict[str, dict[str, int]]) -> None:
    """One line per stage under the run's totals (only when the run has stages)."""
    if len(stages) < 2:
        return
    for i, (name, counts) in enumerate(stages.items()):
        finished = sum(n for s, n in counts.items() if s not in ACTIVE_STATUSES)
        text = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        line = f"{printable(name)}: {finished}/{sum(counts.values())} finished: {text}"
        grid.add_row("stages" if i == 0 else "", Text(line))


def _tasks_table(tasks: list[TaskInfo], hidden: int) -> Table:
    table = Table(title="Tasks (failures first)", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("name")
    table.add_column("status")
    table.add_column("progress", justify="right")
    table.add_column("elapsed", justify="right")
    table.add_column("message", overflow="fold")
    for task in tasks:
        table.add_row(
            str(task.task_id),
            Text(printable(task.name)),
            _styled(task.status),
            f"{task.progress:.0%}",
            _seconds(task.elapsed),
            Text(printable(task.message or "", newlines=True)),
        )
    if hidden > 0:
        table.caption = f"... and {hidden} more (--limit to show more)"
    return table


def _runs_table(runs: list[RunInfo]) -> Table:
    table = Table(title="Recent runs (times in UTC)", title_justify="left")
    for name, justify in (
        ("id", "right"),
        ("name", "left"),
        ("status", "left"),
        ("started", "left"),
        ("elapsed", "right"),
        ("tasks", "right"),
        ("done", "right"),
        ("failed", "right"),
        ("cancelled", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for run in runs:
        failed = sum(run.counts.get(s, 0) for s in FAILED_STATUSES)
        table.add_row(
            str(run.id),
            Text(printable(run.name)),
            _styled(run.shown_status),
            _when(run.started_at),
            _seconds(run.elapsed),
            str(run.tasks_total),
            str(run.counts.get("done", 0)),
            str(failed),
            str(run.counts.get("cancelled", 0)),
        )
    return table


class _Snapshot:
    """One read of the database, renderable as a table or JSON."""

    def __init__(
        self, conn: sqlite3.Connection, db: Path, run_id: int | None, limit: int | None
    ) -> None:
        self.db = db
        self.run = get_run(conn, db, run_id)
        self.tasks: list[TaskInfo] = []
        self.hidden = 0
        self.stages: dict[str, dict[str, int]] = {}
        if self.run is not None:
            self.stages = stage_counts(conn, self.run.id)
            self.tasks = run_tasks(conn, self.run.id, limit)
            self.hidden = max(0, sum(self.run.counts.values()) - len(self.tasks))

    @property
    def active(self) -> bool:
        return self.run is not None and self.run.active

    def key(self) -> Any:
        """What changes when the run moves on (to print only changes on a pipe)."""
        if self.run is None:
            return None
        return (self.run.status, self.run.stale, tuple(sorted(self.run.counts.items())))

    def renderable(self) -> RenderableType:
        if self.run is None:
            return Text(f"No runs recorded in {printable(self.db)} yet.")
        panel = _run_panel(self.run, self.db)
        _add_stages(panel, self.stages)
        return Group(panel, _tasks_table(self.tasks, self.hidden))

    def as_json(self) -> dict[str, Any]:
        return {
            "db": str(self.db),
            "run": None if self.run is None else self.run.as_json(),
            "tasks": [t.as_json() for t in self.tasks],
            "tasks_not_shown": self.hidden,
            "stages": self.stages,
        }


def _resolve_db(db_arg: Path | None, db_opt: Path | None) -> Path:
    if db_arg is not None and db_opt is not None and db_arg != db_opt:
        raise UsageError(f"two databases given ({db_arg} and --db {db_opt}); pass one")
    return db_arg or db_opt or DEFAULT_DB


def _watch(
    conn: sqlite3.Connection,
    db: Path,
    run_id: int | None,
    limit: int | None,
    fmt: Format,
    interval: float,
) -> None:
    snap = _Snapshot(conn, db, run_id, limit)
    # Follow the run that was latest when watching began, even if another starts meanwhile.
    run_id = None if snap.run is None else snap.run.id
    try:
        if fmt is Format.table and console.is_terminal:
            with Live(snap.renderable(), console=console, auto_refresh=False) as live:
                while snap.active:
                    time.sleep(interval)
                    snap = _Snapshot(conn, db, run_id, limit)
                    live.update(snap.renderable(), refresh=True)
            return
        _emit(snap, fmt, compact=True)
        last = snap.key()
        while snap.active:
            time.sleep(interval)
            snap = _Snapshot(conn, db, run_id, limit)
            if snap.key() != last:
                last = snap.key()
                _emit(snap, fmt, compact=True)
    except KeyboardInterrupt:
        typer.echo("Stopped watching.", err=True)


def _emit(snap: _Snapshot, fmt: Format, *, compact: bool = False) -> None:
    if fmt is Format.json:
        indent = None if compact else 2
        typer.echo(json.dumps(snap.as_json(), indent=indent))
    else:
        console.print(snap.renderable())


def show(
    db_arg: Path | None,
    db_opt: Path | None,
    run_id: int | None,
    runs: bool,
    fmt: Format,
    limit: int | None,
    watch: bool,
    interval: float,
    verbose: int,
) -> None:
    """Do what ``pipeloom status`` was asked (see `pipeloom_cli.commands.status.status`)."""
    with user_errors(verbose):
        db = _resolve_db(db_arg, db_opt)
        conn = open_history(db)
        try:
            if runs:
                found = list_runs(conn, limit or 20)
                if fmt is Format.json:
                    payload = {"db": str(db), "runs": [r.as_json() for r in found]}
                    typer.echo(json.dumps(payload, indent=2))
                else:
                    console.print(_runs_table(found))
                return
            task_limit = limit if limit is not None or fmt is Format.json else TABLE_TASK_LIMIT
            if watch:
                _watch(conn, db, run_id, task_limit, fmt, interval)
            else:
                _emit(_Snapshot(conn, db, run_id, task_limit), fmt)
        except sqlite3.DatabaseError as exc:  # damaged pages: one line naming the file
            raise describe_error(db, exc) from exc
        finally:
            conn.close()
