"""Running tasks concurrently and feeding the single writer.

`run_pipeline` checks the call, starts the writer, the executor and the progress display, and
waits for the run to end. Admission lives in `pipeloom._admission`: it takes tasks from the
(possibly endless) task source one at a time, at most ``workers`` in flight, so memory does
not grow with the number of tasks. Each task is submitted to an
`~pipeloom.executors.Executor`, which reports its completion back; the completion frees the
slot for the next task. Stop signals live in `pipeloom._stopping`. See
docs/architecture.md for the journey.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeloom._admission import FollowUp, Run, check_ids
from pipeloom._compat import DEFAULT_WORKER, argument_order
from pipeloom._stopping import InterruptHandler
from pipeloom._text import exc_summary
from pipeloom.alerts import start as start_alerts
from pipeloom.db import DEFAULT_DB, Synchronous
from pipeloom.errors import (
    DatabaseError,
    ExecutorFailedError,
    InvalidArgumentError,
    PipelineError,
    TaskSourceError,
    WriterFailedError,
)
from pipeloom.executors import Executor, TaskQueue, ThreadExecutor, WorkerFn, resolve_executor
from pipeloom.executors._parent import importing_main_script
from pipeloom.limits import NOT_RUN, Gate, Limit, make_limit
from pipeloom.logs import console as shared_console
from pipeloom.messages import SENTINEL
from pipeloom.options import RunOptions, check_settings
from pipeloom.progress import (
    LiveDisplay,
    PlainReporter,
    plain_interval,
    render_failures,
    render_summary,
)
from pipeloom.queue import DEFAULT_MAXSIZE, MessageQueue
from pipeloom.result import RunResult
from pipeloom.retention import Retention
from pipeloom.status import decide_run_status
from pipeloom.tasklogs import DEFAULT_TASK_LOG_LIMIT
from pipeloom.writer import Handler, Listener, SchemaFn, SQLiteWriter

__all__ = [
    "Executor",
    "FollowUp",
    "RunResult",
    "TaskQueue",
    "TaskSourceError",
    "ThreadExecutor",
    "WorkerFn",
    "run_pipeline",
]

log = logging.getLogger("pipeloom.engine")
_GRACE = 1.0
"""Seconds to let workers wind down after the writer or executor failed before ending anyway."""


_DEFAULTS = RunOptions()


MAX_WORKERS = 10_000
"""Most tasks in flight at once: beyond it, threads and processes cannot start anyway."""


def _check_arguments(
    pool: Executor, workers: object, total: int | None, follows: bool, **settings: Any
) -> int:
    """Refuse a setting no run could use, before anything starts; return the worker count.

    ``workers`` beyond the number of tasks are never started (DESIGN: min(tasks, CPUs) by
    default; ``-w 1000000`` for 5 tasks runs them on 5). Stages add tasks as they go, so
    with ``follows`` the count is not capped by the source's length.

    Raises:
        InvalidArgumentError: naming the argument, the value and what it takes.
    """
    check_settings("run_pipeline", **settings)
    if workers is None:
        return pool.default_workers(total, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise InvalidArgumentError(
            f"run_pipeline(workers={workers!r}): use a whole number from 1 to {MAX_WORKERS}"
        )
    if total is not None and not follows:
        return max(1, min(workers, total))
    return workers


def run_pipeline(
    tasks: Iterable[Any],
    db_path: str | Path = DEFAULT_DB,
    *,
    worker_fn: WorkerFn | None = None,
    workers: int | None = None,
    wal: bool = True,
    store_task_status: bool = True,
    handlers: Mapping[type[Any], Handler] | None = None,
    schema: SchemaFn | None = None,
    fail_fast: bool = False,
    progress: bool | None = None,
    console: Console | None = None,
    run_name: str = "pipeline",
    params: Mapping[str, Any] | None = None,
    request: Mapping[str, Any] | None = None,
    extra_counts: Callable[[], Mapping[str, int]] | None = None,
    synchronous: Synchronous = "NORMAL",
    batch_size: int | None = None,
    commit_interval: float | None = None,
    queue_size: int = DEFAULT_MAXSIZE,
    listeners: Iterable[Listener] = (),
    executor: str | Executor | None = None,
    summary_hint: str | None = None,
    handle_signals: bool = True,
    lease: float | None = None,
    task_log_limit: int = DEFAULT_TASK_LOG_LIMIT,
    options: RunOptions | None = None,
    follow_up: FollowUp | None = None,
    limits: Iterable[Limit] | Mapping[str, Limit] | None = None,
    uses: Callable[[Any], str | Iterable[str] | None] | None = None,
) -> RunResult:
    """Run ``worker_fn(task, msg_q)`` for every task, persisting through one writer thread.

    0.0.7's order, ``run_pipeline(db_path, tasks, ...)``, also works (`pipeloom._compat`).

    Args:
        tasks: the task source: a list, or any iterable (a generator may be endless); each
            task is handed to ``worker_fn``.
        db_path: the run database; created when missing, ``":memory:"`` for a throwaway run.
        worker_fn: does one task; sends Started/Progress/Finished on ``msg_q`` (default:
            `pipeloom.demo.demo_worker`, which simulates work, as in 0.0.7). If it raises,
            the task is recorded as ``error`` with the traceback; if it returns without a
            Finished message, the task is recorded ``done``. A task without a ``task_id``
            attribute is recorded under its 1-based position in the source.
        workers: tasks in flight at once, 1 to `MAX_WORKERS`; default min(number of tasks,
            CPU count). More than the tasks of a sized source are never started.
        wal: write-ahead logging (readers never block the writer).
        store_task_status: False records nothing of pipeloom's own, only user handlers.
        handlers: user message type -> ``handler(conn, msgs)`` applied in batches.
        schema: ``schema(conn)`` creates user tables when the writer starts.
        fail_fast: stop admitting tasks after the first failure.
        progress: True live bars, False nothing, None (default) bars on a terminal and plain
            lines otherwise.
        console: where progress and the summary go (the shared console by default).
        run_name: stored on the ``pipeline_runs`` row.
        params: JSON-able parameters stored on the run row.
        request: what the run was asked beyond its parameters (``Pipeline.run`` records its
            rerun patterns and forced parameter changes), JSON on the run row.
        extra_counts: live figures of the layer above, shown after the bar's title, on the plain
            progress lines and in the summary (``Pipeline.run`` passes ``{"cached": n}``).
        synchronous: NORMAL or FULL (fsync every commit; survives power loss).
        batch_size: most messages per transaction.
        commit_interval: longest a lone message waits before its commit (seconds).
        queue_size: messages that may wait for the writer before workers pause (a finish
            carrying a task's held rows counts one more per row, until they are applied).
        listeners: extra post-commit listeners.
        executor: where tasks run: ``"threads"`` (default) or an `Executor` instance.
        summary_hint: an extra line for the summary (the CLI's "browse with" command).
        handle_signals: on the main thread, turn Ctrl-C, SIGTERM and SIGHUP into a graceful
            stop (SIGTERM and SIGHUP give running tasks `stop_grace` seconds); a second
            signal abandons the tasks in flight, a third raises `Interrupted` (a
            KeyboardInterrupt).
        lease: seconds after its last heartbeat that readers call the run stale (the writer
            beats every lease/3 seconds; default `pipeloom.lease.DEFAULT_LEASE_S`).
        task_log_limit: log records stored per task in ``task_logs`` (records logged inside
            a task: ``ctx.log`` and the user's own ``logging``); the rest are counted.
        options: the writer's and the queue's settings as one `RunOptions` (the same object
            a `Pipeline` takes), instead of ``wal``, ``synchronous``, ``batch_size``,
            ``commit_interval``, ``queue_size``, ``lease``, ``listeners`` and
            ``task_log_limit`` one by one; a setting may come one way or the other, not both.
        follow_up: ``follow_up(task, returned)`` is called as each task completes, with what
            ``worker_fn`` returned (None when it raised or never ran); the tasks it returns
            are admitted before any further task from the source. `pipeloom.Pipeline`
            stages use it.
        limits: named resources (`pipeloom.limits.Limit`, e.g. ``Limit("warehouse", 2)``,
            ``make_limit("api", rate="10/s")``): a task that uses a full resource is held
            back at admission while the run takes the next one (docs/operating.md).
        uses: ``uses(task)``: the names of the resources ``task`` holds while it runs
            (``"api"``, a list, or nothing); required with ``limits``.

    Returns:
        A `RunResult`; Ctrl-C gives ``status="cancelled"`` rather than an exception. Tasks
        never started after a stop get no row; `RunResult.not_started` counts them when the
        source has a length.

    Raises:
        InvalidArgumentError: ``workers``, ``batch_size``, ``commit_interval``,
            ``queue_size``, ``lease`` or ``task_log_limit`` is one no run could use (0, a
            negative, NaN, an infinity, more than `MAX_WORKERS` workers).
        TaskSourceError: a task list holds duplicate or non-integer task ids.
        PipelineError: ``limits`` without ``uses``, or a limit out of range.
        DatabaseError: the database cannot be opened or prepared.
        WriterFailedError: the writer stopped mid-run (disk full, file removed); what it
            committed before stays.
        ExecutorFailedError: the executor could not start (the run is recorded ``error``).
    """
    tasks, db_path = argument_order(tasks, db_path)
    script = importing_main_script()
    if script is not None:  # before the file is touched: no run row from a worker's import
        raise PipelineError(
            f"{script} starts a run when it is imported, and a worker process imports it to "
            'find the task functions: put the run under `if __name__ == "__main__":`'
        )
    if options is not None:
        given = {
            "wal": wal,
            "synchronous": synchronous,
            "batch_size": batch_size,
            "commit_interval": commit_interval,
            "queue_size": queue_size,
            "lease": lease,
            "listeners": tuple(listeners),
            "task_log_limit": task_log_limit,
        }
        both = [name for name, value in given.items() if value != getattr(_DEFAULTS, name)]
        if both:
            raise TypeError(
                f"run_pipeline got {', '.join(both)} both as keyword(s) and in options=; "
                "pass each setting one way"
            )
        wal, synchronous, batch_size = options.wal, options.synchronous, options.batch_size
        commit_interval, queue_size = options.commit_interval, options.queue_size
        lease, listeners = options.lease, options.listeners
        task_log_limit = options.task_log_limit
    if worker_fn is None:
        worker_fn = DEFAULT_WORKER
    if isinstance(tasks, list | tuple):
        check_ids(tasks)
    total = len(tasks) if isinstance(tasks, Sized) else None
    checked = isinstance(tasks, list | tuple | range)
    follows = follow_up is not None  # tasks beyond the source's: no cap on workers by its size
    gate = _gate(limits, uses)
    if gate is not None:  # limits: the gate admits, its hook frees (pipeloom.limits)
        tasks, follow_up, checked = gate.wrap(tasks), gate.follow_up(follow_up), False
    elif follow_up is not None:
        follow_up = _ran_or_none(follow_up)
    pool = resolve_executor(executor)
    workers = _check_arguments(
        pool,
        workers,
        total,
        follows,
        synchronous=synchronous,
        batch_size=batch_size,
        commit_interval=commit_interval,
        queue_size=queue_size,
        lease=lease,
        task_log_limit=task_log_limit,
    )
    out = console or shared_console
    if progress is None:
        progress = out.is_terminal
        plain = not progress
    else:
        plain = False
    display: LiveDisplay | PlainReporter | None = None
    if progress:
        display = LiveDisplay(total, console=out, title=run_name, counts=extra_counts)
    elif plain:
        display = PlainReporter(
            total, console=out, title=run_name, counts=extra_counts, interval=plain_interval()
        )

    # Running unattended: hooks (pipeloom.alerts) and retention (pipeloom.retention).
    alerts = start_alerts(options.alerts if options else None, str(db_path), run_name)
    if alerts is not None:
        listeners = (*listeners, alerts)
    if options is not None and (options.keep_runs or options.keep_days is not None):
        retention_policy = Retention(options.keep_runs, options.keep_days, run_name)
    else:
        retention_policy = None

    q = MessageQueue(queue_size)
    writer_kwargs: dict[str, Any] = {}
    if batch_size is not None:
        writer_kwargs["batch_size"] = batch_size
    if commit_interval is not None:
        writer_kwargs["commit_interval"] = commit_interval
    writer = SQLiteWriter(
        db_path,
        q,
        wal=wal,
        store_task_status=store_task_status,
        handlers=handlers,
        schema=schema,
        listeners=[*([display] if display is not None else []), *listeners],
        run_name=run_name,
        workers=workers,
        tasks_total=total,
        params=params,
        request=request,
        synchronous=synchronous,
        lease=lease,
        task_log_limit=task_log_limit,
        retention=retention_policy,
        **writer_kwargs,
    )
    started = time.perf_counter()
    writer.start()
    writer.ready.wait()
    if alerts is not None:
        alerts.bind(writer.run_id)
    if writer.error is not None:
        if alerts is not None:
            alerts.abandon()
        writer.join()
        if isinstance(writer.error, DatabaseError):
            raise writer.error
        raise DatabaseError(f"{db_path}: {writer.error}") from writer.error

    run = Run(iter(tasks), q, pool, fail_fast, total, follow_up, checked)
    interrupts = InterruptHandler(run) if handle_signals else None
    start_error: BaseException | None = None
    with contextlib.ExitStack() as stack:
        if interrupts is not None:
            stack.enter_context(interrupts)
        if display is not None:
            stack.enter_context(display)
        if gate is not None:
            stack.callback(gate.close)  # a slot waiting on a resource returns
        try:
            pool.start(workers, worker_fn, q, run)
        except Exception as exc:
            start_error = exc
            run.executor_failed(exc)
            run.idle.set()
        if start_error is None:
            # Tasks queued ahead in the executor (processes) begin later than admitted, which
            # a resource limit cannot allow (see Executor.tasks_ahead).
            run.begin(workers + (pool.tasks_ahead() if gate is None else 0))
            _wait(run, writer, interrupts)
            run.close()
            # A threads executor's worker may be the one left waiting in the source's next().
            inline_stuck = run.cut_short and getattr(pool, "admits_inline", False)
            pool.shutdown(0.0 if run.abandoned or inline_stuck else None)
        end = run.end_message()
        if writer.error is None:
            q.put_nowait(end)  # the writer records it on the run row
            q.put_nowait(SENTINEL)
        writer.join()
        q.fail(WriterFailedError("the run has ended; late messages are not stored"))
        # Without pipeloom's tables the writer kept no rows to decide from; the same rule
        # applies to what it counted as it committed.
        status = writer.run_status or decide_run_status(
            writer.final_counts or writer.status_counts,
            taken=end.taken,
            stop="interrupted" if writer.error is not None else end.stop,
            source_failed=end.error is not None,
        )
        if isinstance(display, LiveDisplay):
            display.set_outcome(status)
    elapsed = time.perf_counter() - started
    if alerts is not None and (writer.error is not None or start_error is not None):
        alerts.abandon()
    if writer.error is not None:
        raise WriterFailedError(
            f"{db_path}: the writer stopped, so the run was aborted ({writer.error}); "
            "rows committed before that are kept in the file the writer held"
        ) from writer.error
    if start_error is not None:
        raise ExecutorFailedError(
            f"executor {type(pool).__name__} could not start ({exc_summary(start_error)}); "
            f"the run {writer.run_id} is recorded as error in {db_path}",
            end.cause or "executor_failed",
        ) from start_error
    counts = dict(writer.final_counts or writer.status_counts)
    result = RunResult(
        run_id=writer.run_id,
        status=status,
        counts=counts,
        failed_task_ids=list(writer.failed_task_ids),
        elapsed=elapsed,
        db_path=str(db_path),
        messages=writer.messages_applied + writer.messages_dead,
        dead_letters=writer.messages_dead,
        error=run.error.split("\n\n", 1)[0] if run.error else None,
        not_started=end.not_started,
        stop_reason=end.cause,
        planned=total,
    )
    if display is not None:
        out.print(
            render_summary(
                counts,
                elapsed=elapsed,
                messages=result.messages,
                db_path=str(db_path),
                run_id=result.run_id,
                hint=summary_hint,
                not_started=result.not_started,
                stopped=result.stop_reason,
                extra=extra_counts() if extra_counts is not None else None,
            )
        )
        if writer.failed_sample:
            out.print(
                render_failures(
                    writer.failed_sample,
                    total=len(result.failed_task_ids),
                    db_path=str(db_path),
                    run_id=result.run_id,
                ),
                no_wrap=True,  # one line per failed task, cut to the terminal's width
                overflow="ellipsis",
            )
    if alerts is not None:  # after the record is closed; never changes the result
        alerts.finish(result, writer.failed_sample)
    return result


def _gate(
    limits: Iterable[Limit] | Mapping[str, Limit] | None,
    uses: Callable[[Any], str | Iterable[str] | None] | None,
) -> Gate | None:
    """The run's admission gate for ``limits``, or None without any."""
    if limits is None:
        return None
    given = list(limits.values() if isinstance(limits, Mapping) else limits)
    if not given:
        return None
    if uses is None:
        raise PipelineError(
            "run_pipeline(limits=...): pass uses=, a function naming the resources a task "
            "holds (e.g. uses=lambda task: task.payload['uses']); without it nothing is limited"
        )
    checked = {limit.name: make_limit(limit.name, limit.capacity, limit.rate) for limit in given}
    uses_of = uses

    def names(task: Any) -> tuple[str, ...]:
        got = uses_of(task)
        found = (got,) if isinstance(got, str) else tuple(got or ())
        unknown = [name for name in found if name not in checked]
        if unknown:
            raise PipelineError(
                f"task {getattr(task, 'task_id', task)!r} uses {unknown[0]!r}, which no limit "
                f"declares (limits: {', '.join(sorted(checked))}); add Limit({unknown[0]!r}, 2)"
            )
        return found

    return Gate(checked, names)


def _ran_or_none(follow_up: FollowUp) -> FollowUp:
    """``follow_up`` seeing None, as documented, for a task that never ran."""

    def hook(task: Any, returned: Any) -> Iterable[Any]:
        return follow_up(task, None if returned is NOT_RUN else returned)

    return hook


def _wait(run: Run, writer: SQLiteWriter, interrupts: InterruptHandler | None) -> None:
    """Wait for the run's slots to drain, or for a reason to stop waiting."""
    failed_at: float | None = None
    while not run.idle.wait(0.1):
        if writer.error is not None or run.executor_broken:
            if writer.error is not None:
                run.stop("interrupted", "writer_failed")
            else:
                run.stop("cancelled", "executor_failed")
            # Nothing more can be stored (or run): workers blocked on the queue wake at once,
            # but a task deep in its own work may take hours; do not wait for it.
            if failed_at is None:
                failed_at = time.monotonic()
            elif time.monotonic() - failed_at > _GRACE:
                run.abandon("abandoned: the run could not go on")
                run.executor.cancel()
                return
        why = interrupts.abandon_why() if interrupts is not None else None
        if why is not None:
            n = run.abandon(why)
            run.executor.cancel()
            log.warning("%s: abandoned %d running task(s)", why, n)
            return
        if run.stopping.is_set() and run.nothing_running():
            # Stopped with nothing in flight, while a slot still waits in the source's
            # next(): the run is over now, not when the source next yields.
            run.cut_short = True
            return
