"""Per-task overhead of the Dask executor: 10,000 tiny tasks on a 2-worker LocalCluster.

Prints one JSON line per measurement. Run: ``uv run python benchmarks/executors_dask.py``.
The cluster is started (and its workers warmed) before the clock starts; the figure covers
the run end to end: chunking, the round trips, the event stream and the SQLite writer.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster

from pipeloom import TaskDef, run_pipeline
from pipeloom.executors import DaskExecutor, TaskQueue
from pipeloom.messages import MsgTaskFinished, MsgTaskStarted, utc_now


def noop(task: Any, q: TaskQueue) -> None:
    """Return at once: the engine records the task done."""


def shaped(task: TaskDef, q: TaskQueue) -> None:
    """The shape users copy: Started, then Finished, no work."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    q.put(MsgTaskFinished(task.task_id, "done", utc_now()))


def measure(
    client: Client, worker: Any, n: int, db: Path, label: str, chunk_size: int | None = None
) -> dict[str, Any]:
    tasks = (TaskDef(i, f"t{i}") for i in range(1, n + 1))
    executor = DaskExecutor(client=client, chunk_size=chunk_size)
    started = time.perf_counter()
    result = run_pipeline(tasks, db, worker_fn=worker, executor=executor, progress=False)
    elapsed = time.perf_counter() - started
    assert result.counts.get("done") == n, result.counts
    return {
        "bench": "dask_per_task",
        "worker": label,
        "tasks": n,
        "chunk_size": chunk_size or "auto",
        "seconds": round(elapsed, 3),
        "ms_per_task": round(1000 * elapsed / n, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--unchunked", type=int, default=500, help="tasks for the one-future-per-task contrast"
    )
    args = parser.parse_args()
    print(json.dumps({"bench": "env", "cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]}))
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        measure(client, noop, 200, Path(tmp) / "warm.db", "warm-up")
        for i in range(args.repeat):
            for label, fn in (("noop", noop), ("started+finished", shaped)):
                row = measure(client, fn, args.tasks, Path(tmp) / f"{label}{i}.db", label)
                print(json.dumps(row), flush=True)
        if args.unchunked:
            db = Path(tmp) / "unchunked.db"
            row = measure(client, noop, args.unchunked, db, "noop", chunk_size=1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
