import sqlite3
from pathlib import Path

from pipeloom import (
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)


def seed_worker(task: TaskDef, msg_q: TaskQueue) -> None:
    msg_q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    for step in range(1, 4):
        msg_q.put(MsgTaskProgress(task.task_id, step, 3, f"step {step}"))
    msg_q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result="ok"))


def test_seed_worker_shape_records_five_done_rows(tmp_path: Path) -> None:
    db = tmp_path / "etl.db"
    tasks = [TaskDef(i, f"task-{i}", steps=3) for i in range(1, 6)]
    result = run_pipeline(tasks, db, workers=4, worker_fn=seed_worker, progress=False)
    assert result.counts == {"done": 5}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, progress FROM task_runs ORDER BY task_id").fetchall()
    assert rows == [("done", 1.0)] * 5
