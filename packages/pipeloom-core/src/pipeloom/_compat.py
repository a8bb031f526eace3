"""pipeloom 0.0.7, kept working: every name and behaviour of the original the new layout would drop.

Nothing else lives here, so what compatibility costs is visible in one file:

- `LEGACY_NAMES`: the top-level names 0.0.7 (and the releases before this layout) documented.
  ``from pipeloom import SQLiteWriter`` still works, imported on first use, but they are not
  in ``pipeloom.__all__`` or the API reference; each has a public home named here.
- `argument_order`: 0.0.7 called ``run_pipeline(db_path, tasks)``; the typed signature is
  ``run_pipeline(tasks, db_path)``, and the old order is turned round before anything runs.
- `DEFAULT_WORKER`: 0.0.7's ``worker_fn`` default, the demo worker that simulates work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeloom.demo import demo_worker
from pipeloom.executors import WorkerFn

__all__ = ["DEFAULT_WORKER", "LEGACY_NAMES", "argument_order"]

LEGACY_NAMES: dict[str, str] = {
    "SENTINEL": "messages",
    "MsgTaskStart": "messages",
    "MsgTaskFinish": "messages",
    "MsgRunFinished": "messages",
    "MsgTaskAttempt": "messages",
    "MsgTaskLog": "messages",
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
    "SchemaOutdatedError": "errors",
    "console": "logs",
    "logger": "logs",
}
"""Top-level name -> the public module (``pipeloom.<module>``) that defines it."""

DEFAULT_WORKER: WorkerFn = demo_worker
"""The ``worker_fn`` of a `pipeloom.run_pipeline` call that names none, as in 0.0.7."""

_PATH_TYPES = (str, bytes, os.PathLike)


def argument_order(tasks: Any, db_path: Any) -> tuple[Iterable[Any], str | Path]:
    """``(tasks, db_path)`` from a call in either order: 0.0.7 put the path first.

    Raises:
        TypeError: no tasks were given (only a path), or the tasks are a string.
    """
    if isinstance(tasks, _PATH_TYPES):
        if isinstance(db_path, _PATH_TYPES):
            raise TypeError(
                f"run_pipeline needs tasks, an iterable of TaskDef (a list or a generator), "
                f"got {type(tasks).__name__} {tasks!r}: call run_pipeline(tasks, db_path)"
            )
        tasks, db_path = db_path, tasks  # 0.0.7's run_pipeline(Path("etl.db"), tasks, ...)
    if isinstance(tasks, _PATH_TYPES) or not isinstance(tasks, Iterable):
        raise TypeError(f"tasks must be an iterable of TaskDef, got {type(tasks).__name__}")
    return tasks, db_path
