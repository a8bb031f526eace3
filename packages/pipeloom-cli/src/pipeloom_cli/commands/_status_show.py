"""What ``pipeloom status`` shows: tables and JSON built from the run database.

Imported only when the command runs (Rich's console and tables take a while to import, and
``pipeloom --help`` should not pay for them).

It opens the file read-only, so it is safe beside a pipeline that is still writing, and
it never creates a file. Every document (a table, a JSON document, each ``--watch`` frame,
one task) is read in one snapshot of the file (`pipeloom.history.HistoryReader`), so its
counts and its rows agree. ``--watch`` re-reads it until the run ends. What the file holds
(names, messages, the path) is shown as ``Text`` through `printable`, never as Rich markup.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeloom._fit import Fit
from pipeloom._text import printable
from pipeloom.db import describe_error
from pipeloom.logs import console
from pipeloom.status import ACTIVE, count_failed
from pipeloom_cli._errors import UsageError, user_errors
from pipeloom_cli._history import (
    AttemptInfo,
    DeadLetterInfo,
    HistoryReader,
    LogInfo,
    RunInfo,
    Snapshot,
    TaskInfo,
    get_run,
    get_task,
    open_history,
)
from pipeloom_cli._options import DEFAULT_DB, TABLE_TASK_LIMIT, Format

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
    if run.not_started:
        grid.add_row("not started", f"{run.not_started} of {run.tasks_total}")
    elif run.not_started is None:
        grid.add_row("not started", "the rest of its source (it had no length)")
    if run.stopped is not None:
        grid.add_row("stopped", Text(run.stopped, style="yellow"))
    if run.note:  # an alert hook that raised or hung, tasks a stop left unstarted
        grid.add_row("note", Text(printable(run.note), style="yellow"))
    rate = "-" if run.throughput is None else f"{run.throughput:,.1f} tasks/s"
    grid.add_row("throughput", rate)
    grid.add_row("workers", "-" if run.workers is None else str(run.workers))
    given = run.params if isinstance(run.params, dict) else {}
    values = ", ".join(f"{k}={v}" for k, v in sorted(given.items()) if k != "resumed_from")
    if values:
        grid.add_row("params", Text(printable(values)))
    grid.add_row("database", Text(printable(db)))
    return grid


def _add_stages(grid: Table, stages: dict[str, dict[str, int]]) -> None:
    """One line per stage under the run's totals (only when the run has stages)."""
    if len(stages) < 2:
        return
    for i, (name, counts) in enumerate(stages.items()):
        finished = sum(n for s, n in counts.items() if s not in ACTIVE)
        text = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        line = f"{printable(name)}: {finished}/{sum(counts.values())} finished: {text}"
        grid.add_row("stages" if i == 0 else "", Text(line))


def _plain_table(title: str) -> Table:
    """A table with a header rule and two-cell gaps: borders cost a 60-column line too much."""
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )


class _Fitted:
    """A table whose columns' widths are set by ``share`` from the width it renders at.

    Rich squeezes the widest columns of a table that does not fit, which would cut a short
    name as much as a long message; ``share`` lets the name give way last instead.
    """

    def __init__(self, table: Table, share: Callable[[Table, int], None]) -> None:
        self.table = table
        self.share = share

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self.share(self.table, options.max_width)
        yield self.table


_STAMP_CELLS = len("2026-01-31 12:00:00")
_DATE_CELLS = len("2026-01-31")


