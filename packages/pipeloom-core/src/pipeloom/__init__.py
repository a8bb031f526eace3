"""pipeloom: run many ETL tasks concurrently with one SQLite writer thread.

Workers send small typed messages; a single writer thread persists them in batches, so a
pipeline never sees "database is locked". Every run and every task is recorded in one SQLite
file (``pipeline_runs`` and ``task_runs``) and shown live with Rich progress bars.
"""

from pipeloom._version import __version__
from pipeloom.db import connect, init_schema, wal_checkpoint
from pipeloom.engine import Executor, RunResult, TaskQueue, ThreadExecutor, run_pipeline
from pipeloom.errors import (
    DatabaseError,
    PipeloomError,
    RunFailedError,
    SchemaOutdatedError,
    WriterFailedError,
)
from pipeloom.logs import console, logger, setup_logging
from pipeloom.messages import (
    SENTINEL,
    Msg,
    MsgRunFinished,
    MsgTaskAttempt,
    MsgTaskFinish,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStart,
    MsgTaskStarted,
    TaskDef,
    utc_now,
)
from pipeloom.pipeline import Context, Pipeline, PipelineError, Task, TaskTimeoutError
from pipeloom.progress import (
    LiveDisplay,
    PlainReporter,
    make_overall_progress,
    make_task_progress,
    preregister_task_bars,
)
from pipeloom.queue import MessageQueue
from pipeloom.writer import AppliedBatch, SQLiteWriter

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
    "MsgTaskProgress",
    "MsgTaskStart",
    "MsgTaskStarted",
    "Pipeline",
    "PipelineError",
    "PipeloomError",
    "PlainReporter",
    "RunFailedError",
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
