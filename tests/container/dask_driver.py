"""The host side of the container tests' Dask cluster: a pipeline of 1,000 tasks.

Run as a script, ``python dask_driver.py tcp://HOST:PORT DB``, so that `work` is defined in
``__main__`` and travels to the worker containers by value (cloudpickle), while what it
imports (pipeloom, distributed) is installed in the image.

The arrangement that makes a rerun certain: on the worker named `HELD_ON`, every task after
`HOLD_AFTER` holds on (at most `HOLD_MAX` seconds) after reporting where it runs. The test
kills that worker once the record shows it holding a task; Dask then runs the killed
worker's chunks again on the other worker, where nothing holds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeloom import TaskDef, run_pipeline
from pipeloom.executors import TaskQueue
from pipeloom.executors.dask import DaskExecutor
from pipeloom.messages import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, utc_now

TASKS = 1000
HELD_ON = "w1"
HOLD_AFTER = 100
HOLD_MAX = 300.0
CHUNK = 10
"""Small chunks keep both workers busy until the end (each future runs ten tasks)."""


def work(task: TaskDef, q: TaskQueue) -> None:
    """Report which worker runs the task; hold on where the test will kill the worker."""
    from distributed import get_worker

    where = str(get_worker().name)
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    q.put(MsgTaskProgress(task.task_id, 0, 1, f"on {where}"))
    if where == HELD_ON and task.task_id > HOLD_AFTER:
        deadline = time.monotonic() + HOLD_MAX
        while time.monotonic() < deadline:  # until the test kills this worker
            time.sleep(0.05)
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=where))


def main(address: str, db: Path) -> int:
    """Wait for both workers, run the pipeline, exit 0 when every task is done."""
    from distributed import Client

    with Client(address, timeout=60) as client:  # type: ignore[no-untyped-call]
        client.wait_for_workers(2, timeout=120)
    tasks = [TaskDef(i, f"task-{i}") for i in range(1, TASKS + 1)]
    result = run_pipeline(
        tasks,
        db,
        worker_fn=work,
        executor=DaskExecutor(address=address, chunk_size=CHUNK),
        run_name="dask-containers",
        progress=True,
    )
    print(f"{result.status} {dict(result.counts)}", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
