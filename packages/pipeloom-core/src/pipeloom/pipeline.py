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

import asyncio
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import logging
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Generic, TypeVar, overload

from rich.console import Console

from pipeloom._context import DEFAULT_MAX_OUTPUTS, Context, OutputLimitError
from pipeloom._registry import Handler, HandlerRegistry
from pipeloom._retry import Outcome, TaskTimeoutError, backoff_delay, run_attempt
from pipeloom._text import exc_summary, exc_text, shorten_middle, storable
from pipeloom.db import MEMORY, connect_readonly
from pipeloom.engine import RunResult, TaskQueue, run_pipeline
from pipeloom.errors import PipelineError
from pipeloom.executors import Executor
from pipeloom.executors.processes import attempt_deadline
from pipeloom.messages import (
    MsgTaskAttempt,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    TaskDef,
    utc_now,
)
from pipeloom.options import RunOptions
from pipeloom.schema import check_schema
from pipeloom.writer import SchemaFn

__all__ = [
    "DEFAULT_MAX_OUTPUTS",
    "RESULT_MAX_CHARS",
    "Context",
    "OutputLimitError",
    "Pipeline",
    "PipelineError",
    "Task",
    "TaskTimeoutError",
    "item_key",
    "to_result",
]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("pipeloom.pipeline")

RESULT_MAX_CHARS = 10_000
"""A task's result text longer than this is cut, with a note saying how long it was."""
KEY_MAX_CHARS = 200
"""Longer keys keep a readable prefix and end in a hash of the whole key."""
_NAME_MAX_CHARS = 80
_SUMMARY_CHARS = 500


class _TaskFailedError(Exception):
    """Raised to the engine after a failure is recorded, so ``fail_fast`` can stop the run."""


@dataclass(frozen=True, slots=True)
class Task(Generic[T, R]):
    """A task function with its retry and timeout policy; made by `Pipeline.task`.

    Calling it calls the function, so a task stays testable as a plain function.
    """

    fn: Callable[[Context, T], R]
    """``fn(ctx, item)``: does the work for one item; its return value is the result."""
    name: str
    """Prefix of every key and label of this task's runs."""
    retries: int = 0
    """Extra attempts after the first failure."""
    timeout: float | None = None
    """Seconds one attempt may run; over that it is recorded ``timeout``."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    """Failures worth retrying; a timeout counts as ``TimeoutError``."""
    backoff: float = 0.5
    """Seconds before the first retry; doubles for each further retry (with jitter)."""
    max_backoff: float = 60.0
    """The longest wait between two attempts."""
    atomic: bool = True
    """Hold ``ctx.emit`` messages and commit them with the ``done`` row, all or none.

    False streams each message to the writer as it is emitted: for outputs too large to hold
    in memory, at the price of a failed attempt's messages staying applied.
    """
    max_outputs: int = DEFAULT_MAX_OUTPUTS
    """Most messages one atomic attempt may hold; one more fails it with `OutputLimitError`."""

    def __call__(self, ctx: Context, item: T) -> R:
        """Run the function directly, without retries or timeout (handy in unit tests)."""
        return self.fn(ctx, item)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle as a reference to the module attribute ``@pipe.task`` bound it to.

        A decorated function's module attribute is this `Task`, not the function, so pickle
        could not find the function by its name; worker processes import the module and take
        the task from there instead.
        """
        module = getattr(self.fn, "__module__", None)
        qualname = getattr(self.fn, "__qualname__", "")
        if module and _lookup(sys.modules.get(module), qualname) is self:
            return (_load_task, (module, qualname))
        return (Task, tuple(getattr(self, f.name) for f in dataclasses.fields(self)))


def _lookup(module: object, qualname: str) -> object:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _load_task(module: str, qualname: str) -> Task[Any, Any]:
    """Find a task in its module again (in a worker process)."""
    found = _lookup(importlib.import_module(module), qualname)
    if not isinstance(found, Task):
        raise PipelineError(f"{module}.{qualname} is no longer a pipeloom task")
    return found


@dataclass(slots=True)
class _Stage:
    task: Task[Any, Any]
    items: Iterable[Any]
    key: Callable[[Any], object] | None
    used: bool = False
    """An earlier run read the items (matters for generators, which can be read once)."""


