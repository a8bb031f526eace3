"""The writer cannot go on (database full, connection gone, any exception): no hang, no loss."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from tests._harness import query
from tests.reliability._support import integrity

BIG = "x" * 4000


def _big_result_task(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=BIG))


def _cap_pages(extra: int) -> Any:
    """A schema hook that lets the file grow by only ``extra`` pages: a full disk in miniature."""

    def schema(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra}")

    return schema


class _Committed:
    """A listener noting which finishes each commit made durable."""

    def __init__(self) -> None:
        self.finished: dict[int, str] = {}

    def __call__(self, applied: AppliedBatch) -> None:
        self.finished.update(applied.finished)


@pytest.mark.timeout(60)
def test_database_full_stops_the_run_with_one_clear_error_and_keeps_commits(
    tmp_path: Path,
) -> None:
    db = tmp_path / "full.db"
    committed = _Committed()
    tasks = [TaskDef(i, f"t{i}") for i in range(1, 3001)]
    with pytest.raises(WriterFailedError) as info:
        run_pipeline(
            tasks,
            db,
            worker_fn=_big_result_task,
            workers=4,
            progress=False,
            schema=_cap_pages(60),
            listeners=[committed],
            batch_size=50,
        )
    message = str(info.value)
    assert "full" in message, message
    assert str(db) in message
    assert committed.finished, "some batches fit before the cap"

    assert integrity(db) == "ok"
    stored = dict(query(db, "SELECT task_id, status FROM task_runs"))
    assert {t: stored.get(t) for t in committed.finished} == committed.finished
    # The failed run is closed, not left looking alive.
    assert query(db, "SELECT status FROM pipeline_runs") == [("interrupted",)]
    assert query(db, "SELECT count(*) FROM task_runs WHERE status = 'running'") == [(0,)]

    # The file stays usable: once space is back (no cap), the next run records normally.
    again = run_pipeline(tasks[:10], db, worker_fn=_big_result_task, progress=False)
    assert again.counts == {"done": 10}
    assert integrity(db) == "ok"


@dataclass(frozen=True)
class Poison:
    """A user message whose handler kills the writer."""

    n: int


class WriterKiller(BaseException):
    """Not an Exception: the writer's per-handler recovery does not catch it."""


def _raise_base(conn: sqlite3.Connection, msgs: list[Poison]) -> None:
    raise WriterKiller("simulated crash inside the writer thread")


def _close_connection(conn: sqlite3.Connection, msgs: list[Poison]) -> None:
    conn.close()


def _raise_full(conn: sqlite3.Connection, msgs: list[Poison]) -> None:
    conn.execute("PRAGMA max_page_count = 1")  # clamps to the current size
    conn.execute("CREATE TABLE filler (x)")
    conn.executemany("INSERT INTO filler VALUES (?)", [("y" * 10_000,)] * 100)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("handler", "cause"),
    [
        (_raise_base, "simulated crash"),
        (_close_connection, "closed database"),
        (_raise_full, "full"),
    ],
    ids=["exception-outside-handlers", "connection-closed", "database-full"],
)
def test_writer_death_unblocks_every_worker_behind_a_full_queue(
    tmp_path: Path, handler: Any, cause: str
) -> None:
    db = tmp_path / "dies.db"
    poison_after = 500
    sent = threading.Event()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        if task.task_id == poison_after:
            q.put(Poison(task.task_id))
            sent.set()
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    tasks = (TaskDef(i, f"t{i}") for i in range(1, 10_001))
    with pytest.raises(WriterFailedError) as info:
        run_pipeline(
            tasks,
            db,
            worker_fn=worker,
            workers=8,
            progress=False,
            queue_size=4,
            handlers={Poison: handler},
        )
    assert sent.is_set()
    assert cause in str(info.value), str(info.value)
    alive = [t.name for t in threading.enumerate() if t.name.startswith("pipeloom-")]
    assert alive == [], "every worker and the writer have stopped"
    assert integrity(db) == "ok"
    assert query(db, "SELECT status FROM pipeline_runs") == [("interrupted",)]
    assert query(db, "SELECT count(*) FROM task_runs WHERE status = 'running'") == [(0,)]


@pytest.mark.timeout(30)
def test_writer_death_does_not_wait_for_tasks_still_computing(tmp_path: Path) -> None:
    """Once the writer is gone nothing more can be stored, so run_pipeline stops waiting for
    tasks stuck in long work (here: a minute) and raises."""
    release = threading.Event()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        if task.task_id == 1:
            q.put(Poison(1))
            return
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        release.wait(60)  # long work that never looks at the queue

    try:
        with pytest.raises(WriterFailedError, match="simulated crash"):
            run_pipeline(
                [TaskDef(i, f"t{i}") for i in range(1, 5)],
                tmp_path / "stuck.db",
                worker_fn=worker,
                workers=4,
                progress=False,
                handlers={Poison: _raise_base},
            )
    finally:
        release.set()
    assert query(tmp_path / "stuck.db", "SELECT status FROM pipeline_runs") == [("interrupted",)]


@pytest.mark.timeout(60)
def test_a_really_full_filesystem_stops_the_run_and_keeps_commits(tmp_path: Path) -> None:
    """The same on a real 600 KB filesystem (tmpfs; needs root, skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        db = mnt / "full.db"
        committed = _Committed()
        tasks = [TaskDef(i, f"t{i}") for i in range(1, 3001)]
        with pytest.raises(WriterFailedError, match="full"):
            run_pipeline(
                tasks,
                db,
                worker_fn=_big_result_task,
                workers=4,
                progress=False,
                listeners=[committed],
                batch_size=50,
            )
        assert committed.finished
        assert integrity(db) == "ok"
        stored = dict(query(db, "SELECT task_id, status FROM task_runs"))
        assert {t: stored.get(t) for t in committed.finished} == committed.finished
        # Room again: the same file takes the next run.
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        again = run_pipeline(tasks[:10], db, worker_fn=_big_result_task, progress=False)
        assert again.counts == {"done": 10}
        assert integrity(db) == "ok"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