def _tasks_table(tasks: list[TaskInfo], hidden: int, skipped: int) -> RenderableType:
    table = _plain_table("Tasks (failed, running, then done)")
    # Only the name and the message give way on a narrow terminal: a name (often a path) is
    # cut in the middle, a message at its end (`--task ID` shows all of it).
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("name")
    table.add_column("status", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("elapsed", justify="right", no_wrap=True)
    table.add_column("message")
    used = 0
    for task in tasks:
        row = (
            str(task.task_id),
            printable(task.label),
            printable(task.status),
            f"{task.progress:.0%}",
            _seconds(task.elapsed),
        )
        used = max(used, sum(cell_len(cell) for cell in row))
        table.add_row(
            row[0],
            Fit(row[1]),
            _styled(task.status),
            row[3],
            row[4],
            Fit(printable(task.message or ""), middle=False),
        )
    notes = []
    if hidden > 0:
        notes.append(f"... and {hidden} more (--limit to show more)")
    if skipped > 0:
        # A resumed run: hundreds of skipped rows would bury the dozen tasks that ran.
        notes.append(f"{skipped} skipped (done by an earlier run; --format json lists them)")
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    # the five columns before the message at their widest (headers included), 2-cell gaps
    used = max(used, 2 + 4 + 6 + 1 + 7) + 5 * 2

    def share(table: Table, width: int) -> None:
        # The message gets what the longest name leaves, at least a sixth of the line.
        table.columns[-1].max_width = max(10, width // 6, width - used)

    return _Fitted(table, share)


def _runs_table(runs: list[RunInfo]) -> RenderableType:
    table = _plain_table("Recent runs (times in UTC)")
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("name")
    table.add_column("status", no_wrap=True)
    table.add_column("started")
    for name in ("duration", "done", "failed"):
        table.add_column(name, justify="right", no_wrap=True)
    used = 0
    for run in runs:
        row = (
            str(run.id),
            printable(run.shown_status),
            _seconds(run.elapsed),
            f"{run.done}/{run.tasks_total}",  # done includes skipped: a resume's work is done
            str(count_failed(run.counts)),
        )
        used = max(used, sum(cell_len(cell) for cell in row))
        table.add_row(
            row[0], Fit(printable(run.name)), _styled(run.shown_status), _when(run.started_at),
            *row[2:],
        )  # fmt: skip
    noted = [f"run {run.id}: {printable(run.note)}" for run in runs if run.note]
    if noted:
        table.caption = "\n".join(noted)
    # the columns but the name and start at their widest (headers included), 2-cell gaps
    used = max(used, 2 + 6 + 8 + 4 + 6) + 6 * 2
    longest = min(16, max((cell_len(printable(run.name)) for run in runs), default=0))

    def share(table: Table, width: int) -> None:
        # The start wraps onto two lines (date, then time) before the name is cut.
        one_line = width - used >= _STAMP_CELLS + longest
        table.columns[3].max_width = None if one_line else _DATE_CELLS

    return _Fitted(table, share)


class _Snapshot:
    """One document: the run, its stages and its tasks from one snapshot of the file.

    A table leaves ``skipped`` tasks out (counted in a line under it); JSON holds them all,
    last.
    """

    def __init__(
        self, snap: Snapshot, db: Path, run_id: int | None, limit: int | None, fmt: Format
    ) -> None:
        self.db = db
        self.run = get_run(snap, db, run_id)
        self.tasks: list[TaskInfo] = []
        self.hidden = 0
        self.skipped = 0
        self.stages: dict[str, dict[str, int]] = {}
        if self.run is not None:
            self.stages = snap.stages(self.run.id)
            if fmt is Format.table:
                self.skipped = self.run.counts.get("skipped", 0)
            self.tasks = snap.tasks(self.run.id, limit, skipped=not self.skipped)
            shown = len(self.tasks) + self.skipped
            self.hidden = max(0, sum(self.run.counts.values()) - shown)

    @property
    def active(self) -> bool:
        return self.run is not None and self.run.active

    def key(self) -> Any:
        """What changes when the run moves on (to print only changes on a pipe)."""
        return None if self.run is None else _run_key(self.run)

    def renderable(self) -> RenderableType:
        if self.run is None:
            return Text(f"No runs recorded in {printable(self.db)} yet.")
        panel = _run_panel(self.run, self.db)
        _add_stages(panel, self.stages)
        return Group(panel, _tasks_table(self.tasks, self.hidden, self.skipped))

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


def _read(
    reader: HistoryReader, db: Path, run_id: int | None, limit: int | None, fmt: Format
) -> _Snapshot:
    """One document, from one snapshot of the file."""
    with reader.snapshot() as snap:
        return _Snapshot(snap, db, run_id, limit, fmt)


def _watch(
    reader: HistoryReader,
    db: Path,
    run_id: int | None,
    limit: int | None,
    fmt: Format,
    interval: float,
) -> None:
    try:
        if fmt is Format.json:
            _watch_json(reader, db, run_id, limit, interval)
            return
        doc = _read(reader, db, run_id, limit, fmt)
        # Follow the run that was latest when watching began, even if another starts meanwhile.
        run_id = None if doc.run is None else doc.run.id
        if console.is_terminal:
            with Live(doc.renderable(), console=console, auto_refresh=False) as live:
                while doc.active:
                    time.sleep(interval)
                    doc = _read(reader, db, run_id, limit, fmt)
                    live.update(doc.renderable(), refresh=True)
            return
        _emit(doc, fmt, compact=True)
        last = doc.key()
        while doc.active:
            time.sleep(interval)
            doc = _read(reader, db, run_id, limit, fmt)
            if doc.key() != last:
                last = doc.key()
                _emit(doc, fmt, compact=True)
    except KeyboardInterrupt:
        typer.echo("Stopped watching.", err=True)


_BRIEF_RUN_FIELDS = (
    "id",
    "status",
    "stale",
    "counts",
    "finished",
    "tasks_total",
    "elapsed",
    "throughput",
    "finished_at",
    "heartbeat_at",
)
"""The run fields a ``changes`` line carries: what moves while a run goes on."""


def _watch_json(
    reader: HistoryReader, db: Path, run_id: int | None, limit: int | None, interval: float
) -> None:
    """Print a snapshot, then only what changed each tick, then the run as it ended.

    At 20,000 tasks the whole run is megabytes of JSON: printing it every tick would flood a
    pipe. See docs/cli.md for the line format. Each line is read in one snapshot, so its
    counts agree with the rows it carries.
    """
    with reader.snapshot() as snap:
        doc = _Snapshot(snap, db, run_id, limit, Format.json)
        changes = None if doc.run is None else snap.follow(doc.run.id)
    _echo_line({"type": "snapshot", **doc.as_json()})
    run = doc.run
    if run is None or changes is None:
        return
    last = _run_key(run)
    while run.active:
        time.sleep(interval)
        with reader.snapshot() as snap:
            now = get_run(snap, db, run.id)
            tasks = snap.changed(changes)
        assert now is not None  # a run id that was read is never deleted
        run = now
        if tasks or _run_key(run) != last:
            last = _run_key(run)
            brief = {k: v for k, v in run.as_json().items() if k in _BRIEF_RUN_FIELDS}
            _echo_line({"type": "changes", "run": brief, "tasks": [t.as_json() for t in tasks]})
    _echo_line({"type": "end", "run": run.as_json()})


def _run_key(run: RunInfo) -> Any:
    return (run.status, run.stale, run.tasks_total, tuple(sorted(run.counts.items())))


def _echo_line(payload: dict[str, Any]) -> None:
    # flush: a reader on a pipe sees each line when it is printed, not when a buffer fills
    typer.echo(json.dumps(payload, separators=(",", ":")))
    sys.stdout.flush()


def _emit(doc: _Snapshot, fmt: Format, *, compact: bool = False) -> None:
    if fmt is Format.json:
        indent = None if compact else 2
        typer.echo(json.dumps(doc.as_json(), indent=indent))
    else:
        console.print(doc.renderable())


_LOG_STYLES = {"DEBUG": "dim", "WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red"}


def _task_panel(run: RunInfo, task: TaskInfo) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("task", Text(f"{task.task_id} of run {run.id} ({printable(run.name)})"))
    if task.key is not None:
        grid.add_row("key", Text(printable(task.key)))
    if task.key is None or task.name != task.key:
        grid.add_row("name", Text(printable(task.name)))
    grid.add_row("status", _styled(task.status))
    grid.add_row("started", f"{_when(task.started_at)} UTC" if task.started_at else "-")
    grid.add_row("finished", f"{_when(task.finished_at)} UTC" if task.finished_at else "-")
    grid.add_row("elapsed", _seconds(task.elapsed))
    grid.add_row("attempt", str(task.attempt))
    steps = f" (step {task.step}/{task.total})" if task.total else ""
    grid.add_row("progress", f"{task.progress:.0%}{steps}")
    if task.message:
        grid.add_row("message", Text(printable(task.message, newlines=True)))
    if task.result is not None:
        grid.add_row("result", Text(printable(task.result, newlines=True)))
    return grid


def _attempts_table(attempts: list[AttemptInfo]) -> Table:
    table = _plain_table("Attempts before the last (task_attempts)")
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("elapsed", justify="right", no_wrap=True)
    table.add_column("discarded", justify="right", no_wrap=True)
    table.add_column("error")
    for attempt in attempts:
        table.add_row(
            str(attempt.attempt),
            _styled(attempt.status),
            _when(attempt.started_at),
            _seconds(attempt.elapsed),
            str(attempt.discarded),
            Fit(printable(attempt.error_line), middle=False),
        )
    return table


def _logs_table(logs: list[LogInfo]) -> Table:
    table = _plain_table(f"Logs ({len(logs)})")
    table.add_column("time", no_wrap=True)
    # Two attempts often log the same lines: the attempt tells them apart.
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("logger")
    table.add_column("message", overflow="fold")
    for row in logs:
        style = "yellow" if row.dropped else ""
        table.add_row(
            row.created_at[11:23],
            str(row.attempt),
            Text(printable(row.level), style=_LOG_STYLES.get(row.level, "")),
            Fit(printable(row.logger or "")),
            Text(printable(row.message, newlines=True), style=style),
        )
    return table


def _show_task(reader: HistoryReader, db: Path, run_id: int | None, ref: str, fmt: Format) -> None:
    """Print one task in full: its row, its error, its earlier attempts and its logs.

    ``ref`` is a task id, or a key (``load:data/a.csv``), which names the same work in every
    run where ids do not.
    """
    with reader.snapshot() as snap:
        run = get_run(snap, db, run_id)
        if run is None:
            raise UsageError(f"--task {printable(ref)}: {db} holds no runs yet")
        task = get_task(snap, db, run, ref)
        logs = snap.logs(run.id, task.task_id)
        attempts = snap.attempts(run.id, task.task_id)
        letters, letters_total = snap.dead_letters(run.id, task.task_id)
    dropped = sum(row.dropped for row in logs)
    if fmt is Format.json:
        payload = {
            "db": str(db),
            "run": {"id": run.id, "name": run.name, "status": run.shown_status},
            "task": task.as_json(),
            "attempts": [a.as_json() for a in attempts],
            "logs": [row.as_json() for row in logs],
            "logs_dropped": dropped,
            "dead_letters": [d.as_json() for d in letters],
            "dead_letters_total": letters_total,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    parts: list[RenderableType] = [_task_panel(run, task)]
    if task.error:
        error = printable(task.error.rstrip(), newlines=True)
        parts += [Text("\nError", style="bold red"), Text(error)]
    if attempts:
        parts += [Text(""), _attempts_table(attempts)]
    parts += [Text(""), _logs_table(logs) if logs else Text("No logs stored for this task.")]
    if dropped:
        parts.append(
            Text(
                f"{dropped} records dropped (beyond RunOptions.task_log_limit per task)",
                style="yellow",
            )
        )
    if letters:
        parts += [Text(""), _dead_letters_table(letters, letters_total)]
    console.print(Group(*parts))


def _dead_letters_table(letters: list[DeadLetterInfo], total: int) -> Table:
    shown = f"first {len(letters)} of {total}" if total > len(letters) else str(total)
    table = _plain_table(f"Dead letters ({shown}): messages of this task that were not applied")
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("error", overflow="fold")
    for letter in letters:
        table.add_row(
            "" if letter.attempt is None else str(letter.attempt),
            Fit(printable(letter.msg_type)),
            Text(printable(letter.error.strip().splitlines()[-1] if letter.error else "")),
        )
    return table


def show(
    db_arg: Path | None,
    db_opt: Path | None,
    run_id: int | None,
    task_ref: str | None,
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
        reader = open_history(db)
        try:
            if task_ref is not None:
                if runs or watch:
                    extra = "--runs" if runs else "--watch"
                    raise UsageError(
                        f"--task {printable(task_ref)} shows one task once; drop {extra}"
                    )
                _show_task(reader, db, run_id, task_ref, fmt)
                return
            if runs:
                with reader.snapshot() as snap:
                    found = snap.runs(limit or 20)
                if fmt is Format.json:
                    payload = {"db": str(db), "runs": [r.as_json() for r in found]}
                    typer.echo(json.dumps(payload, indent=2))
                else:
                    console.print(_runs_table(found))
                return
            task_limit = limit if limit is not None or fmt is Format.json else TABLE_TASK_LIMIT
            if watch:
                _watch(reader, db, run_id, task_limit, fmt, interval)
            else:
                _emit(_read(reader, db, run_id, task_limit, fmt), fmt)
        except sqlite3.DatabaseError as exc:  # damaged pages: one line naming the file
            raise describe_error(db, exc) from exc
        finally:
            reader.close()
