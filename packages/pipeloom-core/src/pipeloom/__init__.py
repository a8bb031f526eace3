"""pipeloom: run many ETL tasks concurrently with one SQLite writer thread.

Workers send small typed messages; a single writer thread persists them in batches, so a
pipeline never sees "database is locked". Every run and every task is recorded in one SQLite
file (``pipeline_runs`` and ``task_runs``) and shown live with Rich progress bars.

The top level holds what a pipeline file writes: `Pipeline` and its `Context` and `Task`,
or `run_pipeline` with `TaskDef`s and the task messages, `RunResult`, `RunOptions` and the
errors to catch. The rest lives under its module (`pipeloom.executors`, `pipeloom.history`,
`pipeloom.writer`, ...). Names earlier releases documented here (`SQLiteWriter`,
`init_schema`, the progress helpers, ...) still import from here (`pipeloom._compat`), but
are not listed. Everything is imported on first use, so ``import pipeloom`` is cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from pipeloom._version import __version__

if TYPE_CHECKING:
    from pipeloom.db import connect as connect
    from pipeloom.db import init_schema as init_schema
    from pipeloom.db import wal_checkpoint as wal_checkpoint
    from pipeloom.engine import run_pipeline
    from pipeloom.errors import (
        DatabaseError,
        PipelineError,
        PipeloomError,
        RunFailedError,
        TaskTimeoutError,
        WriterFailedError,
    )
    from pipeloom.errors import SchemaOutdatedError as SchemaOutdatedError
    from pipeloom.executors import Executor as Executor
    from pipeloom.executors import TaskQueue
    from pipeloom.executors import ThreadExecutor as ThreadExecutor
    from pipeloom.logs import console as console
    from pipeloom.logs import logger as logger
    from pipeloom.logs import setup_logging
    from pipeloom.messages import SENTINEL as SENTINEL
    from pipeloom.messages import (
        Msg,
        MsgTaskFinished,
        MsgTaskProgress,
        MsgTaskStarted,
        TaskDef,
        utc_now,
    )
    from pipeloom.messages import MsgRunFinished as MsgRunFinished
    from pipeloom.messages import MsgTaskAttempt as MsgTaskAttempt
    from pipeloom.messages import MsgTaskFinish as MsgTaskFinish
    from pipeloom.messages import MsgTaskLog as MsgTaskLog
    from pipeloom.messages import MsgTaskStart as MsgTaskStart
    from pipeloom.options import RunOptions
    from pipeloom.pipeline import Context, Pipeline, Task
    from pipeloom.progress import LiveDisplay as LiveDisplay
    from pipeloom.progress import PlainReporter as PlainReporter
    from pipeloom.progress import make_overall_progress as make_overall_progress
    from pipeloom.progress import make_task_progress as make_task_progress
    from pipeloom.progress import preregister_task_bars as preregister_task_bars
    from pipeloom.queue import MessageQueue as MessageQueue
    from pipeloom.result import RunResult
    from pipeloom.writer import AppliedBatch as AppliedBatch
    from pipeloom.writer import SQLiteWriter as SQLiteWriter

_WHERE: dict[str, str] = {
    "Pipeline": "pipeline",
    "Context": "pipeline",
    "Task": "pipeline",
    "run_pipeline": "engine",
    "RunResult": "result",
    "RunOptions": "options",
    "TaskDef": "messages",
    "MsgTaskStarted": "messages",
    "MsgTaskProgress": "messages",
    "MsgTaskFinished": "messages",
    "Msg": "messages",
    "utc_now": "messages",
    "TaskQueue": "executors",
    "PipeloomError": "errors",
    "PipelineError": "errors",
    "TaskTimeoutError": "errors",
    "DatabaseError": "errors",
    "RunFailedError": "errors",
    "WriterFailedError": "errors",
    "setup_logging": "logs",
}
"""Each public top-level name -> the module that defines it."""

__all__ = [
    "Context",
    "DatabaseError",
    "Msg",
    "MsgTaskFinished",
    "MsgTaskProgress",
    "MsgTaskStarted",
    "Pipeline",
    "PipelineError",
    "PipeloomError",
    "RunFailedError",
    "RunOptions",
    "RunResult",
    "Task",
    "TaskDef",
    "TaskQueue",
    "TaskTimeoutError",
    "WriterFailedError",
    "__version__",
    "run_pipeline",
    "setup_logging",
    "utc_now",
]


def __getattr__(name: str) -> Any:
    """Import a top-level name's module on first use (PEP 562); 0.0.7's names too."""
    where = _WHERE.get(name)
    if where is None:
        from pipeloom._compat import LEGACY_NAMES

        where = LEGACY_NAMES.get(name)
        if where is None:
            raise AttributeError(f"module 'pipeloom' has no attribute {name!r}")
    value = getattr(import_module(f"pipeloom.{where}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """List the public lazy names too, for completion in a REPL."""
    return sorted({*globals(), *_WHERE})
