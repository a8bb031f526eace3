"""A run knows when its file is gone: deleting or replacing it mid-run is an error, not ``done``.

SQLite keeps writing to the open inode of a deleted or replaced file, so without a check the
run reports success while the path holds none of its rows. The writer compares the path's
identity (device, inode) with the one it opened, after commits (at most every 0.2 s), while idle
and at the end.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from pipeloom import (
    AppliedBatch,
    MsgTaskFinished,
    MsgTaskStarted,
    TaskDef,
    TaskQueue,
    WriterFailedError,
    run_pipeline,
    utc_now,
)

TRIGGER = 10
"""The task whose worker removes the file, once some earlier finish has committed."""


def _run_and_remove(tmp_path: Path, how: str) -> tuple[Path, str]:
    db = tmp_path / "gone.db"
    committed = threading.Event()
    removed = threading.Event()

    def listener(applied: AppliedBatch) -> None:
        if applied.finished:
            committed.set()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        if task.task_id == TRIGGER:
            assert committed.wait(20), "no commit before the file was removed"
            if how == "delete":
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            elif how == "delete-wal":
                Path(f"{db}-wal").unlink()
            else:
                other = tmp_path / "other.db"
                sqlite3.connect(other).close()
                os.replace(other, db)
            removed.set()
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    tasks = [TaskDef(i, f"t{i}") for i in range(1, 41)]
    with pytest.raises(WriterFailedError) as info:
        run_pipeline(tasks, db, worker_fn=worker, workers=2, progress=False, listeners=[listener])
    assert removed.is_set()
    return db, str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "what"),
    [
        ("delete", "was deleted"),
        ("replace", "was replaced by another file"),
        ("delete-wal", "-wal (the write-ahead log of"),
    ],
)
def test_removing_the_database_mid_run_raises_naming_it(
    tmp_path: Path, how: str, what: str
) -> None:
    db, message = _run_and_remove(tmp_path, how)
    assert str(db) in message
    assert what in message, message
    assert "the rows of this run are in the file that was removed" in message


def test_an_untouched_file_is_not_reported(tmp_path: Path) -> None:
    """The check has no false alarm over a whole run, its final checkpoint included."""

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    db = tmp_path / "kept.db"
    for _ in range(2):  # the second run opens a file (and WAL) that already exist
        result = run_pipeline(
            [TaskDef(i, f"t{i}") for i in range(1, 21)],
            db,
            worker_fn=worker,
            workers=2,
            progress=False,
        )
        assert result.ok


@pytest.mark.timeout(60)
def test_a_file_deleted_while_no_messages_flow_stops_the_run_at_once(tmp_path: Path) -> None:
    """The writer looks at the path while idle too: a long, silent task is told to stop."""
    db = tmp_path / "idle.db"
    told: list[bool] = []
    started = threading.Event()

    def listener(applied: AppliedBatch) -> None:
        if applied.started:
            started.set()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        assert started.wait(20), "the start was committed"  # so no commit follows the deletion
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        # A long task that sends nothing; the run stopping is what ends it early.
        told.append(q.stopping.wait(30))

    with pytest.raises(WriterFailedError, match="was deleted"):
        run_pipeline(
            [TaskDef(1, "long")],
            db,
            worker_fn=worker,
            workers=1,
            progress=False,
            listeners=[listener],
        )
    assert told == [True], "the run stopped while the task was still running"
