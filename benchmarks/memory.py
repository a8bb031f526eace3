"""Memory: a million one-step tasks from a generator; peak RSS and wall time, one JSON line.

The tasks are never materialised: workers pull them from the generator, so peak RSS should
not grow with the task count. Run it as its own process (run_all.py does): ``ru_maxrss`` is
the whole process's high-water mark.

    uv run python benchmarks/memory.py --tasks 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeloom import (
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    TaskDef,
    run_pipeline,
    utc_now,
)


def worker(task: TaskDef, q: Any) -> None:
    tid = task.task_id
    q.put(MsgTaskStarted(tid, task.name, utc_now()))
    q.put(MsgTaskProgress(tid, 1, 1))
    q.put(MsgTaskFinished(tid, "done", utc_now()))


def tasks(n: int) -> Iterator[TaskDef]:
    for i in range(1, n + 1):
        yield TaskDef(i, f"task-{i}")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    baseline = rss_mb()
    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        db = Path(tmp) / "memory.db"
        t0 = time.perf_counter()
        result = run_pipeline(
            tasks(args.tasks), db, workers=args.workers, worker_fn=worker, progress=False
        )
        wall = time.perf_counter() - t0
        peak = rss_mb()
        conn = sqlite3.connect(db)
        (done,) = conn.execute("SELECT count(*) FROM task_runs WHERE status = 'done'").fetchone()
        conn.close()
    print(
        json.dumps(
            {
                "bench": "memory",
                "tasks": args.tasks,
                "workers": args.workers,
                "wall_s": round(wall, 3),
                "tasks_per_s": round(args.tasks / wall),
                "peak_rss_mb": round(peak, 1),
                "rss_before_run_mb": round(baseline, 1),
                "done": done,
                "verified": done == args.tasks and result.counts == {"done": args.tasks},
            }
        ),
        flush=True,
    )
    return 0 if done == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
