import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeloom import (
    DatabaseError,
    MsgTaskStarted,
    TaskDef,
    run_pipeline,
    utc_now,
)
from tests._harness import query

from .conftest import seed_worker


def five_tasks() -> list[TaskDef]:
    return [TaskDef(i, f"task-{i}", steps=3) for i in range(1, 6)]


@pytest.mark.parametrize("form", ["tasks-first", "db-first"])
def test_seed_worker_shape_gives_five_done_rows_in_both_call_forms(
    tmp_path: Path, form: str
) -> None:
    db = tmp_path / "etl.db"
    if form == "tasks-first":
        result = run_pipeline(five_tasks(), db, workers=4, worker_fn=seed_worker, progress=False)
    else:
        # 0.0.7's order runs; only the new one, (tasks, db_path), type-checks.
        result = run_pipeline(
            db,  # type: ignore[arg-type]
            five_tasks(),  # type: ignore[arg-type]
            workers=4,
            worker_fn=seed_worker,
            progress=False,
        )
    assert result.status == "done"
    assert result.ok
    assert result.counts == {"done": 5}
    assert result.failed_task_ids == []
    assert query(
        db, "SELECT task_id, name, status, progress, result FROM task_runs ORDER BY task_id"
    ) == [(i, f"task-{i}", "done", 1.0, f"ok {i}") for i in range(1, 6)]
    # The query the seed documents keeps working.
    assert query(db, "SELECT status, COUNT(*) FROM task_runs GROUP BY status;") == [("done", 5)]


def test_keyword_call_form_and_default_workers(tmp_path: Path) -> None:
    db = tmp_path / "kw.db"
    result = run_pipeline(tasks=five_tasks(), db_path=db, worker_fn=seed_worker, progress=False)
    assert result.counts == {"done": 5}
    (workers,) = query(db, "SELECT workers FROM pipeline_runs")[0]
    assert 1 <= workers <= 5


def test_two_runs_on_one_file_keep_both_histories(tmp_path: Path) -> None:
    db = tmp_path / "etl.db"
    first = run_pipeline(five_tasks(), db, workers=2, worker_fn=seed_worker, progress=False)
    second = run_pipeline(five_tasks()[:3], db, workers=2, worker_fn=seed_worker, progress=False)
    assert first.run_id is not None and second.run_id is not None
    assert first.run_id != second.run_id
    runs = query(db, "SELECT id, status, tasks_total, tasks_done, pid FROM pipeline_runs")
    assert [r[:4] for r in runs] == [(first.run_id, "done", 5, 5), (second.run_id, "done", 3, 3)]
    per_run = query(db, "SELECT run_id, COUNT(*) FROM task_runs GROUP BY run_id ORDER BY run_id")
    assert per_run == [(first.run_id, 5), (second.run_id, 3)]


def test_a_worker_that_raises_is_recorded_as_error_and_the_rest_run(tmp_path: Path) -> None:
    db = tmp_path / "etl.db"

    def worker(task: TaskDef, msg_q: Any) -> None:
        msg_q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        if task.task_id == 3:
            raise ValueError("bad row in partition 3")
        seed_worker(task, msg_q)

    result = run_pipeline(five_tasks(), db, workers=4, worker_fn=worker, progress=False)
    assert result.status == "error"
    assert not result.ok
    assert result.counts == {"done": 4, "error": 1}
    assert result.failed_task_ids == [3]
    status, message, error = query(
        db, "SELECT status, message, error FROM task_runs WHERE task_id = 3"
    )[0]
    assert status == "error"
    assert message == "ValueError: bad row in partition 3"
    assert "Traceback" in error and "bad row in partition 3" in error
    others = query(db, "SELECT status FROM task_runs WHERE task_id != 3")
    assert others == [("done",)] * 4
    assert query(db, "SELECT status, tasks_error FROM pipeline_runs") == [("error", 1)]


def test_fail_fast_stops_admitting_and_counts_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "ff.db"

    def worker(task: TaskDef, msg_q: Any) -> None:
        if task.task_id == 1:
            raise RuntimeError("first task fails")
        seed_worker(task, msg_q)

    tasks = [TaskDef(i, f"t{i}", key=f"part-{i}") for i in range(1, 51)]
    result = run_pipeline(tasks, db, workers=1, worker_fn=worker, fail_fast=True, progress=False)
    # Tasks never started get no row (the source is never drained to write them); a sized
    # source says how many there were.
    assert result.counts == {"error": 1}
    assert result.not_started == 49 and not result.ok
    assert query(db, "SELECT status, note FROM pipeline_runs") == [
        ("error", "49 task(s) not started: the run was stopped")
    ]
    assert query(db, "SELECT task_key FROM task_runs WHERE status = 'error'") == [("part-1",)]


def test_worker_that_reports_nothing_is_recorded_done(tmp_path: Path) -> None:
    db = tmp_path / "quiet.db"
    result = run_pipeline(
        [TaskDef(7, "silent")], db, worker_fn=lambda task, q: None, progress=False
    )
    assert result.counts == {"done": 1}
    assert query(db, "SELECT task_id, name, status, progress FROM task_runs") == [
        (7, "silent", "done", 1.0)
    ]


