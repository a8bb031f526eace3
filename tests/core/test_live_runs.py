"""pipeline_runs moves while a run is in progress, and the runs view reads it at a glance."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeloom import MsgTaskFinished, MsgTaskStarted, TaskDef, run_pipeline, utc_now
from pipeloom.schema import RUNS_SELECT
from tests._harness import query, wait_for

RUN_COLUMNS = "tasks_total, tasks_done, tasks_error, tasks_cancelled, tasks_finished, status"


def _wait_for(db: Path, sql: str, expected: Any, deadline_s: float = 30.0) -> None:
    def holds() -> bool:
        try:
            return bool(query(db, sql) == expected)
        except sqlite3.OperationalError:  # the file or its tables are not there yet
            return False

    wait_for(holds, f"{sql} to give {expected}", deadline_s, explain=lambda: str(query(db, sql)))


def _gated(gate: threading.Event) -> Any:
    def worker(task: TaskDef, q: Any) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        if task.task_id == 5:
            gate.wait(30)
        if task.task_id == 2:
            q.put(MsgTaskFinished(task.task_id, "error", utc_now(), message="boom"))
        else:
            q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    return worker


def _run_in_thread(**kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(run_pipeline(**kwargs)), daemon=True)
    t.start()
    return t, out


def test_counts_move_with_each_commit_and_hold_the_planned_total(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    gate = threading.Event()
    tasks = [TaskDef(i, f"t{i}") for i in range(1, 6)]
    t, out = _run_in_thread(
        tasks=tasks, db_path=db, worker_fn=_gated(gate), workers=2, progress=False
    )
    try:
        # Four of five finished (one failed), the fifth still running: the row says so now.
        _wait_for(db, f"SELECT {RUN_COLUMNS} FROM pipeline_runs", [(5, 3, 1, 0, 4, "running")])
        (live,) = query(
            db, "SELECT status, tasks_total, tasks_done, tasks_failed, progress, stale FROM runs"
        )
        assert live == ("running", 5, 3, 1, 0.8, 0)
    finally:
        gate.set()
        t.join(30)
    assert out[0].counts == {"done": 4, "error": 1}
    assert query(db, f"SELECT {RUN_COLUMNS} FROM pipeline_runs") == [(5, 4, 1, 0, 5, "error")]
    (done,) = query(db, "SELECT progress, tasks_failed, duration_s > 0, tasks_per_s > 0 FROM runs")
    assert done == (1.0, 1, 1, 1)


def test_a_generator_run_counts_the_tasks_taken_so_far(tmp_path: Path) -> None:
    db = tmp_path / "gen.db"
    gate = threading.Event()

    def tasks() -> Iterator[TaskDef]:
        for i in range(1, 6):
            yield TaskDef(i, f"t{i}")

    t, _ = _run_in_thread(
        tasks=tasks(), db_path=db, worker_fn=_gated(gate), workers=1, progress=False
    )
    try:
        _wait_for(db, f"SELECT {RUN_COLUMNS} FROM pipeline_runs", [(5, 3, 1, 0, 4, "running")])
    finally:
        gate.set()
        t.join(30)


def test_a_duplicate_finish_is_counted_once_while_the_run_is_live(tmp_path: Path) -> None:
    db = tmp_path / "dup.db"
    seen: list[tuple[int, int]] = []

    def listener(applied: Any) -> None:
        conn = sqlite3.connect(db)
        try:
            seen.append(
                conn.execute("SELECT tasks_finished, tasks_done FROM pipeline_runs").fetchone()
            )
        finally:
            conn.close()

    committed = threading.Event()

    def worker(task: TaskDef, q: Any) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))
        if task.task_id == 1:
            committed.wait(30)  # the first finish is committed: the second lands in a new batch
            q.put(MsgTaskFinished(task.task_id, "done", utc_now()))
            q.put(MsgTaskFinished(task.task_id, "error", utc_now()))

    def note(applied: Any) -> None:
        listener(applied)
        if applied.finished:
            committed.set()

    result = run_pipeline(
        tasks=[TaskDef(1, "one"), TaskDef(2, "two")],
        db_path=db,
        worker_fn=worker,
        workers=1,
        progress=False,
        listeners=[note],
    )
    assert result.counts == {"done": 2}
    assert max(finished for finished, _ in seen) <= 2
    assert max(done for _, done in seen) <= 2


def test_runs_select_works_where_the_file_keeps_its_own_runs_table(tmp_path: Path) -> None:
    db = tmp_path / "theirs.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE runs (athlete TEXT, km REAL)")
    conn.commit()
    conn.close()
    result = run_pipeline(
        tasks=[TaskDef(1, "a")], db_path=db, worker_fn=_gated(threading.Event()), progress=False
    )
    assert result.ok
    assert query(db, "SELECT type FROM sqlite_master WHERE name = 'runs'") == [("table",)]
    assert query(db, f"SELECT name, status, progress FROM ({RUNS_SELECT})") == [
        ("pipeline", "done", 1.0)
    ]


def test_run_pipeline_takes_the_same_options_object_a_pipeline_does(tmp_path: Path) -> None:
    import pytest

    from pipeloom import RunOptions

    db = tmp_path / "opts.db"
    result = run_pipeline(
        tasks=[TaskDef(1, "a")],
        db_path=db,
        worker_fn=_gated(threading.Event()),
        progress=False,
        options=RunOptions(lease=7.5, synchronous="FULL"),
    )
    assert result.ok
    assert query(db, "SELECT lease_s FROM pipeline_runs") == [(7.5,)]
    other = tmp_path / "never.db"
    with pytest.raises(TypeError, match="lease both as keyword"):
        run_pipeline(tasks=[TaskDef(1, "a")], db_path=other, lease=3.0, options=RunOptions())
    assert not other.exists()  # refused before anything was written
