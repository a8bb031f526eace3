"""Declarative pipelines: tasks as plain functions, with retries, timeouts and resume.

A `Pipeline` turns ``@pipe.task`` functions mapped over items into `TaskDef`s for the same
engine and writer that `run_pipeline` uses; its worker posts the lifecycle messages, so a task
function only does the work::

    pipe = Pipeline("etl", db="etl.db", workers=8)

    @pipe.task(retries=2, timeout=30, retry_on=(OSError,))
    def load(ctx, path):
        ctx.progress(1, 2, "reading")
        return {"rows": 42}

    pipe.map(load, paths)
    result = pipe.run(resume=True)

Every task gets a stable key (``"load:data/a.csv"``) stored on ``task_runs.task_key``; resuming
a run skips the keys that run finished, so only the failed and the new work runs again.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from rich.console import Console

from pipeloom._text import RESULT_MAX_CHARS
from pipeloom._text import result_text as to_result
from pipeloom.alerts import Alerts, RunEndHook, TaskFailureHook, with_hooks
from pipeloom.db import DEFAULT_DB
from pipeloom.engine import MAX_WORKERS, RunResult
from pipeloom.errors import PipelineError
from pipeloom.executors import Executor
from pipeloom.limits import Limit, make_limit
from pipeloom.options import RunOptions
from pipeloom.pipeline._context import DEFAULT_MAX_OUTPUTS, Context, OutputLimitError
from pipeloom.pipeline._keys import KEY_MAX_CHARS, item_key
from pipeloom.pipeline._retry import TaskTimeoutError
from pipeloom.pipeline._run import run_stages
from pipeloom.pipeline._task import Task
from pipeloom.pipeline._tasks import Stage
from pipeloom.record._registry import Handler, HandlerRegistry
from pipeloom.writer import SchemaFn

__all__ = [
    "DEFAULT_MAX_OUTPUTS",
    "KEY_MAX_CHARS",
    "RESULT_MAX_CHARS",
    "Context",
    "OutputLimitError",
    "Pipeline",
    "PipelineError",
    "Stage",
    "Task",
    "TaskTimeoutError",
    "item_key",
    "to_result",
]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("pipeloom.pipeline")


class Pipeline(HandlerRegistry):
    """A named set of task functions mapped over items, run on the pipeloom engine.

    Args:
        name: stored as ``pipeline_runs.name``; ``resume=True`` picks the latest run of it.
        db: the SQLite file that records every run.
        workers: worker threads; default min(number of tasks, CPU count).
        handlers: domain message type -> ``handler(conn, msgs)``, for ``ctx.emit``.
        schema: ``schema(conn)`` creates the domain tables when the writer starts.
        fail_fast: stop admitting tasks after the first task fails for good.
        grace: seconds the run waits at its end for timed-out task threads to return.
        params: the pipeline's parameters and their defaults (int, float, bool, str, date,
            datetime, Path, or anything JSON-able); a run overrides them with
            ``run(params=...)`` and tasks read them as ``ctx.params`` (`pipeloom.params`).
        seed: seeds the retry jitter, for reproducible waits.
        executor: where tasks run: ``"threads"`` (default), ``"processes"``, ``"async"``,
            ``"dask"`` or an instance from `pipeloom.executors`. With processes or Dask the
            task functions, items and results must pickle.
        options: the writer's settings (`pipeloom.options.RunOptions`): ``synchronous``,
            ``batch_size``, ``lease``, extra ``listeners``, ...
    """

    registration_error = PipelineError

    __pipeloom_pipeline__ = True
    """Marks pipeline objects, so ``pipeloom run file.py:pipe`` can recognise them."""

    def __init__(
        self,
        name: str,
        db: str | Path = DEFAULT_DB,
        workers: int | None = None,
        *,
        handlers: Mapping[type[Any], Handler] | None = None,
        schema: SchemaFn | None = None,
        fail_fast: bool = False,
        grace: float = 2.0,
        params: Mapping[str, Any] | None = None,
        seed: int | None = None,
        executor: str | Executor | None = None,
        options: RunOptions | None = None,
    ) -> None:
        """Create an empty pipeline; add tasks with `task` and work with `map`."""
        if not name or not isinstance(name, str):
            raise PipelineError(f"Pipeline name {name!r}: use a short non-empty string")
        if workers is not None and not _whole(workers, 1, MAX_WORKERS):
            raise PipelineError(
                f"Pipeline {name!r}: workers={workers!r}; use a whole number from 1 to "
                f"{MAX_WORKERS}"
            )
        if not _finite(grace, 0):
            raise PipelineError(f"Pipeline {name!r}: grace={grace!r}; use 0 or more seconds")
        self.name = name
        self.db = db
        self.workers = workers
        self.handlers: dict[type[Any], Handler] = {}
        for msg_type, fn in (handlers or {}).items():
            self.register(msg_type, fn)
        self.schema = schema
        self.fail_fast = fail_fast
        self.grace = grace
        self.params = dict(params or {})
        self.seed = seed
        self.executor = executor
        self.options = options or RunOptions()
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._stages: list[Stage] = []
        self.alerts = Alerts()
        """The hooks added with `on_run_end` and `on_task_failure` (`pipeloom.alerts`)."""
        self.limits: dict[str, Limit] = {}
        """Named resources and what each allows (`limit`, `pipeloom.limits`)."""

    def __repr__(self) -> str:
        """Show the name, database and tasks, which is what a REPL user wants to check."""
        return f"Pipeline({self.name!r}, db={str(self.db)!r}, tasks={list(self.tasks)})"

    @overload
    def task(
        self,
        fn: Callable[[Context, T], R],
        /,
        *,
        name: str | None = ...,
        retries: int = ...,
        timeout: float | None = ...,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
        backoff: float = ...,
        max_backoff: float = ...,
        atomic: bool = ...,
        max_outputs: int = ...,
        cache: bool = ...,
        cache_key: Callable[[Any], Any] | None = ...,
        cache_version: str = ...,
        cache_ttl: float | None = ...,
        uses: str | Sequence[str] = ...,
        rate: str | float | None = ...,
    ) -> Task[T, R]: ...

    @overload
    def task(
        self,
        fn: None = ...,
        /,
        *,
        name: str | None = ...,
        retries: int = ...,
        timeout: float | None = ...,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
        backoff: float = ...,
        max_backoff: float = ...,
        atomic: bool = ...,
        max_outputs: int = ...,
        cache: bool = ...,
        cache_key: Callable[[Any], Any] | None = ...,
        cache_version: str = ...,
        cache_ttl: float | None = ...,
        uses: str | Sequence[str] = ...,
        rate: str | float | None = ...,
    ) -> Callable[[Callable[[Context, T], R]], Task[T, R]]: ...

    def task(
        self,
        fn: Callable[[Context, T], R] | None = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        timeout: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        atomic: bool = True,
        max_outputs: int = DEFAULT_MAX_OUTPUTS,
        cache: bool = False,
        cache_key: Callable[[Any], Any] | None = None,
        cache_version: str = "",
        cache_ttl: float | None = None,
        uses: str | Sequence[str] = (),
        rate: str | float | None = None,
    ) -> Task[T, R] | Callable[[Callable[[Context, T], R]], Task[T, R]]:
        """Make ``fn(ctx, item)`` a task: ``@pipe.task``, ``@pipe.task(...)``, ``pipe.task(fn)``.

        Timeouts run each attempt in its own daemon thread and stop waiting for it when time
        is up. Python threads cannot be killed: the attempt is recorded ``timeout``,
        ``ctx.cancelled`` is set and what it still sends is dropped, but the function keeps
        running until it returns. Long tasks should check ``ctx.cancelled``.

        By default a task is atomic: what it sends with ``ctx.emit`` is held in memory and
        commits in one savepoint with its ``done`` row, so a failed attempt leaves none of its
        domain rows behind. ``atomic=False`` streams each message to the writer instead.

        Args:
            fn: the function, when used without arguments.
            name: the task's name (default: the function's); prefixes its keys.
            retries: extra attempts after a failure that matches ``retry_on``.
            timeout: seconds one attempt may run.
            retry_on: exception types worth retrying; a timeout counts as TimeoutError.
            backoff: seconds before the first retry, doubled for each further one, jittered.
            max_backoff: the longest wait between attempts.
            atomic: commit the task's emitted messages with its success, all or none.
            max_outputs: most messages one atomic attempt may hold in memory.
            cache: skip the task when a done task of an earlier run of this pipeline (in this
                file) had the same key and fingerprint: it is recorded ``done`` with that
                result, and where it came from (``cached_from_run``/``cached_from_task``).
            cache_key: ``cache_key(item)`` makes the fingerprint instead of the item (or the
                upstream result), e.g. `pipeloom.fingerprint.file`.
            cache_version: part of the fingerprint; bump it when the function changes.
            cache_ttl: seconds a cached result stays usable.
            uses: the resources (declared with `limit`) each of its tasks holds while it
                runs: ``"warehouse"`` or ``("warehouse", "api")``.
            rate: starts of this task's calls per time, ``"5/s"`` (a resource of its own,
                ``task:NAME``, used by this task only).

        Raises:
            PipelineError: a setting is out of range or the name is taken.
        """
        retry_types = retry_on if isinstance(retry_on, tuple) else (retry_on,)

        def decorate(func: Callable[[Context, T], R]) -> Task[T, R]:
            task_name = name or getattr(func, "__name__", None) or "task"
            self._check_task(task_name, func, retries, timeout, retry_types, backoff, max_backoff)
            if not isinstance(max_outputs, int) or max_outputs < 1:
                raise PipelineError(
                    f"pipeline {self.name!r}, task {task_name!r}: max_outputs={max_outputs!r}; "
                    "use 1 or more (or atomic=False to stream instead of holding messages)"
                )
            _check_cache(f"pipeline {self.name!r}, task {task_name!r}", cache_key, cache_ttl)
            held = (uses,) if isinstance(uses, str) else tuple(uses)
            own = None if rate is None else make_limit(f"task:{task_name}", rate=rate)
            if own is not None:
                held = (*held, own.name)
            spec = Task(
                func,
                task_name,
                retries,
                timeout,
                retry_types,
                backoff,
                max_backoff,
                atomic=bool(atomic),
                max_outputs=max_outputs,
                cache=bool(cache),
                cache_key=cache_key,
                cache_version=str(cache_version),
                cache_ttl=cache_ttl,
                uses=held,
                rate=own,
            )
            self.tasks[task_name] = spec
            return spec

        return decorate if fn is None else decorate(fn)

    def _check_task(
        self,
        name: str,
        fn: Callable[..., Any],
        retries: int,
        timeout: float | None,
        retry_on: tuple[Any, ...],
        backoff: float,
        max_backoff: float,
    ) -> None:
        where = f"pipeline {self.name!r}, task {name!r}"
        if name in self.tasks and not _same_definition(self.tasks[name].fn, fn):
            raise PipelineError(
                f"{where}: the name is already taken; pass name='...' to @pipe.task"
            )
        if ":" in name:
            raise PipelineError(f"{where}: ':' separates a task from its item in keys; rename it")
        if not isinstance(retries, int) or retries < 0:
            raise PipelineError(f"{where}: retries={retries!r}; use 0 or more")
        if timeout is not None and not (_finite(timeout, 0) and timeout > 0):
            raise PipelineError(
                f"{where}: timeout={timeout!r}; use seconds > 0 (at most "
                f"{threading.TIMEOUT_MAX:.0f}), or None"
            )
        if not (_finite(backoff, 0) and _finite(max_backoff, 0)):
            raise PipelineError(
                f"{where}: backoff={backoff!r}, max_backoff={max_backoff!r}; use finite "
                "seconds >= 0"
            )
        bad = [t for t in retry_on if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad:
            raise PipelineError(f"{where}: retry_on={bad!r}; use exception classes")

    def map(
        self,
        task: Task[T, Any] | Callable[[Context, T], Any],
        items: Iterable[T] | Task[Any, T] | Stage,
        *,
        key: Callable[[T], object] | None = None,
    ) -> Stage:
        """Add one task per item, or one task per result of another task (a chain).

        ``items`` may be a generator: it is read as workers free up. Each task's key is
        ``"<task name>:<item key>"``, the item key coming from ``key(item)`` or from the item
        itself (see `item_key`). Keys should be unique within a run: resume recognises work
        by them.

        ``items`` may instead be a task of this pipeline (every stage that runs it) or a
        `Stage` returned by an earlier ``map``: ``pipe.map(load, parse)`` runs ``load`` on
        each ``parse`` result as soon as that ``parse`` is done, with the same item key
        (``parse:a.csv`` feeds ``load:a.csv``). When a ``parse`` fails, its ``load`` is
        recorded ``upstream_failed``.

        Returns:
            The `Stage`, which later stages may consume.

        Raises:
            PipelineError: ``items`` is a string, not iterable, or a stage of another pipeline.
        """
        spec = task if isinstance(task, Task) else self._plain(task)
        upstream = self._upstream("map", items)
        if upstream is not None:
            if key is not None:
                raise PipelineError(
                    f"pipe.map({spec.name}, {upstream!r}, key=...): a chained stage takes its "
                    "keys from its upstream's; drop key="
                )
            stage = Stage(spec, upstream=upstream)
        else:
            if isinstance(items, str | bytes) or not isinstance(items, Iterable):
                raise PipelineError(
                    f"pipe.map(..., {type(items).__name__}): pass an iterable of items "
                    "(a list, a generator), a task of this pipeline or a Stage; a single "
                    "string would become one task per character"
                )
            stage = Stage(spec, items, key)
        self._stages.append(stage)
        return stage

    def gather(
        self,
        task: Task[list[Any], Any] | Callable[[Context, list[Any]], Any],
        upstream: Task[Any, Any] | Stage,
    ) -> Stage:
        """Add one task that runs after every task of ``upstream``, with all their results.

        ``pipe.gather(summarise, load)`` calls ``summarise(ctx, results)`` once, when every
        ``load`` task has completed, with the list of their results in the order the loads
        were made (a stage's items, in order). The list is held in memory until then: have
        the upstream return small values (counts, paths), not data. When any upstream task
        did not succeed, the fan-in is recorded ``upstream_failed`` instead.

        Returns:
            The `Stage`, which later stages may consume (its one result).

        Raises:
            PipelineError: ``upstream`` is neither a task of this pipeline nor a `Stage`.
        """
        spec = task if isinstance(task, Task) else self._plain(task)
        found = self._upstream("gather", upstream)
        if found is None:
            raise PipelineError(
                f"pipe.gather({spec.name}, {type(upstream).__name__}): pass the task (or the "
                "Stage from pipe.map) whose results it collects"
            )
        stage = Stage(spec, upstream=found, fan_in=True)
        self._stages.append(stage)
        return stage

    def _upstream(self, how: str, ref: object) -> Task[Any, Any] | Stage | None:
        """``ref`` as what a stage consumes (None: it is not a task or a stage)."""
        if isinstance(ref, Stage):
            if not any(s is ref for s in self._stages):
                raise PipelineError(
                    f"pipe.{how}(..., {ref!r}): that stage belongs to another pipeline; "
                    f"consume a stage of {self.name!r}"
                )
            return ref
        if isinstance(ref, Task):
            return ref  # checked at run(): some stage of this pipeline must run it
        return None

    def _plain(self, fn: Callable[[Context, Any], Any]) -> Task[Any, Any]:
        name = getattr(fn, "__name__", None) or "task"
        existing = self.tasks.get(name)
        if existing is not None and existing.fn is fn:
            return existing
        return self.task(fn)

    # Limits (pipeloom.limits): resources shared by the tasks of a run.
    def limit(
        self, name: str, capacity: int | None = None, *, rate: str | float | None = None
    ) -> None:
        """Declare a resource: at most ``capacity`` tasks using it at once, ``rate`` starts.

        ``pipe.limit("warehouse", 2)``; ``pipe.limit("api", rate="10/s")`` (also ``"600/m"``,
        ``"3600/h"``); both at once. Tasks name what they use: ``@pipe.task(uses="api")``.
        Enforced at admission on every executor; other tasks never wait behind it.

        Raises:
            PipelineError: no capacity and no rate, or one out of range.
        """
        if capacity is not None and not _whole(capacity, 1, MAX_WORKERS):
            raise PipelineError(
                f"pipe.limit({name!r}, {capacity!r}): use a whole number of tasks, 1 or more"
            )
        self.limits[name] = make_limit(name, capacity, rate)

    # Alerts (pipeloom.alerts): hooks for runs nobody watches.
    def on_run_end(self, hook: RunEndHook) -> RunEndHook:
        """Call ``hook(summary)`` once after each run is recorded (usable as a decorator).

        ``summary`` is a `pipeloom.alerts.RunSummary` (run id, status, counts, duration,
        first failures, stop reason, the ``pipeloom status`` command). A hook that raises or
        hangs never changes the record or the exit code; see `pipeloom.alerts`.
        """
        self.alerts = with_hooks(self.alerts, on_run_end=[hook])
        return hook

    @overload
    def on_task_failure(self, hook: TaskFailureHook) -> TaskFailureHook: ...
    @overload
    def on_task_failure(
        self, *, every_attempt: bool = False
    ) -> Callable[[TaskFailureHook], TaskFailureHook]: ...
    def on_task_failure(
        self, hook: TaskFailureHook | None = None, *, every_attempt: bool = False
    ) -> TaskFailureHook | Callable[[TaskFailureHook], TaskFailureHook]:
        """Call ``hook(failure)`` once per task that failed for good (after its retries).

        ``every_attempt=True`` also calls it for each failed attempt that is retried
        (``failure.final`` is False then). ``failure`` is a `pipeloom.alerts.TaskFailure`.
        """

        def add(fn: TaskFailureHook) -> TaskFailureHook:
            if every_attempt:
                self.alerts = with_hooks(self.alerts, on_attempt_failure=[fn])
            else:
                self.alerts = with_hooks(self.alerts, on_task_failure=[fn])
            return fn

        return add if hook is None else add(hook)

    def run(
        self,
        *,
        db: str | Path | None = None,
        workers: int | None = None,
        resume: bool | int | str = False,
        progress: bool | None = None,
        summary_hint: str | None = None,
        console: Console | None = None,
        executor: str | Executor | None = None,
        options: RunOptions | None = None,
        wait_for_live: bool | float = False,
        params: Mapping[str, Any] | None = None,
        allow_param_change: bool = False,
        rerun: Sequence[str] = (),
        rerun_from: str | None = None,
        refresh: bool = False,
    ) -> RunResult:
        """Run every mapped task once and record it; returns the engine's `RunResult`.

        Args:
            db: overrides the pipeline's database file.
            workers: overrides the pipeline's worker count.
            resume: False runs everything; True skips the keys the latest run of this pipeline
                finished; a run id skips the keys that run finished. Skipped tasks are
                recorded ``skipped`` with ``{"done_in_run": N}`` as their result. A run of
                this pipeline that is still live (lease not expired) is never resumed: its
                unfinished tasks would run twice.
            progress: True live bars, False nothing, None bars on a terminal only.
            summary_hint: an extra line for the end-of-run summary.
            console: where progress and the summary go.
            executor: overrides the pipeline's executor for this run.
            options: overrides the pipeline's writer settings for this run.
            wait_for_live: with ``resume``, what to do while a run of this pipeline (or the
                run asked for) is still live: False refuses at once, True waits until it
                ends (or its lease expires), a number of seconds waits at most that long.
            params: this run's values of the declared parameters (``Pipeline(params=...)``),
                each converted to its default's type; tasks read them as ``ctx.params``.
            allow_param_change: resume even though the run resumed was made with other
                parameter values (by default that is refused, naming the differences).
            rerun: stage names, task keys or key globs (``"parse"``, ``"parse:AA-*"``): resume
                the latest run (or the run ``resume`` names), but run the matching tasks again
                although it finished them, and every task that consumes them; the rest is
                skipped as on resume. A pattern that matches nothing is an error.
            rerun_from: a stage to run again with everything downstream of it.
            refresh: run ``cache=True`` tasks even when an earlier run holds their result
                (their new fingerprints are still recorded).

        Raises:
            PipelineError: nothing was mapped, a stage consumes a task that is never mapped,
                stages consume each other in a cycle, the run to resume does not exist, a
                run of this pipeline is still live (see ``wait_for_live``), a parameter is
                unknown or its value does not fit, or a resume would change parameters.
            DatabaseError: the database cannot be opened or prepared.
        """
        return run_stages(
            self,
            self._stages,
            db=db,
            workers=workers,
            resume=resume,
            progress=progress,
            summary_hint=summary_hint,
            console=console,
            executor=executor,
            options=options,
            wait_for_live=wait_for_live,
            params=params,
            allow_param_change=allow_param_change,
            rerun=rerun,
            rerun_from=rerun_from,
            refresh=refresh,
        )


def _check_cache(where: str, cache_key: object, cache_ttl: object) -> None:
    if cache_key is not None and not callable(cache_key):
        raise PipelineError(f"{where}: cache_key={cache_key!r}; pass a function of the item")
    if cache_ttl is not None and not (_finite(cache_ttl, 0) and cache_ttl > 0):  # type: ignore[operator]
        raise PipelineError(f"{where}: cache_ttl={cache_ttl!r}; use seconds > 0, or None")


def _whole(value: object, low: int, high: int) -> bool:
    """An int (not a bool) from ``low`` to ``high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _finite(value: object, low: float) -> bool:
    """A real number of seconds from ``low`` to the longest wait Python can do.

    NaN, an infinity or 1e300 seconds would otherwise fail mid-run, in a sleep or a wait.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and low <= value <= threading.TIMEOUT_MAX


def _same_definition(old: Callable[..., Any], new: Callable[..., Any]) -> bool:
    """Tell a re-run of the same ``def`` (a notebook cell, a reload) from a name clash."""
    where = ("__module__", "__qualname__")
    return all(getattr(old, a, None) == getattr(new, a, object()) for a in where)
