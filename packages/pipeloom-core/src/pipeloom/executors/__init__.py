"""Where tasks run: threads (default), processes, one asyncio loop, or a Dask cluster.

Pass a name or an instance as ``executor=`` to `pipeloom.run_pipeline`, `pipeloom.Pipeline`
or ``pipe.run``; subclass `Executor` to run tasks somewhere new. Whatever the executor, only
the driver's writer thread writes to SQLite.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeloom.executors._base import Completions, Executor, Sink, TaskQueue, WorkerFn
from pipeloom.executors._remote import BatchingSink, Outcome, RemoteTaskError, run_remote
from pipeloom.executors.aio import AsyncExecutor
from pipeloom.executors.processes import ProcessExecutor
from pipeloom.executors.threads import ThreadExecutor

__all__ = [
    "EXECUTOR_NAMES",
    "AsyncExecutor",
    "BatchingSink",
    "Completions",
    "Executor",
    "Outcome",
    "ProcessExecutor",
    "RemoteTaskError",
    "Sink",
    "TaskQueue",
    "ThreadExecutor",
    "WorkerFn",
    "resolve_executor",
    "run_remote",
]

EXECUTOR_NAMES = ("threads", "processes", "async")
"""The names ``executor=`` accepts."""


def resolve_executor(executor: str | Executor | None) -> Executor:
    """Turn ``executor=`` (a name, an instance or None) into a fresh `Executor`.

    Raises:
        ValueError: an unknown name.
        TypeError: neither a name nor an `Executor`.
    """
    if executor is None:
        return ThreadExecutor()
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, str):
        factory = _FACTORIES.get(executor.strip().lower())
        if factory is None:
            raise ValueError(
                f"executor={executor!r}: use one of {', '.join(EXECUTOR_NAMES)}, or an "
                "instance from pipeloom.executors"
            )
        return factory()
    raise TypeError(
        f"executor={executor!r}: pass a name ({', '.join(EXECUTOR_NAMES)}) or an Executor "
        f"instance, not {type(executor).__name__}"
    )


_FACTORIES: dict[str, Callable[[], Executor]] = {
    "threads": ThreadExecutor,
    "processes": ProcessExecutor,
    "async": AsyncExecutor,
}
