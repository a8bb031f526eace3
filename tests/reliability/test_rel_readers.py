"""Readers during a heavy run: a polling connection, `pipeloom status --watch`, Datasette."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeloom import (
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    RunResult,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)
from pipeloom.db import connect_readonly
from tests._harness import query
from tests.reliability._support import integrity, wait_for

TASKS = 10_000


def _task(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    q.put(MsgTaskProgress(task.task_id, 1, 2, "half way"))
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result="ok"))


def _slow_task(task: TaskDef, q: TaskQueue) -> None:
    """A millisecond of work, so the run lasts long enough for a reader process to start."""
    time.sleep(0.001)
    _task(task, q)


class _Poller(threading.Thread):
    """Reads the run's counts in a tight loop on its own connection, noting every error."""

    def __init__(self, db: Path, readonly: bool) -> None:
        super().__init__(daemon=True)
        self.db, self.readonly = db, readonly
        self.errors: list[BaseException] = []
        self.seen_done: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        conn = connect_readonly(self.db) if self.readonly else sqlite3.connect(self.db)
        try:
            while not self.stop.is_set():
                try:
                    counts = dict(
                        conn.execute("SELECT status, count(*) FROM task_runs GROUP BY status")
                    )
                    conn.execute("SELECT * FROM pipeline_runs ORDER BY id DESC LIMIT 1").fetchone()
                    self.seen_done.add(int(counts.get("done", 0)))
                except sqlite3.Error as exc:
                    self.errors.append(exc)
                self.stop.wait(0.002)
        finally:
            conn.close()


async def test_readers_see_a_heavy_run_grow_without_errors(tmp_path: Path) -> None:
    from pipeloom_observe.app import build_datasette

    db = tmp_path / "heavy.db"
    run_pipeline([TaskDef(0, "warm-up")], db, worker_fn=_task, progress=False)
    pollers = [_Poller(db, readonly=False), _Poller(db, readonly=True)]
    for p in pollers:
        p.start()
    ds = build_datasette(db)
    await ds.invoke_startup()
    tasks = [TaskDef(i, f"t{i}") for i in range(1, TASKS + 1)]
    running = asyncio.create_task(
        asyncio.to_thread(
            lambda: run_pipeline(tasks, db, worker_fn=_slow_task, workers=4, progress=False)
        )
    )
    while query(db, "SELECT count(*) FROM pipeline_runs") != [(2,)]:
        await asyncio.sleep(0.005)
    # The heavy run is the latest now: --watch follows it until it ends.
    watch = subprocess.Popen(
        [sys.executable, "-m", "pipeloom_cli", "status", str(db), "--watch", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    statuses: list[int] = []
    while True:
        for page in (f"/{db.stem}/task_runs.json?_size=5", f"/{db.stem}/pipeline_runs.json"):
            statuses.append((await ds.client.get(page)).status_code)
        if running.done():
            break
        await asyncio.sleep(0.01)
    result: RunResult = await running
    for p in pollers:
        p.stop.set()
        p.join()
    try:
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()

    assert result.counts == {"done": TASKS}
    assert result.messages == 3 * TASKS
    for p in pollers:
        assert p.errors == []
        # The writer kept committing while being read: the readers saw the run in between.
        assert len(p.seen_done - {1, 1 + TASKS}) >= 2, sorted(p.seen_done)
    assert statuses and set(statuses) == {200}
    assert watch.returncode == 0, err
    assert "running" in out, "status --watch saw the run while it was going"
    assert "locked" not in (out + err).lower()
    assert "Traceback" not in err
    assert integrity(db) == "ok"


def _quick(task: TaskDef, q: TaskQueue) -> None:
    """Report nothing: the engine records the task done."""


@pytest.mark.timeout(8)
def test_an_open_read_transaction_does_not_hold_up_the_end_of_a_run(tmp_path: Path) -> None:
    """The final WAL checkpoint waits for readers only briefly (it used to wait the whole
    10 s busy timeout for a reader that kept a transaction open)."""
    db = tmp_path / "held.db"
    run_pipeline([TaskDef(1, "first")], db, worker_fn=_quick, progress=False)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM task_runs").fetchone() == (1,)
        for _ in range(3):
            result = run_pipeline(
                [TaskDef(i, f"t{i}") for i in range(1, 501)],
                db,
                worker_fn=_quick,
                progress=False,
            )
            assert result.counts == {"done": 500}
        # The reader still sees its snapshot, unharmed.
        assert reader.execute("SELECT count(*) FROM task_runs").fetchone() == (1,)
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert query(db, "SELECT count(*) FROM task_runs") == [(1501,)]
    assert integrity(db) == "ok"


def test_a_lone_message_is_committed_without_waiting_for_more(tmp_path: Path) -> None:
    """Group commit never holds a small batch back for company: a reader sees a single
    message while the run is still going (the wait is bounded by commit_interval)."""
    db = tmp_path / "lone.db"
    release = threading.Event()

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        release.wait(30)

    runner = threading.Thread(
        target=run_pipeline,
        args=([TaskDef(1, "alone")], db),
        kwargs={"worker_fn": worker, "progress": False},
    )
    runner.start()
    try:
        wait_for(
            lambda: db.exists() and _status(db) == "running",
            "the lone start to be committed while the task still runs",
        )
    finally:
        release.set()
        runner.join()
    assert query(db, "SELECT status FROM task_runs") == [("done",)]


def _status(db: Path) -> str | None:
    try:
        rows = query(db, "SELECT status FROM task_runs")
    except sqlite3.OperationalError:
        return None
    return str(rows[0][0]) if rows else None