@dataclass(frozen=True, slots=True)
class _Job:
    """What a TaskDef's payload carries from the task generator to the worker."""

    task: Task[Any, Any]
    item: Any = None
    done_in: int | None = None
    """Set when a resumed run already finished this key: the run that did it."""
    problem: str | None = None
    """Set when the task cannot run at all (its key or its items failed)."""


def item_key(item: object, key: Callable[[Any], object] | None = None) -> str:
    """Derive a stable key from an item: the same item gives the same key in every run.

    Strings, numbers and paths are used as they are; lists, tuples and dicts of those as
    compact JSON; other objects by their ``repr``. Keys over `KEY_MAX_CHARS` keep a prefix and
    end in a hash of the whole.

    Args:
        item: the mapped item.
        key: the user's ``key=`` function; its return value is turned into text.

    Raises:
        TypeError: the item's repr holds a memory address, so it would differ in every run.
    """
    text = _plain_key(key(item) if key is not None else item)
    if len(text) > KEY_MAX_CHARS:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        text = f"{text[: KEY_MAX_CHARS - 20]}…#{digest}"
    return text


def _plain_key(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | PurePath):
        return str(value)
    if isinstance(value, list | tuple | dict):
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_leaf)
        except (TypeError, ValueError):
            log.debug("key of %s is not JSON; using its repr", type(value).__name__)
    text = repr(value)
    if " at 0x" in text:
        raise TypeError(
            f"cannot derive a stable key from {text[:80]}: its repr holds a memory address, "
            "which changes every run; pass key=lambda item: ... to pipe.map()"
        )
    return text


def _json_leaf(value: object) -> object:
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a simple key value")


