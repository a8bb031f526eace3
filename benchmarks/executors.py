"""What each executor is for, measured: CPU-bound work on processes, I/O waits on async.

Usage::

    uv run python benchmarks/executors.py            # all cases
    uv run python benchmarks/executors.py --case cpu

Cases (one JSON line each):
- ``cpu``: 16 tasks of ~0.3 s of pure Python each, 2 workers, on threads and on processes;
  the speed-up of processes over threads (the GIL lets threads use one core).
- ``async``: 5,000 ``async def`` tasks that each ``await asyncio.sleep(0.5)``, with
  ``workers=5000`` on the async executor: wall time and peak RSS of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeloom import TaskDef, TaskQueue, run_pipeline

CPU_TASKS = 16
CPU_LOOPS = 5_000_000
"""Iterations of the CPU task's loop; about 0.3 s of pure Python on this machine."""
ASYNC_TASKS = 5_000


def burn(task: TaskDef, q: TaskQueue) -> None:
    """About 0.3 s of pure Python: holds the GIL the whole time."""
    total = 0
    for i in range(CPU_LOOPS):
        total += i * i % 7


async def wait_half_a_second(task: TaskDef, q: TaskQueue) -> None:
    """One I/O wait, as an HTTP call would be."""
    await asyncio.sleep(0.5)


def _timed(executor: str, worker: Any, n: int, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pipeloom-exec-") as tmp:
        t0 = time.perf_counter()
        result = run_pipeline(
            [TaskDef(i, f"t{i}") for i in range(1, n + 1)],
            Path(tmp) / "bench.db",
            worker_fn=worker,
            workers=workers,
            executor=executor,
            progress=False,
        )
        wall = time.perf_counter() - t0
    return {
        "executor": executor,
        "tasks": n,
        "workers": workers,
        "wall_s": round(wall, 3),
        "ok": result.ok,
    }


def cpu_case() -> None:
    one = time.perf_counter()
    burn(TaskDef(0, "probe"), None)  # type: ignore[arg-type]
    task_s = time.perf_counter() - one
    threads = _timed("threads", burn, CPU_TASKS, 2)
    processes = _timed("processes", burn, CPU_TASKS, 2)
    print(
        json.dumps(
            {
                "bench": "cpu",
                "one_task_s": round(task_s, 3),
                "threads": threads,
                "processes": processes,
                "speedup": round(threads["wall_s"] / processes["wall_s"], 2),
            }
        ),
        flush=True,
    )


def async_case() -> None:
    res = _timed("async", wait_half_a_second, ASYNC_TASKS, ASYNC_TASKS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"bench": "async", **res, "peak_rss_mb": round(rss, 1)}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=["cpu", "async", "all"], default="all")
    args = parser.parse_args()
    if args.case in ("async", "all"):
        async_case()  # first: the peak RSS is the whole process's
    if args.case in ("cpu", "all"):
        cpu_case()
    return 0


if __name__ == "__main__":
    sys.exit(main())