def test_tasks_from_a_generator_are_pulled_lazily(tmp_path: Path) -> None:
    produced = 0
    max_ahead = 0
    finished = 0
    lock = threading.Lock()

    def gen() -> Iterator[TaskDef]:
        nonlocal produced, max_ahead
        for i in range(1, 2001):
            produced += 1
            with lock:
                max_ahead = max(max_ahead, produced - finished)
            yield TaskDef(i, f"g{i}")

    def worker(task: TaskDef, msg_q: Any) -> None:
        nonlocal finished
        seed_worker(task, msg_q)
        with lock:
            finished += 1

    result = run_pipeline(gen(), tmp_path / "gen.db", workers=4, worker_fn=worker, progress=False)
    assert result.counts == {"done": 2000}
    # Never more tasks taken from the generator than there are workers busy with them.
    assert max_ahead <= 4


def test_store_task_status_false_creates_no_pipeloom_tables(tmp_path: Path) -> None:
    db = tmp_path / "bare.db"
    result = run_pipeline(
        five_tasks(), db, worker_fn=seed_worker, store_task_status=False, progress=False
    )
    assert result.run_id is None
    assert result.counts == {"done": 5}
    assert query(db, "SELECT name FROM sqlite_master") == []


def test_memory_database_works(tmp_path: Path) -> None:
    result = run_pipeline(five_tasks(), ":memory:", worker_fn=seed_worker, progress=False)
    assert result.counts == {"done": 5}
    assert result.run_id == 1


@pytest.mark.parametrize(("wal", "mode"), [(True, "wal"), (False, "delete")])
def test_wal_flag_chooses_the_journal_mode(tmp_path: Path, wal: bool, mode: str) -> None:
    db = tmp_path / "j.db"
    run_pipeline(five_tasks(), db, worker_fn=seed_worker, wal=wal, progress=False)
    assert query(db, "PRAGMA journal_mode") == [(mode,)]


def test_directory_as_database_is_a_clear_error_without_hanging(tmp_path: Path) -> None:
    tasks = (TaskDef(i, f"t{i}") for i in range(10_000))
    with pytest.raises(DatabaseError, match="is a directory") as info:
        run_pipeline(tasks, tmp_path, workers=4, worker_fn=seed_worker, progress=False)
    assert str(tmp_path) in str(info.value)


def test_non_sqlite_file_is_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("these are my notes, not a database\n" * 100)
    before = db.read_bytes()
    with pytest.raises(DatabaseError, match="not a"):
        run_pipeline(five_tasks(), db, worker_fn=seed_worker, progress=False)
    assert db.read_bytes() == before


def test_reader_polling_during_a_run_never_sees_database_locked(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    run_pipeline([TaskDef(0, "warm-up")], db, worker_fn=seed_worker, progress=False)
    stop = threading.Event()
    errors: list[str] = []
    polls = 0

    def reader() -> None:
        nonlocal polls
        conn = sqlite3.connect(db, timeout=0)  # no busy timeout: WAL readers must not block
        try:
            while not stop.is_set():
                try:
                    conn.execute(
                        "SELECT status, COUNT(*) FROM task_runs GROUP BY status"
                    ).fetchall()
                    polls += 1
                except sqlite3.OperationalError as exc:
                    errors.append(str(exc))
        finally:
            conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        tasks = [TaskDef(i, f"t{i}", steps=3) for i in range(1, 2001)]
        result = run_pipeline(tasks, db, workers=4, worker_fn=seed_worker, progress=False)
    finally:
        stop.set()
        thread.join()
    assert result.counts == {"done": 2000}
    assert errors == []
    assert polls > 0


def test_rows_are_visible_to_readers_before_the_run_ends(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    run_pipeline([TaskDef(0, "warm-up")], db, worker_fn=seed_worker, progress=False)
    seen = threading.Event()

    def worker(task: TaskDef, msg_q: Any) -> None:
        msg_q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        conn = sqlite3.connect(db)
        try:
            for _ in range(2000):  # bounded: at most ~20 s
                row = conn.execute(
                    "SELECT status FROM task_runs WHERE task_id = ? AND run_id = "
                    "(SELECT max(id) FROM pipeline_runs)",
                    (task.task_id,),
                ).fetchone()
                if row == ("running",):
                    seen.set()
                    return
                threading.Event().wait(0.01)
        finally:
            conn.close()

    run_pipeline([TaskDef(1, "waits-for-its-own-row")], db, worker_fn=worker, progress=False)
    assert seen.is_set()


def test_ctrl_c_cancels_the_rest_and_restores_the_previous_handler(tmp_path: Path) -> None:
    db = tmp_path / "int.db"
    previous = signal.getsignal(signal.SIGINT)

    def worker(task: TaskDef, msg_q: Any) -> None:
        if task.task_id == 5:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C
        threading.Event().wait(0.01)
        seed_worker(task, msg_q)

    tasks = [TaskDef(i, f"t{i}") for i in range(1, 201)]
    result = run_pipeline(tasks, db, workers=2, worker_fn=worker, progress=False)
    assert signal.getsignal(signal.SIGINT) is previous
    assert result.status == "cancelled"
    assert result.counts["done"] >= 5
    assert result.not_started is not None
    assert result.counts["done"] + result.not_started == 200
    assert query(db, "SELECT status FROM pipeline_runs") == [("cancelled",)]
    assert query(db, "SELECT count(*) FROM task_runs WHERE status = 'running'") == [(0,)]