def to_result(value: object) -> str | None:
    """Turn a task's return value into ``task_runs.result`` text.

    None stays None, strings are kept as they are, other values become JSON when they can and
    their ``repr`` otherwise. Text over `RESULT_MAX_CHARS` is cut with a note.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            try:
                text = repr(value)
            except Exception as exc:  # a user __repr__ may raise anything
                reason = exc_summary(exc)
                log.warning(
                    "result of type %s has a failing repr: %s", type(value).__name__, reason
                )
                text = f"<unrepresentable {type(value).__name__}: {reason}>"
    if len(text) > RESULT_MAX_CHARS:
        text = f"{text[:RESULT_MAX_CHARS]}… [result truncated: {len(text)} chars in all]"
    return text


def _label(key: str) -> str:
    # Cut in the middle: a key's end (the file, the page) tells tasks apart as much as its start.
    return shorten_middle(key, _NAME_MAX_CHARS)


class _Previous:
    """Read-only view of the run being resumed: which keys it (or its own source) finished.

    Looked up one key at a time from the task generator, so resuming a run of millions of
    tasks does not load millions of keys into memory.
    """

    def __init__(self, conn: sqlite3.Connection, run_id: int) -> None:
        self.conn = conn
        self.run_id = run_id

    def done_in(self, key: str) -> int | None:
        """Return the run that finished ``key`` (None when it must run again)."""
        try:
            rows = self.conn.execute(
                "SELECT status, result FROM task_runs WHERE run_id = ? AND task_key = ? "
                "AND status IN ('done', 'skipped') LIMIT 1",
                (self.run_id, storable(key)),  # the form the writer stored
            ).fetchall()  # fetchall ends the statement, so no read stays open during the run
        except sqlite3.Error as exc:
            log.warning(
                "resume: cannot look up %r in run %d (%s); running it", key, self.run_id, exc
            )
            return None
        if not rows:
            return None
        status, result = rows[0]
        if status == "skipped":
            return _pointer(result) or self.run_id
        return self.run_id

    def close(self) -> None:
        self.conn.close()


def _pointer(result: str | None) -> int | None:
    """The run a skipped row points to (skipped rows store ``{"done_in_run": N}``)."""
    try:
        data = json.loads(result or "")
    except ValueError:
        return None
    run = data.get("done_in_run") if isinstance(data, dict) else None
    return run if isinstance(run, int) else None


def _open_previous(db: str | Path, name: str, resume: bool | int | str) -> _Previous | None:
    """Find the run to resume before the writer starts (and before it adds a new run).

    Raises:
        PipelineError: ``resume`` names a run that does not exist, or the database is missing
            or in memory.
    """
    if resume is False or resume is None:
        return None
    if isinstance(resume, str):
        resume = True if resume.strip().lower() in ("", "latest", "true") else _run_number(resume)
    if str(db) == MEMORY:
        raise PipelineError(
            f"{db}: an in-memory database keeps no history to resume; use a file for db="
        )
    path = Path(db)
    if not path.is_file():
        if resume is True:
            log.info("resume: %s does not exist yet, so every task runs", path)
            return None
        raise PipelineError(
            f"{path}: no such database, so run {resume} cannot be resumed; check the db path"
        )
    # The same read-only opener as `pipeloom status`: escaped URI, query_only, read-only
    # folders; its errors name the file.
    conn = connect_readonly(path, check_same_thread=False)
    try:
        if not check_schema(conn, str(path)):
            conn.close()
            if resume is True:
                return None
            raise PipelineError(f"{path}: holds no pipeloom runs, so run {resume} cannot resume")
        if resume is True:
            found = conn.execute(
                "SELECT id FROM pipeline_runs WHERE name = ? ORDER BY id DESC LIMIT 1",
                (storable(name),),  # the form the writer stored
            ).fetchall()
            if not found:
                log.info("resume: no earlier run of %r in %s, so every task runs", name, path)
                conn.close()
                return None
            return _Previous(conn, int(found[0][0]))
        found = conn.execute("SELECT name FROM pipeline_runs WHERE id = ?", (resume,)).fetchall()
        if not found:
            last = conn.execute("SELECT max(id) FROM pipeline_runs").fetchone()[0]
            known = f"runs go up to {last}" if last is not None else "it holds no runs yet"
            raise PipelineError(
                f"{path}: has no run {resume} to resume ({known}); "
                f"`pipeloom status {path}` lists them, or pass resume=True for the latest"
            )
        if found[0][0] != name:
            log.warning(
                "resume: run %d of %s was pipeline %r, not %r", resume, path, found[0][0], name
            )
        return _Previous(conn, resume)
    except BaseException:
        conn.close()
        raise


def _run_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PipelineError(
            f"resume={text!r}: pass True (the latest run), a run id such as 3, or False"
        ) from None


class _SizedTasks:
    """The mapped items as TaskDefs, with a length when every item collection has one."""

    def __init__(self, gen: Callable[[], Iterator[TaskDef]], total: int) -> None:
        self._gen = gen
        self._total = total

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[TaskDef]:
        return self._gen()


class _Runner:
    """The worker function of one declarative run: attempts, retries, timeouts, results.

    It pickles (without its locks and threads) so worker processes and Dask workers can run
    it, and has an async path (`run_async`) for the async executor.
    """

    def __init__(self, pipe: Pipeline, fail_fast: bool) -> None:
        self.name = pipe.name
        self.handled = frozenset(pipe.handlers)
        self.seed = pipe.seed
        self.fail_fast = fail_fast
        self._local()

    def _local(self) -> None:
        """State that stays in its process: never pickled, made anew where it is unpickled."""
        self.rng = random.Random(self.seed)
        self.rng_lock = threading.Lock()
        self.abandoned: list[threading.Thread] = []
        self.abandoned_lock = threading.Lock()
        self.logger = logging.getLogger(f"pipeloom.task.{self.name}")

    def __getstate__(self) -> dict[str, Any]:
        """Ship the settings only (locks and threads cannot cross a process)."""
        return {k: getattr(self, k) for k in ("name", "handled", "seed", "fail_fast")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild in a worker process."""
        self.__dict__.update(state)
        self._local()

    def __call__(self, task: TaskDef, q: TaskQueue) -> None:
        job = self._prelude(task, q)
        if job is None:
            return
        attempt = q.first_attempt
        while True:
            started = utc_now()
            outcome, ctx = self._attempt(task, job, q, attempt, started)
            retry = self._settle(task, job, q, attempt, outcome, ctx)
            if retry is None:
                return
            if q.stopping.is_set() or q.stopping.wait(retry.delay):
                self._record_failure(task, q, attempt, outcome, True, retry.discarded)
                return
            self._retrying(task, q, attempt, started, outcome, ctx, retry.discarded)
            attempt += 1

    async def run_async(self, task: TaskDef, q: TaskQueue) -> None:
        """The same as calling the runner, on an event loop: timeouts cancel the coroutine."""
        job = self._prelude(task, q)
        if job is None:
            return
        attempt = q.first_attempt
        while True:
            started = utc_now()
            outcome, ctx = await self._attempt_async(task, job, q, attempt, started)
            retry = self._settle(task, job, q, attempt, outcome, ctx)
            if retry is None:
                return
            if await _wait_async(q.stopping, retry.delay):
                self._record_failure(task, q, attempt, outcome, True, retry.discarded)
                return
            self._retrying(task, q, attempt, started, outcome, ctx, retry.discarded)
            attempt += 1

    def _prelude(self, task: TaskDef, q: TaskQueue) -> _Job | None:
        """Settle a task that needs no attempt (done before, or broken); else its job."""
        job: _Job = task.payload
        if job.done_in is not None:
            # The key rides on the finish, so a later resume recognises this row too.
            q.put(
                MsgTaskFinished(
                    task.task_id,
                    "skipped",
                    utc_now(),
                    result=json.dumps({"done_in_run": job.done_in}),
                    message=f"skipped: done in run {job.done_in}",
                    name=task.name,
                    key=task.key,
                )
            )
            return None
        if job.problem is not None:
            summary = job.problem.strip().splitlines()[-1][:_SUMMARY_CHARS]
            q.put(
                MsgTaskFinished(
                    task.task_id,
                    "error",
                    utc_now(),
                    message=summary,
                    error=job.problem,
                    name=task.name,
                    key=task.key,
                )
            )
            self._maybe_stop(summary)
            return None
        return job

    def _settle(
        self, task: TaskDef, job: _Job, q: TaskQueue, attempt: int, outcome: Outcome, ctx: Context
    ) -> _Retry | None:
        """Record a finished task, or say how long to wait before its next attempt."""
        outputs: tuple[Any, ...] | list[Any] = ()
        if outcome.status == "done":
            try:
                # The held messages ride on the finish: the writer commits them with the
                # done row in one savepoint, or none of them and records the task error.
                outputs = ctx._take_outputs()
            except OutputLimitError as exc:  # caught by the task, which went on
                outcome = Outcome("error", exc=exc, error_text=exc_text(exc))
        if outcome.status == "done":
            q.put(
                MsgTaskFinished(
                    task.task_id,
                    "done",
                    utc_now(),
                    result=to_result(outcome.value),
                    attempt=attempt,
                    name=task.name,
                    outputs=outputs,
                )
            )
            return None
        discarded = ctx._discard()
        self._note_failure(task, job.task, attempt, outcome, discarded)
        if not self._should_retry(job.task, attempt, outcome):
            self._record_failure(task, q, attempt, outcome, False, discarded)
            return None
        with self.rng_lock:
            delay = backoff_delay(attempt, job.task.backoff, job.task.max_backoff, self.rng)
        return _Retry(delay, discarded)

    def _retrying(
        self,
        task: TaskDef,
        q: TaskQueue,
        attempt: int,
        started: str,
        outcome: Outcome,
        ctx: Context,
        discarded: int,
    ) -> None:
        q.put(
            MsgTaskAttempt(
                task.task_id,
                attempt,
                outcome.status,
                outcome.error_text or "",
                started,
                discarded=discarded,
            )
        )
        last_total = ctx._last_total
        if last_total is not None:  # the live bar starts over for the new attempt
            q.put(MsgTaskProgress(task.task_id, 0, last_total))

    def _context(
        self, task: TaskDef, job: _Job, q: TaskQueue, attempt: int, started: str
    ) -> Context:
        q.put(MsgTaskStarted(task.task_id, task.name, started, attempt=attempt, key=task.key))
        return Context(
            task_id=task.task_id,
            name=task.name,
            key=task.key,
            attempt=attempt,
            put=q.put,
            handled=self.handled,
            logger=self.logger,
            atomic=job.task.atomic,
            max_outputs=job.task.max_outputs,
        )

    def _attempt(
        self, task: TaskDef, job: _Job, q: TaskQueue, attempt: int, started: str
    ) -> tuple[Outcome, Context]:
        ctx = self._context(task, job, q, attempt, started)
        spec = job.task
        fn = spec.fn
        call = (
            functools.partial(_run_coroutine, fn, ctx, job.item)
            if inspect.iscoroutinefunction(fn)
            else functools.partial(fn, ctx, job.item)
        )
        timeout = spec.timeout
        # In a worker process the driver kills the process when the attempt runs over, which
        # really stops it; a thread can only be abandoned.
        retry = attempt <= spec.retries and any(
            issubclass(TaskTimeoutError, t) for t in spec.retry_on
        )
        killed_on_timeout = timeout is not None and attempt_deadline(timeout, attempt, retry)
        try:
            outcome = run_attempt(
                call,
                timeout=None if killed_on_timeout else timeout,
                on_timeout=ctx._abandon,
                thread_name=f"pipeloom-task-{task.task_id}-{attempt}",
            )
        finally:
            if killed_on_timeout:
                attempt_deadline(None)
        return outcome, ctx

    async def _attempt_async(
        self, task: TaskDef, job: _Job, q: TaskQueue, attempt: int, started: str
    ) -> tuple[Outcome, Context]:
        ctx = self._context(task, job, q, attempt, started)
        spec = job.task
        if not inspect.iscoroutinefunction(spec.fn):
            # A blocking function must not stall the loop: its attempt runs in a thread.
            call = functools.partial(spec.fn, ctx, job.item)
            outcome = await asyncio.to_thread(
                run_attempt,
                call,
                timeout=spec.timeout,
                on_timeout=ctx._abandon,
                thread_name=f"pipeloom-task-{task.task_id}-{attempt}",
            )
            return outcome, ctx
        try:
            value = await asyncio.wait_for(spec.fn(ctx, job.item), spec.timeout)
        except TimeoutError:
            ctx._abandon()
            timed_out = TaskTimeoutError(
                f"did not finish within {spec.timeout:g} s; the coroutine was cancelled"
            )
            return Outcome("timeout", exc=timed_out, error_text=exc_summary(timed_out)), ctx
        except Exception as exc:
            return Outcome("error", exc=exc, error_text=exc_text(exc)), ctx
        return Outcome("done", value=value), ctx

    def _record_failure(
        self,
        task: TaskDef,
        q: TaskQueue,
        attempt: int,
        outcome: Outcome,
        retry_cut_short: bool,
        discarded: int,
    ) -> None:
        assert outcome.exc is not None
        notes = []
        if retry_cut_short:
            notes.append("not retried: the run is stopping")
        if discarded:
            notes.append(f"{_discarded_text(discarded)} of this attempt discarded")
        note = f" ({'; '.join(notes)})" if notes else ""
        summary = exc_summary(outcome.exc, _SUMMARY_CHARS - len(note)) + note
        q.put(
            MsgTaskFinished(
                task.task_id,
                "timeout" if outcome.status == "timeout" else "error",
                utc_now(),
                message=summary,
                error=outcome.error_text,
                attempt=attempt,
                name=task.name,
            )
        )
        self._maybe_stop(summary)

    def _should_retry(self, spec: Task[Any, Any], attempt: int, outcome: Outcome) -> bool:
        if isinstance(outcome.exc, OutputLimitError):
            return False  # the same work would hold as many messages again
        return attempt <= spec.retries and isinstance(outcome.exc, spec.retry_on)

    def _note_failure(
        self, task: TaskDef, spec: Task[Any, Any], attempt: int, outcome: Outcome, discarded: int
    ) -> None:
        if outcome.thread is not None:
            with self.abandoned_lock:
                self.abandoned = [t for t in self.abandoned if t.is_alive()]
                self.abandoned.append(outcome.thread)
            log.warning(
                "task %s: attempt %d timed out after %g s; its thread cannot be killed and is "
                "left to finish (its result will be ignored)%s",
                task.name,
                attempt,
                spec.timeout,
                f"; {_discarded_text(discarded)} discarded" if discarded else "",
            )
        else:
            log.info(
                "task %s: attempt %d failed: %s%s",
                task.name,
                attempt,
                exc_summary(outcome.exc or Exception()),
                f"; {_discarded_text(discarded)} discarded" if discarded else "",
            )
        if outcome.error_text:  # -vv: the traceback, as stored on the task's row
            log.debug("task %s: attempt %d:\n%s", task.name, attempt, outcome.error_text.rstrip())

    def _maybe_stop(self, summary: str) -> None:
        if self.fail_fast:
            raise _TaskFailedError(summary)

    def wait_for_abandoned(self, grace: float) -> int:
        """Give timed-out threads up to ``grace`` seconds to return; count those still running."""
        deadline = time.monotonic() + grace
        with self.abandoned_lock:
            threads = list(self.abandoned)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning(
                "%d timed-out task thread(s) still running after the %g s grace period (%s); "
                "the run ends without them and they stop when the process exits",
                len(alive),
                grace,
                ", ".join(alive[:5]),
            )
        return len(alive)


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
        params: JSON-able parameters stored on each run row.
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
        db: str | Path = "pipeloom.db",
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
        if workers is not None and workers < 1:
            raise PipelineError(f"Pipeline {name!r}: workers={workers}; use 1 or more")
        if grace < 0:
            raise PipelineError(f"Pipeline {name!r}: grace={grace}; use 0 or more seconds")
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
        self._stages: list[_Stage] = []

    def __repr__(self) -> str:
        """Show the name, database and tasks, which is what a REPL user wants to check."""
        return f"Pipeline({self.name!r}, db={str(self.db)!r}, tasks={list(self.tasks)})"

    @overload
    def task(
        self,
        fn: Callable[[Context, T], R],
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
    ) -> Task[T, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
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
        if timeout is not None and not timeout > 0:
            raise PipelineError(f"{where}: timeout={timeout!r}; use seconds > 0, or None")
        if backoff < 0 or max_backoff < 0:
            raise PipelineError(f"{where}: backoff={backoff}, max_backoff={max_backoff}; use >= 0")
        bad = [t for t in retry_on if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad:
            raise PipelineError(f"{where}: retry_on={bad!r}; use exception classes")

    def map(
        self,
        task: Task[T, Any] | Callable[[Context, T], Any],
        items: Iterable[T],
        *,
        key: Callable[[T], object] | None = None,
    ) -> None:
        """Add one task per item. ``items`` may be a generator: it is read as workers free up.

        Each task's key is ``"<task name>:<item key>"``, the item key coming from ``key(item)``
        or from the item itself (see `item_key`). Keys should be unique within a run: resume
        recognises work by them.

        Raises:
            PipelineError: ``items`` is a string or not iterable.
        """
        if isinstance(items, str | bytes) or not isinstance(items, Iterable):
            raise PipelineError(
                f"pipe.map(..., {type(items).__name__}): pass an iterable of items "
                "(a list, a generator); a single string would become one task per character"
            )
        spec = task if isinstance(task, Task) else self._plain(task)
        self._stages.append(_Stage(spec, items, key))

    def _plain(self, fn: Callable[[Context, Any], Any]) -> Task[Any, Any]:
        name = getattr(fn, "__name__", None) or "task"
        existing = self.tasks.get(name)
        if existing is not None and existing.fn is fn:
            return existing
        return self.task(fn)

    def _task_defs(self, previous: _Previous | None) -> Iterator[TaskDef]:
        task_id = 0
        for stage in self._stages:
            spec = stage.task
            items = iter(stage.items)
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except Exception as exc:
                    # A failing item source becomes a failed task, not a dead worker thread.
                    reason = exc_summary(exc)
                    log.error("pipeline %s: items of %s raised %s", self.name, spec.name, reason)
                    task_id += 1
                    problem = f"reading the items of {spec.name} failed\n" + exc_text(exc)
                    yield TaskDef(
                        task_id, f"{spec.name}: items", payload=_Job(spec, problem=problem)
                    )
                    break
                task_id += 1
                try:
                    key = f"{spec.name}:{item_key(item, stage.key)}"
                except Exception as exc:
                    yield TaskDef(
                        task_id,
                        f"{spec.name}:#{task_id}",
                        payload=_Job(spec, item, problem=exc_text(exc)),
                    )
                    continue
                done_in = previous.done_in(key) if previous is not None else None
                yield TaskDef(task_id, _label(key), payload=_Job(spec, item, done_in), key=key)

    def _tasks(self, previous: _Previous | None) -> Iterable[TaskDef]:
        if all(isinstance(s.items, Sized) for s in self._stages):
            total = sum(len(s.items) for s in self._stages if isinstance(s.items, Sized))
            return _SizedTasks(lambda: self._task_defs(previous), total)
        return self._task_defs(previous)

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
    ) -> RunResult:
        """Run every mapped task once and record it; returns the engine's `RunResult`.

        Args:
            db: overrides the pipeline's database file.
            workers: overrides the pipeline's worker count.
            resume: False runs everything; True skips the keys the latest run of this pipeline
                finished; a run id skips the keys that run finished. Skipped tasks are
                recorded ``skipped`` with ``{"done_in_run": N}`` as their result.
            progress: True live bars, False nothing, None bars on a terminal only.
            summary_hint: an extra line for the end-of-run summary.
            console: where progress and the summary go.
            executor: overrides the pipeline's executor for this run.
            options: overrides the pipeline's writer settings for this run.

        Raises:
            PipelineError: nothing was mapped, or the run to resume does not exist.
            DatabaseError: the database cannot be opened or prepared.
        """
        if not self._stages:
            raise PipelineError(
                f"pipeline {self.name!r} has no work: call pipe.map(task, items) before run()"
            )
        for stage in self._stages:
            if stage.used and iter(stage.items) is stage.items:
                log.warning(
                    "pipeline %s: the items of %s are an iterator an earlier run already read, "
                    "so they may yield nothing now; pass a list, or call pipe.map() again",
                    self.name,
                    stage.task.name,
                )
            stage.used = True
        db_path = self.db if db is None else db
        previous = _open_previous(db_path, self.name, resume)
        params = dict(self.params)
        if previous is not None:
            params["resumed_from"] = previous.run_id
        runner = _Runner(self, self.fail_fast)
        try:
            result = run_pipeline(
                self._tasks(previous),
                db_path,
                worker_fn=runner,
                workers=workers if workers is not None else self.workers,
                handlers=self.handlers,
                schema=self.schema,
                fail_fast=self.fail_fast,
                progress=progress,
                console=console,
                run_name=self.name,
                params=params,
                summary_hint=summary_hint,
                executor=executor if executor is not None else self.executor,
                options=options if options is not None else self.options,
            )
        finally:
            if previous is not None:
                previous.close()
        still_running = runner.wait_for_abandoned(self.grace)
        extra = {
            "resumed_from": previous.run_id if previous is not None else None,
            "abandoned_threads": still_running,
        }
        return dataclasses.replace(result, extra={**result.extra, **extra})


@dataclass(frozen=True, slots=True)
class _Retry:
    """A failed attempt that will be retried: after ``delay`` seconds."""

    delay: float
    discarded: int


async def _wait_async(stopping: threading.Event, delay: float) -> bool:
    """Wait ``delay`` seconds on the loop; True when the run started stopping meanwhile."""
    deadline = time.monotonic() + delay
    while not stopping.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(left, 0.05))
    return True


def _discarded_text(n: int) -> str:
    return f"{n} emitted message{'' if n == 1 else 's'}"


def _run_coroutine(fn: Callable[[Context, Any], Any], ctx: Context, item: Any) -> Any:
    """Run an ``async def`` task on an event loop of its own, in the attempt's thread."""
    return asyncio.run(fn(ctx, item))


def _same_definition(old: Callable[..., Any], new: Callable[..., Any]) -> bool:
    """Tell a re-run of the same ``def`` (a notebook cell, a reload) from a name clash."""
    where = ("__module__", "__qualname__")
    return all(getattr(old, a, None) == getattr(new, a, object()) for a in where)
