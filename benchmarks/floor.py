"""The floor: the throughput workload with no framework, one JSON line.

ThreadPoolExecutor (one future per task), a ``queue.Queue`` and a consumer thread that
discards every message. The workers build the same message objects as in throughput.py,
so the difference is what pipeloom adds (or saves).

    uv run python benchmarks/floor.py --tasks 1000 --steps 100
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeloom import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, TaskDef, utc_now

_STOP = object()


def make_worker(steps: int) -> Any:
    """The same no-op workload as throughput.py."""

    def worker(task: TaskDef, q: Any) -> None:
        tid = task.task_id
        put = q.put
        put(MsgTaskStarted(tid, task.name, utc_now()))
        for i in range(1, steps + 1):
            put(MsgTaskProgress(tid, i, steps))
        put(MsgTaskFinished(tid, "done", utc_now()))

    return worker


def consume(q: queue.Queue[Any], counter: list[int]) -> None:
    n = 0
    get = q.get
    while True:
        if get() is _STOP:
            break
        n += 1
    counter.append(n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--label", default="floor")
    args = parser.parse_args()
    n, steps = args.tasks, args.steps
    tasks = [TaskDef(i, f"task-{i}", steps=steps) for i in range(1, n + 1)]
    worker = make_worker(steps)
    q: queue.Queue[Any] = queue.Queue()
    counter: list[int] = []
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage0.ru_utime + usage0.ru_stime
    t0 = time.perf_counter()
    consumer = threading.Thread(target=consume, args=(q, counter))
    consumer.start()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(worker, t, q) for t in tasks]
        for f in futures:
            f.result()
    q.put(_STOP)
    consumer.join()
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    messages = n * (steps + 2)
    print(
        json.dumps(
            {
                "bench": args.label,
                "impl": "floor",
                "tasks": n,
                "steps": steps,
                "workers": args.workers,
                "messages": messages,
                "consumed": counter[0],
                "wall_s": round(wall, 3),
                "msgs_per_s": round(messages / wall),
                "tasks_per_s": round(n / wall),
                "peak_rss_mb": round(rss_mb, 1),
                "cpu_s": round(cpu, 3),
                "verified": counter[0] == messages,
            }
        ),
        flush=True,
    )
    return 0 if counter[0] == messages else 1


if __name__ == "__main__":
    sys.exit(main())
