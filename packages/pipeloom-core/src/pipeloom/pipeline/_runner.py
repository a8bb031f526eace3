"""The worker function of a declarative run: attempts, retries, timeouts and results.

`Runner` is what `Pipeline.run` hands the engine as ``worker_fn``: for each task it posts the
lifecycle messages, runs attempts (in a thread with a timeout, or on the event loop), waits
out the backoff between them and records the final status, result and error.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeloom._text import SUMMARY_CHARS, exc_summary, exc_text, result_text
from pipeloom.executors import TaskQueue
from pipeloom.executors._deadline import attempt_deadline
from pipeloom.messages import (
    MsgTaskAttempt,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    TaskDef,
    utc_now,
)
from pipeloom.pipeline._cache import MsgCacheNote
from pipeloom.pipeline._context import Context, OutputLimitError
from pipeloom.pipeline._retry import Outcome, TaskTimeoutError, backoff_delay, run_attempt
from pipeloom.pipeline._tasks import Handoff, Job
from pipeloom.tasklogs import within_attempt

if TYPE_CHECKING:
    from pipeloom.pipeline import Pipeline
    from pipeloom.pipeline._task import Task

__all__ = ["Runner"]

log = logging.getLogger("pipeloom.pipeline")


class _TaskFailedError(Exception):
    """Raised to the engine after a failure is recorded, so ``fail_fast`` can stop the run."""


class Runner:
    """The worker function of one declarative run: attempts, retries, timeouts, results.

    It pickles (without its locks and threads) so worker processes and Dask workers can run
    it, and has an async path (`run_async`) for the async executor.
    """

    def __init__(
        self,
        pipe: Pipeline,
        fail_fast: bool,
        params: Mapping[str, Any] | None = None,
        state: Mapping[str, str] | None = None,
    ) -> None:
        self.name = pipe.name
        self.handled = frozenset(pipe.handlers)
        self.seed = pipe.seed
        self.fail_fast = fail_fast
        self.params = dict(params or {})
        """The run's parameters, handed to every task as ``ctx.params``."""
        self.state = dict(state or {})
        """The pipeline's state as committed when the run began (key -> JSON text)."""
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
        keys = ("name", "handled", "seed", "fail_fast", "params", "state")
        return {k: getattr(self, k) for k in keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild in a worker process."""
        self.__dict__.update(state)
        self._local()

    def __call__(self, task: TaskDef, q: TaskQueue) -> Handoff | None:
        """Run one task to its end; a `Handoff` of its result when other stages consume it."""
        job = self._prelude(task, q)
        if job is None:
            return None
        attempt = q.first_attempt
        while True:
            started = utc_now()
            outcome, ctx = self._attempt(task, job, q, attempt, started)
            retry = self._settle(task, job, q, attempt, outcome, ctx)
            if not isinstance(retry, _Retry):
                return retry
            if q.stopping.is_set() or q.stopping.wait(retry.delay):
                self._record_failure(task, q, attempt, outcome, True, retry.discarded)
                return None
            self._retrying(task, q, attempt, started, outcome, ctx, retry.discarded)
            attempt += 1

    async def run_async(self, task: TaskDef, q: TaskQueue) -> Handoff | None:
        """The same as calling the runner, on an event loop: timeouts cancel the coroutine."""
        job = self._prelude(task, q)
        if job is None:
            return None
        attempt = q.first_attempt
        while True:
            started = utc_now()
            outcome, ctx = await self._attempt_async(task, job, q, attempt, started)
            retry = self._settle(task, job, q, attempt, outcome, ctx)
            if not isinstance(retry, _Retry):
                return retry
            if await _wait_async(q.stopping, retry.delay):
                self._record_failure(task, q, attempt, outcome, True, retry.discarded)
                return None
            self._retrying(task, q, attempt, started, outcome, ctx, retry.discarded)
            attempt += 1

    def _prelude(self, task: TaskDef, q: TaskQueue) -> Job | None:
        """Settle a task that needs no attempt (done before, blocked, broken); else its job."""
        job: Job = task.payload
        if job.blocked is not None:
            # Not a failure of its own: the upstream's row says what went wrong.
            q.put(
                MsgTaskFinished(
                    task.task_id,
                    "upstream_failed",
                    utc_now(),
                    message=job.blocked,
                    name=task.name,
                    key=task.key,
                    **_stage_fields(task),
                )
            )
            return None
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
                    **_stage_fields(task),
                )
            )
            return None
        if job.cached is not None:
            _record_cached(task, job, q)
            return None
        if job.problem is not None:
            summary = job.problem.strip().splitlines()[-1][:SUMMARY_CHARS]
            q.put(
                MsgTaskFinished(
                    task.task_id,
                    "error",
                    utc_now(),
                    message=summary,
                    error=job.problem,
                    name=task.name,
                    key=task.key,
                    **_stage_fields(task),
                )
            )
            self._maybe_stop(summary)
            return None
        return job

    def _settle(
        self, task: TaskDef, job: Job, q: TaskQueue, attempt: int, outcome: Outcome, ctx: Context
    ) -> _Retry | Handoff | None:
        """Record a finished task, or say how long to wait before its next attempt.

        Returns:
            A `_Retry` to try again; a `Handoff` of the result when the task is done and
            other stages consume it; None when it is recorded and nothing waits for it.
        """
        outputs: tuple[Any, ...] | list[Any] = ()
        if outcome.status == "done":
            try:
                # The held messages ride on the finish: the writer commits them with the
                # done row in one savepoint, or none of them and records the task error.
                outputs = ctx._take_outputs()
            except OutputLimitError as exc:  # caught by the task, which went on
                outcome = Outcome("error", exc=exc, error_text=exc_text(exc))
        if outcome.status == "done":
            if job.fingerprint is not None:  # before the finish: its row exists (started)
                q.put(MsgCacheNote(task.task_id, job.fingerprint))
            q.put(
                MsgTaskFinished(
                    task.task_id,
                    "done",
                    utc_now(),
                    result=result_text(outcome.value, exact=job.hands_off),
                    attempt=attempt,
                    name=task.name,
                    outputs=outputs,
                    **_stage_fields(task),
                )
            )
            return Handoff(outcome.value) if job.hands_off else None
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
        self, task: TaskDef, job: Job, q: TaskQueue, attempt: int, started: str
    ) -> Context:
        q.put(
            MsgTaskStarted(
                task.task_id,
                task.name,
                started,
                attempt=attempt,
                key=task.key,
                stage=job.task.name,
            )
        )
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
            params=self.params,
            pipeline=self.name,
            state=self.state,
        )

    def _attempt(
        self, task: TaskDef, job: Job, q: TaskQueue, attempt: int, started: str
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
        killed_on_timeout = timeout is not None and attempt_deadline(
            timeout, attempt, retry, held=ctx._held_count
        )
        bound, drop_logs = within_attempt(attempt, call)
        try:
            outcome = run_attempt(
                bound,
                timeout=None if killed_on_timeout else timeout,
                on_timeout=_both(ctx._abandon, drop_logs),
                thread_name=f"pipeloom-task-{task.task_id}-{attempt}",
            )
        finally:
            if killed_on_timeout:
                attempt_deadline(None)
        return outcome, ctx

    async def _attempt_async(
        self, task: TaskDef, job: Job, q: TaskQueue, attempt: int, started: str
    ) -> tuple[Outcome, Context]:
        ctx = self._context(task, job, q, attempt, started)
        spec = job.task
        if not inspect.iscoroutinefunction(spec.fn):
            # A blocking function must not stall the loop: its attempt runs in a thread.
            call, drop_logs = within_attempt(attempt, functools.partial(spec.fn, ctx, job.item))
            outcome = await asyncio.to_thread(
                run_attempt,
                call,
                timeout=spec.timeout,
                on_timeout=_both(ctx._abandon, drop_logs),
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
        summary = exc_summary(outcome.exc, SUMMARY_CHARS - len(note)) + note
        q.put(
            MsgTaskFinished(
                task.task_id,
                "timeout" if outcome.status == "timeout" else "error",
                utc_now(),
                message=summary,
                error=outcome.error_text,
                attempt=attempt,
                name=task.name,
                **_stage_fields(task),
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


def _record_cached(task: TaskDef, job: Job, q: TaskQueue) -> None:
    """Record a task an earlier run's done task stands for: done, with that result."""
    hit = job.cached
    assert hit is not None and job.fingerprint is not None
    q.put(
        MsgTaskFinished(
            task.task_id,
            "done",
            utc_now(),
            result=hit.result,
            message=f"cached: result of run {hit.run_id}, task {hit.task_id}",
            name=task.name,
            key=task.key,
            **_stage_fields(task),
        )
    )
    # After the finish, which creates the row: the writer applies rows before handlers.
    q.put(MsgCacheNote(task.task_id, job.fingerprint, hit.run_id, hit.task_id))


def _stage_fields(task: TaskDef) -> dict[str, Any]:
    """Where a task sits among the stages, for its row (``stage``, ``upstream_*``)."""
    job: Job = task.payload
    return {
        "stage": job.task.name,
        "upstream_stage": job.upstream_stage,
        "upstream_task_id": job.upstream_id,
    }


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        second()

    return both


def _discarded_text(n: int) -> str:
    return f"{n} emitted message{'' if n == 1 else 's'}"


def _run_coroutine(fn: Callable[[Context, Any], Any], ctx: Context, item: Any) -> Any:
    """Run an ``async def`` task on an event loop of its own, in the attempt's thread."""
    return asyncio.run(fn(ctx, item))
