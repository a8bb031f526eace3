"""A pipeline run in a child process, for the reliability tests to kill, interrupt or race.

Usage: ``python rel_child.py MODE DB EVENTS [N]``. It runs `run_pipeline` on DB with N tasks
and appends one line per committed event to EVENTS (``S <task_id>`` when a start was
committed, ``F <task_id> <status>`` when a finish was), written straight to the file after
each commit, so a test that kills this process knows what the database held. At the end it
prints the `RunResult` as one JSON line and exits with `RunResult.exit_code` (130 after
Ctrl-C, 143 after SIGTERM, 0 when done).

Modes:
    kill: thousands of very short tasks (the test SIGKILLs the process mid-run).
    sigint: short sleeping tasks (the test sends one SIGINT).
    sigint2: task ids divisible by 5 block for a minute (the test sends two SIGINTs).
    race: short tasks, run name taken from the EVENTS file name (two processes, one file).
    endless: sleepy tasks from an endless generator (the test sends one SIGINT).
    endless2: blocking tasks from an endless generator (the test sends two SIGINTs).
    steady: 5 ms tasks from an endless generator, committing all the time while the file
        stays small (the test reads it meanwhile, then sends one SIGINT).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from pipeloom import (
    AppliedBatch,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    RunResult,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)


def short_task(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    q.put(MsgTaskProgress(task.task_id, 1, 2, "half"))
    time.sleep(0.0005)
    q.put(MsgTaskProgress(task.task_id, 2, 2, "all"))
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=str(task.task_id)))


def sleepy_task(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    time.sleep(0.1)
    q.put(MsgTaskFinished(task.task_id, "done", utc_now()))


def steady_task(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    time.sleep(0.005)
    q.put(MsgTaskFinished(task.task_id, "done", utc_now()))


def blocking_task(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    time.sleep(60.0 if task.task_id % 5 == 0 else 0.01)
    q.put(MsgTaskFinished(task.task_id, "done", utc_now()))


WORKERS = {
    "kill": short_task,
    "sigint": sleepy_task,
    "sigint2": blocking_task,
    "race": short_task,
    "endless": sleepy_task,
    "endless2": blocking_task,
    "steady": steady_task,
}


def cli_main(db: Path, mode: str = "sigint", n: int = 200) -> RunResult:
    """Target for ``pipeloom run rel_child.py:cli_main`` (Ctrl-C through the real CLI)."""
    tasks = [TaskDef(i, f"task-{i}") for i in range(1, n + 1)]
    return run_pipeline(tasks, db, worker_fn=WORKERS[mode], workers=4, run_name=f"cli-{mode}")


def main() -> int:
    mode, db, events = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 3000
    fd = os.open(events, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(applied: AppliedBatch) -> None:
        lines = [f"S {task_id}\n" for task_id, _ in applied.started]
        lines += [f"F {task_id} {status}\n" for task_id, status in applied.finished]
        if lines:
            os.write(fd, "".join(lines).encode())

    tasks: Iterable[TaskDef] = [TaskDef(i, f"task-{i}") for i in range(1, n + 1)]
    if mode.startswith("endless") or mode == "steady":
        tasks = (TaskDef(i, f"task-{i}") for i in itertools.count(1))
    result = run_pipeline(
        tasks,
        db,
        worker_fn=WORKERS[mode],
        workers=4,
        progress=False,
        listeners=[record],
        run_name=events.stem,
    )
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "status": result.status,
                "counts": result.counts,
                "messages": result.messages,
                "dead_letters": result.dead_letters,
                "not_started": result.not_started,
                "ok": result.ok,
            }
        ),
        flush=True,
    )
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
