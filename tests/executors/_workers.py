"""Worker functions for the executor tests, at module level so worker processes import them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
from dataclasses import dataclass
from typing import Any

from pipeloom import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, TaskDef, TaskQueue, utc_now


@dataclass(frozen=True)
class MsgScore:
    """A domain message: one row for the user's own table."""

    task_id: int
    score: int


def schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS scores (task_id INTEGER PRIMARY KEY, score INTEGER)")


def on_score(conn: sqlite3.Connection, msgs: list[MsgScore]) -> None:
    conn.executemany("INSERT INTO scores VALUES (?, ?)", [(m.task_id, m.score) for m in msgs])


def seed_shape(task: TaskDef, q: TaskQueue) -> None:
    """The worker shape the original's docs show: Started, a few Progress, Finished."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    for step in range(1, task.steps + 1):
        q.put(MsgTaskProgress(task.task_id, step, task.steps, f"step {step}"))
    q.put(MsgScore(task.task_id, task.task_id * 10))
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=f"r{task.task_id}"))


async def seed_shape_async(task: TaskDef, q: TaskQueue) -> None:
    await asyncio.sleep(0)
    seed_shape(task, q)


def fails_on_three(task: TaskDef, q: TaskQueue) -> None:
    if task.task_id == 3:
        raise ValueError(f"bad input in {task.name}")


async def fails_on_three_async(task: TaskDef, q: TaskQueue) -> None:
    await asyncio.sleep(0)
    fails_on_three(task, q)


def fails_then_waits(task: TaskDef, q: TaskQueue) -> None:
    """Task 3 fails; later tasks hold their slot until the run stops admitting."""
    fails_on_three(task, q)
    if task.task_id > 3:
        q.stopping.wait(30)


async def fails_then_waits_async(task: TaskDef, q: TaskQueue) -> None:
    fails_on_three(task, q)
    while task.task_id > 3 and not q.stopping.is_set():
        await asyncio.sleep(0.005)


def noop(task: Any, q: TaskQueue) -> None:
    return None


async def noop_async(task: Any, q: TaskQueue) -> None:
    return None


def interrupt_driver(task: TaskDef, q: TaskQueue) -> None:
    """Task 4 presses Ctrl-C on the driver (its pid rides in the payload)."""
    if task.task_id == 4:
        os.kill(int(task.payload), signal.SIGINT)
    if task.task_id >= 4:
        q.stopping.wait(30)  # later tasks hold their slot until the driver has seen it


async def interrupt_driver_async(task: TaskDef, q: TaskQueue) -> None:
    if task.task_id == 4:
        os.kill(int(task.payload), signal.SIGINT)
    while task.task_id >= 4 and not q.stopping.is_set():  # hold the slot until it is seen
        await asyncio.sleep(0.005)


def dies(task: TaskDef, q: TaskQueue) -> None:
    """Task 2's process dies the hard way."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    if task.task_id == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if task.task_id == 3:
        os._exit(3)


def unpicklable_result(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=lambda: None))  # type: ignore[arg-type]


WORKERS: dict[str, dict[str, Any]] = {
    "threads": {
        "seed": seed_shape,
        "fails": fails_on_three,
        "fail_fast": fails_then_waits,
        "noop": noop,
        "interrupt": interrupt_driver,
    },
    "processes": {
        "seed": seed_shape,
        "fails": fails_on_three,
        "fail_fast": fails_then_waits,
        "noop": noop,
        "interrupt": interrupt_driver,
    },
    "dask": {
        "seed": seed_shape,
        "fails": fails_on_three,
        "fail_fast": fails_then_waits,
        "noop": noop,
        "interrupt": interrupt_driver,
    },
    "async": {
        "seed": seed_shape_async,
        "fails": fails_on_three_async,
        "fail_fast": fails_then_waits_async,
        "noop": noop_async,
        "interrupt": interrupt_driver_async,
    },
}


def logs_a_line(task: TaskDef, q: TaskQueue) -> None:
    logging.getLogger("user.etl").warning("loaded %s in pid %d", task.name, os.getpid())


def holds_briefly(task: TaskDef, q: TaskQueue) -> None:
    """Records its start and finish; a ``"warehouse"`` task holds it for 30 ms between."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    if task.payload == "warehouse":
        import time

        time.sleep(0.03)
    q.put(MsgTaskFinished(task.task_id, "done", utc_now()))


async def holds_briefly_async(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    if task.payload == "warehouse":
        await asyncio.sleep(0.03)
    q.put(MsgTaskFinished(task.task_id, "done", utc_now()))
