"""Worker functions and helpers shared by the core tests."""

from __future__ import annotations

from typing import Any

from pipeloom import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, TaskDef, utc_now


def seed_worker(task: TaskDef, msg_q: Any) -> None:
    """The worker shape users copy from the seed: Started, three Progress, Finished."""
    msg_q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    for step in range(1, 4):
        msg_q.put(MsgTaskProgress(task.task_id, step, 3, f"step {step}"))
    msg_q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=f"ok {task.task_id}"))
