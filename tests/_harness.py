"""The one test harness: run databases made and read the way a user would, and bounded waits.

- `make_run` records a finished run of real tasks (through `run_pipeline`) in a file;
  `task_worker` is its worker (a task whose payload is ``"fail"`` raises).
- `query` reads a database with a plain connection, one query, closed;
  `integrity` is its ``PRAGMA integrity_check``.
- `wait_for` polls a condition until it holds, failing the test by name after a timeout
  (never a sleep that hopes).

The folders' own support modules build on these; fixtures stay thin.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeloom import MsgTaskProgress, RunResult, TaskDef, TaskQueue, run_pipeline

__all__ = [
    "integrity",
    "make_run",
    "query",
    "scratch_dir",
    "task_worker",
    "wait_for",
]

_SHM = Path("/dev/shm")
SCRATCH_ROOT = str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
"""Where property tests put their throwaway databases: a RAM filesystem where there is one."""


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` on ``db``, parameters as arguments (the one query helper)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A fresh folder for one hypothesis example's throwaway databases, in RAM where possible.

    A property test runs dozens of examples, and each example's writers create, fsync and
    close new SQLite files: on the disk those fsyncs were most of the test's time
    (test_staged_rows_equal_executemany_rows 7.2 s on disk, 1.6 s in /dev/shm, run alone).
    What these tests compare (stored rows, balanced books) does not depend on the filesystem;
    tests about files, crashes and durability keep their databases in tmp_path.
    """
    return tempfile.TemporaryDirectory(prefix="pipeloom-prop-", dir=SCRATCH_ROOT)


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of the file, opened the way any user would."""
    return str(query(db, "PRAGMA integrity_check")[0][0])


def task_worker(task: TaskDef, q: TaskQueue) -> None:
    """Report half the work, then finish; a task whose payload is ``"fail"`` raises."""
    q.put(MsgTaskProgress(task.task_id, 1, 2, "half"))
    if task.payload == "fail":
        raise ValueError(f"{task.name} broke")


def make_run(
    db: Path,
    n: int = 5,
    failing: tuple[int, ...] = (),
    *,
    name: str = "job",
    run_name: str = "fixture",
    **options: Any,
) -> RunResult:
    """Record one finished run of ``n`` tasks in ``db``; the task ids in ``failing`` fail.

    Tasks are named ``{name}-{i}``; ``options`` go to `run_pipeline` (``progress`` is off).
    """
    tasks = [
        TaskDef(i, f"{name}-{i}", payload="fail" if i in failing else None) for i in range(1, n + 1)
    ]
    options.setdefault("progress", False)
    return run_pipeline(tasks, db, worker_fn=task_worker, run_name=run_name, **options)


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    *,
    explain: Callable[[], str] = lambda: "",
    interval: float = 0.005,
) -> None:
    """Poll ``predicate`` until true; fail the test naming ``what`` after ``timeout`` s.

    ``explain`` adds what helps on failure (a container's logs, the last value read).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{explain()}")
        time.sleep(interval)
