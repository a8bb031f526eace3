"""One event loop: thousands of concurrent I/O waits without a thread each.

``workers`` is the concurrency limit: the engine keeps at most that many tasks in flight, and
each runs as an asyncio task on one loop in a thread of its own. An ``async def`` worker
function (or a declarative pipeline, whose runner has an async path) is awaited on the loop;
a plain blocking function is run in the loop's default thread pool instead, so it cannot
stall every other task (it then gets no more concurrency than that pool has threads).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from pipeloom.executors._base import Completions, Executor, Sink, TaskQueue, WorkerFn
from pipeloom.tasklogs import enter_task

__all__ = ["AsyncExecutor"]

log = logging.getLogger("pipeloom.executors")

DEFAULT_CONCURRENCY = 100
"""Tasks in flight when neither ``workers=`` nor a task count says otherwise."""


class AsyncExecutor(Executor):
    """Runs every task as an asyncio task on one event loop in a thread of its own."""

    name = "async"

    def __init__(self) -> None:
        """No loop until `start`."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._call: Callable[[Any, TaskQueue], Awaitable[Any]] | None = None

    def default_workers(self, tasks: int | None, cpus: int) -> int:
        """Concurrency when the caller gives none: min(tasks, 100); CPUs do not matter here."""
        return max(1, min(tasks, DEFAULT_CONCURRENCY)) if tasks is not None else DEFAULT_CONCURRENCY

    def start(self, workers: int, worker_fn: WorkerFn, sink: Sink, engine: Completions) -> None:
        """Start the loop thread and choose how to call the worker function."""
        super().start(workers, worker_fn, sink, engine)
        self._call = _awaitable_call(worker_fn)
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="pipeloom-async", daemon=True)
        self._thread.start()
        ready.wait()

    def submit(self, task_id: int, task: Any) -> None:
        """Schedule the task on the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._spawn, task_id, task)

    def _spawn(self, task_id: int, task: Any) -> None:
        job = asyncio.ensure_future(self._run(task_id, task))
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)

    async def _run(self, task_id: int, task: Any) -> None:
        assert self._call is not None
        q = TaskQueue(self.sink, self.engine.stopping)
        enter_task(q.put, task_id)  # this asyncio task's own context: nothing to undo
        try:
            returned = await self._call(task, q)
        except BaseException as exc:  # handed to the engine, which records it
            self.engine.task_done(task_id, task, exc, task_id in q.finished_ids)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            self.engine.task_done(task_id, task, None, task_id in q.finished_ids, returned)

    def cancel(self) -> None:
        """Cancel every task in flight (a second Ctrl-C)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def cancel_all() -> None:
            for job in list(self._tasks):
                job.cancel()

        loop.call_soon_threadsafe(cancel_all)

    def shutdown(self, timeout: float | None) -> bool:
        """Stop the loop once its tasks are over; True when its thread has ended."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return True
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
            return True
        return False


def _awaitable_call(worker_fn: WorkerFn) -> Callable[[Any, TaskQueue], Awaitable[Any]]:
    """How to await the worker function: its async path, itself, or a thread for it."""
    run_async = getattr(worker_fn, "run_async", None)
    if callable(run_async):
        return run_async  # type: ignore[no-any-return]
    if inspect.iscoroutinefunction(worker_fn) or inspect.iscoroutinefunction(
        getattr(worker_fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    ):
        return worker_fn
    log.info(
        "worker function %s is not async; running it in threads beside the event loop",
        getattr(worker_fn, "__qualname__", worker_fn),
    )

    async def in_thread(task: Any, q: TaskQueue) -> Any:
        return await asyncio.to_thread(worker_fn, task, q)

    return in_thread
