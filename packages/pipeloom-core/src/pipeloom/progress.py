"""Live progress fed from what the writer committed.

The overall bar stays after the run; per-task bars exist only for tasks in flight (a few
visible, then "+N more running"), so a run of a million tasks never builds a million bars.
When stdout is not a terminal, a plain line every few seconds replaces the bars.

Task names, messages, the run's title and the database path are user data: they are shown
through `pipeloom._text.printable` and as Rich ``Text`` (columns with ``markup=False``), never
as markup, so ``copy [users] table`` prints as written and an ESC in a message never reaches
the terminal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from pipeloom._env import env_seconds
from pipeloom._fit import Fit
from pipeloom._text import printable, shorten_middle
from pipeloom.logs import console as shared_console
from pipeloom.status import FAILED, STOP_TEXT
from pipeloom.writer import AppliedBatch

log = logging.getLogger("pipeloom")

__all__ = [
    "DEFAULT_VISIBLE_BARS",
    "PROGRESS_EVERY_ENV",
    "LiveDisplay",
    "PlainReporter",
    "make_overall_progress",
    "make_task_progress",
    "plain_interval",
    "preregister_task_bars",
    "render_failures",
    "render_summary",
]

DEFAULT_VISIBLE_BARS = 6
"""Per-task bars shown at once; the rest are counted in "+N more running"."""
TASK_BAR_WIDTH = 30
"""Cells of a per-task bar on a wide terminal; a narrow one gets a fifth of its width."""
MIN_BAR_WIDTH = 10
"""A per-task bar never gets fewer cells than this; the key gives way first."""

FAILED_STATUSES = FAILED
"""Task statuses counted as failed on the bar: `pipeloom.status.FAILED`."""

_OUTCOME = {
    "done": ("✓", "green"),
    "error": ("✗", "red"),
    "cancelled": ("■", "yellow"),
    "interrupted": ("!", "red"),
}


class _FitColumn(ProgressColumn):
    """A task's description (or one of its fields) that gives way before the bar does.

    A long key (``load:/home/me/data/2024/11/.../part-0007.csv``) in a ``TextColumn``
    measures as one unbreakable word and pushes the bar off a 60-column line; here it is cut
    in the middle to the room left, so the bar, the counts and both ends of the key stay.
    The text is shown as written (never markup).
    """

    def __init__(
        self, field: str | None = None, *, style: str = "", middle: bool = True, indent: int = 0
    ) -> None:
        super().__init__()
        self.field = field
        self.style = style
        self.middle = middle
        self.indent = indent

    def render(self, task: Task) -> Fit:
        """Render the description (or ``field``) fitted to its cell."""
        text = task.description if self.field is None else task.fields.get(self.field, "")
        return Fit(str(text), self.style, middle=self.middle, indent=self.indent)


def make_overall_progress(
    console: Console | None = None, *, get_time: Callable[[], float] | None = None
) -> Progress:
    """Build the overall bar: done/total, failed count, elapsed and ETA.

    The description is shown as plain text (not markup): pass it through `printable`.
    """
    return _FittedProgress(
        SpinnerColumn(finished_text="[green]✓"),
        _FitColumn(style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or shared_console,
        auto_refresh=False,
        get_time=get_time,
        share=_overall_shares,
    )


def make_task_progress(
    console: Console | None = None, *, get_time: Callable[[], float] | None = None
) -> Progress:
    """Build the progress used for per-task bars.

    Descriptions and the ``message`` field are shown as plain text (not markup): pass them
    through `printable`.
    """
    return _FittedProgress(
        _FitColumn(style="cyan", indent=2),
        BarColumn(bar_width=TASK_BAR_WIDTH),
        TaskProgressColumn(),
        _FitColumn("message", style="dim", middle=False),
        console=console or shared_console,
        auto_refresh=False,
        get_time=get_time,
        share=_task_shares,
    )


_Shares = Callable[[Table, Console, ConsoleOptions], None]


class _FittedProgress(Progress):
    """A ``Progress`` whose rows share a narrow line by a rule, not by Rich's squeeze.

    Rich squeezes the widest columns of a row that does not fit: a 40-cell bar beside a
    short run name cuts the name, and a long message cuts a task's key as much as itself.
    ``share`` sets the columns' widths each time the rows are drawn, from the width they get.
    """

    def __init__(self, *columns: ProgressColumn, share: _Shares, **kwargs: Any) -> None:
        self._share = share
        super().__init__(*columns, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        """The rows, laid out when Rich knows the width they get."""
        yield _Shared(self.make_tasks_table(self.tasks), self._share)


class _Shared:
    """The rows' table, with its columns' widths set by ``share`` just before it renders."""

    def __init__(self, table: Table, share: _Shares) -> None:
        self.table = table
        self.share = share

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self.share(self.table, console, options)
        yield self.table


def _widest(table: Table, index: int, console: Console, options: ConsoleOptions) -> int:
    """The widest cell of column ``index``, as Rich measures it."""
    return max(
        (Measurement.get(console, options, cell).maximum for cell in table.columns[index].cells),
        default=0,
    )


def _overall_shares(table: Table, console: Console, options: ConsoleOptions) -> None:
    """The bar gives way first (down to a few cells: the counts say it too), then the name."""
    bar = 2  # after the spinner and the name
    others = sum(_widest(table, i, console, options) for i in range(len(table.columns)) if i != bar)
    gaps = len(table.columns) - 1
    table.columns[bar].max_width = max(6, options.max_width - others - gaps)


def _task_shares(table: Table, console: Console, options: ConsoleOptions) -> None:
    """The key comes first: the bar takes a fifth of the line, the message what is left."""
    width = options.max_width
    bar = max(MIN_BAR_WIDTH, min(TASK_BAR_WIDTH, width // 5))
    key = _widest(table, 0, console, options)
    # the key, the bar, "100%" and the three one-cell gaps between the four columns
    table.columns[1].max_width = bar
    table.columns[3].max_width = max(10, width // 6, width - key - bar - 4 - 3)


def preregister_task_bars(progress: Progress, n: int) -> dict[int, TaskID]:
    """Create one visible bar per task, keyed by the task ids 1..n, as pipeloom 0.0.7 did.

    For code that drives its own Rich ``Progress``: pass the map as ``task_bar_map`` to
    `SQLiteWriter` and each bar follows its task's committed progress. Task ids start at 1
    in 0.0.7's examples, so bar ``n`` belongs to the last task. `run_pipeline` does not need
    this: its display adds a bar when a task starts and removes it when the task ends, so a
    run of a million tasks never builds a million bars.
    """
    return {
        task_id: progress.add_task(f"task-{task_id}", total=None, message="")
        for task_id in range(1, n + 1)
    }


class _MoreRunning:
    """Renders "+N more running" lazily, so updating the count costs nothing per message."""

    def __init__(self) -> None:
        self.count = 0

    def __rich__(self) -> RenderableType:
        if self.count <= 0:
            return Text("")
        return Text(f"  +{self.count} more running", style="dim")


class LiveDisplay:
    """A Rich live view, updated by the writer's post-commit listener."""

    def __init__(
        self,
        total: int | None,
        *,
        console: Console | None = None,
        title: str = "Overall",
        max_visible: int = DEFAULT_VISIBLE_BARS,
        refresh_per_second: float = 8.0,
        get_time: Callable[[], float] | None = None,
        counts: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """Prepare the bars; nothing is drawn until the display is entered.

        ``counts`` reads live figures of the layer above (a pipeline's cached tasks) that are
        shown after the title, such as "sales (8 cached)".
        """
        self.console = console or shared_console
        self._title = printable(title)
        self._counts = counts
        self.max_visible = max_visible
        self.overall = make_overall_progress(self.console, get_time=get_time)
        self.tasks = make_task_progress(self.console, get_time=get_time)
        self.overall_id = self.overall.add_task(printable(title), total=total, failed=0)
        self._bars: dict[int, TaskID] = {}
        # Tasks running without a bar: task_id -> (name, step, total, message).
        self._hidden: dict[int, tuple[str, int, int, str]] = {}
        self._more = _MoreRunning()
        self.failed = 0
        self.finished = 0
        self._live = Live(
            Group(self.overall, self.tasks, self._more),
            console=self.console,
            refresh_per_second=refresh_per_second,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveDisplay:
        """Start drawing."""
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Drop per-task bars and leave the overall bar on screen."""
        self.close()

    def set_outcome(self, status: str) -> None:
        """Make the final mark and the bar's colour say how the run ended.

        A failed run must not end on a green tick and a full green bar: done is a green ✓,
        error a red ✗, cancelled a yellow ■ and interrupted a red !.
        """
        mark, style = _OUTCOME.get(status, ("?", "yellow"))
        for column in self.overall.columns:
            if isinstance(column, SpinnerColumn):
                column.finished_text = Text(mark, style=style)
            elif isinstance(column, BarColumn):
                column.complete_style = column.finished_style = style

    def close(self) -> None:
        """Remove every per-task bar, draw once more and stop."""
        for bar in list(self._bars.values()):
            self.tasks.remove_task(bar)
        self._bars.clear()
        self._hidden.clear()
        self._more.count = 0
        self.overall.update(self.overall_id, failed=self.failed)
        self._live.refresh()
        self._live.stop()

    @property
    def visible_bars(self) -> int:
        """How many per-task bars are on screen now."""
        return len(self._bars)

    def __call__(self, applied: AppliedBatch) -> None:
        """Apply one commit's worth of changes to the bars (runs in the writer thread)."""
        # A task that started and finished within this commit was never in flight on screen:
        # giving it a bar only to remove it cost two Rich calls per task (100,000 x 1 tasks
        # ran 30% slower with the display on; the overall bar still counts it below).
        ended = {task_id for task_id, _ in applied.finished} if applied.finished else ()
        for task_id, name in applied.started:
            if task_id in ended or task_id in self._bars or task_id in self._hidden:
                continue
            if len(self._bars) < self.max_visible:
                self._bars[task_id] = self.tasks.add_task(printable(name), total=None, message="")
            else:
                self._hidden[task_id] = (name, 0, 0, "")
        for task_id, (step, total, message) in applied.progress.items():
            bar = self._bars.get(task_id)
            if bar is not None:
                self.tasks.update(
                    bar, completed=step, total=total or None, message=printable(message)
                )
            elif task_id in self._hidden:
                self._hidden[task_id] = (self._hidden[task_id][0], step, total, message)
        if applied.finished:
            for task_id, status in applied.finished:
                bar = self._bars.pop(task_id, None)
                if bar is not None:
                    self.tasks.remove_task(bar)
                else:
                    self._hidden.pop(task_id, None)
                if status in FAILED_STATUSES:
                    self.failed += 1
            self.finished += len(applied.finished)
            self._promote()
            self.overall.update(self.overall_id, advance=len(applied.finished), failed=self.failed)
            if self._counts is not None:
                extra = _counts_text(self._counts())
                description = f"{self._title} ({extra})" if extra else self._title
                self.overall.update(self.overall_id, description=description)
        self._more.count = len(self._hidden)

    def _promote(self) -> None:
        while self._hidden and len(self._bars) < self.max_visible:
            task_id = next(iter(self._hidden))
            name, step, total, message = self._hidden.pop(task_id)
            self._bars[task_id] = self.tasks.add_task(
                printable(name), total=total or None, completed=step, message=printable(message)
            )


PROGRESS_EVERY_ENV = "PIPELOOM_PROGRESS_EVERY"
"""Environment variable: seconds between plain progress lines (default 5; 0.1 to 86,400)."""


def plain_interval(default: float = 5.0) -> float:
    """Seconds between plain progress lines, from `PROGRESS_EVERY_ENV` if set.

    A log shipped from cron may want one line a minute, a test one a second. A value that is
    not a number from 0.1 to 86,400 is ignored with one warning naming it, never raised: the
    run's work never depends on how its progress is printed.
    """
    return env_seconds(PROGRESS_EVERY_ENV, default, 0.1, 86_400)


class PlainReporter:
    """Progress for logs and pipes: one plain line every few seconds, no escape codes."""

    def __init__(
        self,
        total: int | None,
        *,
        console: Console | None = None,
        interval: float = 5.0,
        title: str = "pipeloom",
        clock: Callable[[], float] = time.monotonic,
        counts: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """Start the clock; the first line appears after ``interval`` seconds.

        ``counts``: live figures of the layer above, added to each line ("8 cached").
        """
        self._counts = counts
        self.console = console or shared_console
        self.total = total
        self.interval = interval
        self.title = printable(title)
        self._clock = clock
        self._start = clock()
        self._next = self._start + interval
        self.finished = 0
        self.failed = 0

    def __enter__(self) -> PlainReporter:
        """Nothing to draw up front."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Nothing to clean up; the summary is printed by the engine."""

    def close(self) -> None:
        """Nothing to clean up; present for symmetry with `LiveDisplay`."""

    def line(self) -> str:
        """The progress line as it would be printed now."""
        total = "?" if self.total is None else str(self.total)
        elapsed = self._clock() - self._start
        extra = _counts_text(self._counts()) if self._counts is not None else ""
        return (
            f"{self.title}: {self.finished}/{total} finished, {self.failed} failed, "
            f"{extra + ', ' if extra else ''}{elapsed:.1f}s elapsed"
        )

    def __call__(self, applied: AppliedBatch) -> None:
        """Count finished tasks and print a line when the interval has passed."""
        self.finished += len(applied.finished)
        self.failed += sum(1 for _, s in applied.finished if s in FAILED_STATUSES)
        now = self._clock()
        if now >= self._next:
            self._next = now + self.interval
            # emoji=False: a title is user text (":warning:" stays as written), and Rich's
            # emoji table is not imported into the writer thread mid-run.
            self.console.print(
                self.line(), markup=False, highlight=False, emoji=False, soft_wrap=True
            )


def _counts_text(counts: Mapping[str, int]) -> str:
    """``{"cached": 8}`` as "8 cached"; figures at 0 are left out."""
    return ", ".join(f"{n} {printable(name)}" for name, n in counts.items() if n)


def render_summary(
    counts: Mapping[str, int],
    *,
    elapsed: float,
    messages: int,
    db_path: str,
    run_id: int | None,
    hint: str | None = None,
    not_started: int | None = 0,
    stopped: str | None = None,
    extra: Mapping[str, int] | None = None,
) -> Table:
    """Build the end-of-run summary table (statuses, elapsed, throughput, where it is).

    Every cell is a ``Text``, never markup: a path such as ``runs[/2024]/x.db`` is printed as
    written instead of raising after the run was recorded, and printing it never loads Rich's
    emoji table (27 ms of import, once per process, on every run's clock).
    """
    table = Table(
        title=Text(f"pipeloom run {run_id}" if run_id is not None else "pipeloom run"),
        show_header=False,
    )
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    styles = {"done": "green", "error": "red", "timeout": "red", "cancelled": "yellow"}
    for status in ("done", "error", "cancelled"):
        table.add_row(Text(status), Text(str(counts.get(status, 0)), style=styles[status]))
    for status, n in sorted(counts.items()):
        if status not in ("done", "error", "cancelled"):
            table.add_row(Text(printable(status)), Text(str(n), style=styles.get(status, "white")))
    for name, n in (extra or {}).items():
        if n:  # of the done above, e.g. cached: taken from an earlier run, not run again
            table.add_row(Text(f"  of which {printable(name)}"), Text(str(n), style="cyan"))
    if stopped is not None:
        table.add_row(Text("stopped"), Text(STOP_TEXT.get(stopped, stopped), style="yellow"))
    if not_started is None:
        table.add_row(Text("not started"), Text("the rest of the source", style="yellow"))
    elif not_started:
        table.add_row(Text("not started"), Text(str(not_started), style="yellow"))
    table.add_row(Text("elapsed"), Text(f"{elapsed:.2f}s"))
    rate = messages / elapsed if elapsed > 0 else 0.0
    table.add_row(Text("messages/s"), Text(f"{rate:,.0f}"))
    table.add_row(Text("database"), Text(printable(db_path)))
    if hint:
        table.add_row(Text("browse"), Text(printable(hint)))
    return table


def render_failures(
    failures: list[tuple[int, str, str]], *, total: int, db_path: str, run_id: int | None
) -> RenderableType:
    """Name the first failed tasks and their errors, and where to read the rest.

    Shown under the summary at every verbosity: "2 failed" alone leaves a user nowhere.
    Print it with ``no_wrap=True, overflow="ellipsis"`` to keep one line per task. A task's
    name takes at most a third of the line (cut in the middle), so its error still shows on
    a narrow terminal.
    """
    return _Failures(failures, total, db_path, run_id)


class _Failures:
    """`render_failures`' lines, laid out for the width they are printed at."""

    def __init__(
        self, failures: list[tuple[int, str, str]], total: int, db_path: str, run_id: int | None
    ) -> None:
        self.failures = failures
        self.total = total
        self.db_path = db_path
        self.run_id = run_id

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = max(16, min(40, options.max_width // 3))
        text = Text()
        for task_id, name, message in self.failures:
            text.append("  ✗ ", style="red")
            text.append(shorten_middle(printable(name), room), style="bold")
            text.append(f" (task {task_id}): ")
            text.append(printable(message)[:300])  # the console cuts it at its width
            text.append("\n")
        if self.total > len(self.failures):
            text.append(f"  ... and {self.total - len(self.failures)} more\n", style="dim")
        run = f" --run {self.run_id}" if self.run_id is not None else ""
        where = f"pipeloom status {self.db_path}{run}"
        if self.failures:
            text.append("  one task: ", style="dim")
            text.append(printable(f"{where} --task {self.failures[0][0]}"))
            text.append("\n")
        text.append("  details: ", style="dim")
        text.append(printable(where))
        yield text
