"""pipeloom: run many ETL tasks concurrently with one SQLite writer thread.

Workers send small typed messages; a single writer thread persists them in batches, so a
pipeline never sees "database is locked". Every run and every task is recorded in one SQLite
file (``pipeline_runs`` and ``task_runs``) and shown live with Rich progress bars.

The top level holds what a pipeline file writes (`Pipeline`, `run_pipeline`, the messages,
`RunResult`); the rest lives under its module (`pipeloom.executors`, `pipeloom.status`,
`pipeloom.writer`, ...). Names the original pipeloom documented at the top level
(`SQLiteWriter`, `init_schema`, the progress helpers, ...) stay importable from here for
compatibility. Everything is imported on first use, so ``import pipeloom`` is cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from pipeloom._version import __version__

if TYPE_CHECKING:
    from pipeloom.db import connect, init_schema, wal_checkpoint
    from pipeloom.engine import run_pipeline
    from pipeloom.errors import (
        DatabaseError,
        PipeloomError,
        RunFailedError,
        SchemaOutdatedError,
        WriterFailedError,
    )
    from pipeloom.executors import Executor, TaskQueue, ThreadExecutor
    from pipeloom.logs import console, logger, setup_logging
    from pipeloom.messages import (
        SENTINEL,
        Msg,
        MsgRunFinished,
        MsgTaskAttempt,
        MsgTaskFinish,
        MsgTaskFinished,
        MsgTaskLog,
        MsgTaskProgress,
        MsgTaskStart,
        MsgTaskStarted,
        TaskDef,
        utc_now,
    )
    from pipeloom.options import RunOptions
    from pipeloom.pipeline import Context, Pipeline, PipelineError, Task, TaskTimeoutError
    from pipeloom.progress import (
        LiveDisplay,
        PlainReporter,
        make_overall_progress,
        make_task_progress,
        preregister_task_bars,
    )
    from pipeloom.queue import MessageQueue
    from pipeloom.result import RunResult
    from pipeloom.writer import AppliedBatch, SQLiteWriter

_WHERE: dict[str, str] = {
    # What a pipeline file writes.
    "Pipeline": "pipeline",
    "Context": "pipeline",
    "Task": "pipeline",
    "PipelineError": "pipeline",
    "TaskTimeoutError": "pipeline",
    "run_pipeline": "engine",
    "RunResult": "result",
    "RunOptions": "options",
    "TaskDef": "messages",
    "MsgTaskStarted": "messages",
    "MsgTaskProgress": "messages",
    "MsgTaskFinished": "messages",
    "MsgTaskAttempt": "messages",
    "MsgTaskLog": "messages",
    "Msg": "messages",
    "utc_now": "messages",
    "TaskQueue": "executors",
    "PipeloomError": "errors",
    "DatabaseError": "errors",
    "RunFailedError": "errors",
    "SchemaOutdatedError": "errors",
    "WriterFailedError": "errors",
    "setup_logging": "logs",
    "console": "logs",
    "logger": "logs",
    # Compatibility: documented at the top level by pipeloom 0.0.7 and earlier releases.
    "SENTINEL": "messages",
    "MsgTaskStart": "messages",
    "MsgTaskFinish": "messages",
    "MsgRunFinished": "messages",
    "SQLiteWriter": "writer",
    "AppliedBatch": "writer",
    "MessageQueue": "queue",
    "Executor": "executors",
    "ThreadExecutor": "executors",
    "connect": "db",
    "init_schema": "db",
    "wal_checkpoint": "db",
    "LiveDisplay": "progress",
    "PlainReporter": "progress",
    "make_overall_progress": "progress",
    "make_task_progress": "progress",
    "preregister_task_bars": "progress",
}

__all__ = [
    "SENTINEL",
    "AppliedBatch",
    "Context",
    "DatabaseError",
    "Executor",
    "LiveDisplay",
    "MessageQueue",
    "Msg",
    "MsgRunFinished",
    "MsgTaskAttempt",
    "MsgTaskFinish",
    "MsgTaskFinished",
    "MsgTaskLog",
    "MsgTaskProgress",
    "MsgTaskStart",
    "MsgTaskStarted",
    "Pipeline",
    "PipelineError",
    "PipeloomError",
    "PlainReporter",
    "RunFailedError",
    "RunOptions",
    "RunResult",
    "SQLiteWriter",
    "SchemaOutdatedError",
    "Task",
    "TaskDef",
    "TaskQueue",
    "TaskTimeoutError",
    "ThreadExecutor",
    "WriterFailedError",
    "__version__",
    "connect",
    "console",
    "init_schema",
    "logger",
    "make_overall_progress",
    "make_task_progress",
    "preregister_task_bars",
    "run_pipeline",
    "setup_logging",
    "utc_now",
    "wal_checkpoint",
]


def __getattr__(name: str) -> Any:
    """Import a top-level name's module on first use (PEP 562)."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'pipeloom' has no attribute {name!r}")
    value = getattr(import_module(f"pipeloom.{where}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """List the lazy names too, for completion in a REPL."""
    return sorted({*globals(), *_WHERE})
