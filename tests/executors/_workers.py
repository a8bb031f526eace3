"""Worker functions for the executor tests, at module level so worker processes import them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
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


def _ran(task: TaskDef) -> Path:
    return Path(task.payload) / f"ran-{task.task_id}"


def _wait_for(path: Path) -> bool:
    """Up to 30 s for ``path`` to appear (a bound, never a pace: it returns as soon as it does)."""
    for _ in range(3000):
        if path.exists():
            return True
        time.sleep(0.01)
    return False


def waits_for_task_3(task: TaskDef, q: TaskQueue) -> None:
    """Task 1 holds its worker until task 3 has run; every task notes that it ran.

    The process executor sends task 3 to wait behind task 1, so task 3 runs only if a free
    worker takes it back.
    """
    _ran(task).touch()
    if task.task_id == 1 and not _wait_for(Path(task.payload) / "ran-3"):
        raise TimeoutError("task 3 never ran while task 1 held its worker")


def holds_until_stopping(task: TaskDef, q: TaskQueue) -> None:
    """Task 2 fails (fail_fast stops the run); the others hold their worker until the stop."""
    _ran(task).touch()
    if task.task_id == 2:
        raise ValueError("task 2 fails")
    q.stopping.wait(30)


def hogs_the_gil_until_killed(task: TaskDef, q: TaskQueue) -> None:
    """Tasks 1 and 2 note that they began, then hold their process's GIL in C until killed:
    the child can neither read its pipe nor give back the task sent to wait behind."""
    _ran(task).touch()
    if task.task_id <= 2:
        sum(itertools.repeat(1, 10**13))


def dies_once_task_4_ran(task: TaskDef, q: TaskQueue) -> None:
    """Task 1's process dies once task 4 began; task 4 holds its worker until then.

    So task 3, sent to wait behind task 1, is still waiting there when its process dies.
    """
    _ran(task).touch()
    pid_file = Path(task.payload) / "pid-1"
    if task.task_id == 1:
        pid_file.write_text(str(os.getpid()))
        if _wait_for(_ran(TaskDef(4, "t4", payload=task.payload))):
            os._exit(5)
    if task.task_id == 4 and _wait_for(pid_file):
        pid = int(pid_file.read_text())
        for _ in range(3000):  # until task 1's process is gone (or a zombie)
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return
            if state == "Z":
                return
            time.sleep(0.01)
