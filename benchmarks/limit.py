"""The messaging limit vs pipeloom on a user-like workload, one JSON line per run.

The workload looks like users' workers: plain ints as tasks, keyword-argument messages, a
message text per progress step (``f"step {s}/{S}"``), ``datetime.now(UTC).isoformat()``
timestamps and a result string per task; 4 workers; stdout is not a terminal.

- ``--impl limit``: the same messages made by 4 plain threads pulling from a shared iterator
  and put on a ``queue.SimpleQueue``; one consumer thread discards them; nothing is persisted.
  No framework can be faster than this at making and handing over the messages.
- ``--impl pipeloom``: `run_pipeline` over the same tasks and worker function, persisted to a
  file, which is then checked (every task ``done`` with its result, ``integrity_check`` ok).

Run each in its own process and alternate them (run_all.py does):

    uv run python benchmarks/limit.py --impl limit --tasks 100000 --steps 1
    uv run python benchmarks/limit.py --impl pipeloom --tasks 100000 --steps 1
"""

from __future__ import annotations

import argparse
import json
import queue
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeloom import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, run_pipeline

_STOP = object()


def make_worker(steps: int) -> Callable[[int, Any], None]:
    """A user-like worker: what a real task sends, with no work in between."""

    def worker(task: int, q: Any) -> None:
        q.put(
            MsgTaskStarted(
                task_id=task, name=f"task {task}", started_at=datetime.now(UTC).isoformat()
            )
        )
        for s in range(1, steps + 1):
            q.put(MsgTaskProgress(task_id=task, step=s, total=steps, message=f"step {s}/{steps}"))
        q.put(
            MsgTaskFinished(
                task_id=task,
                status="done",
                finished_at=datetime.now(UTC).isoformat(),
                result=f"result of {task}",
            )
        )

    return worker


def run_limit(tasks: list[int], steps: int, workers: int) -> int:
    """4 threads, a shared iterator, a SimpleQueue and a discarding consumer; messages seen."""
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    worker = make_worker(steps)
    source = iter(tasks)
    seen: list[int] = []

    def consume() -> None:
        n = 0
        get = q.get
        while get() is not _STOP:
            n += 1
        seen.append(n)

    def work() -> None:
        for task in source:
            worker(task, q)

    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.put(_STOP)
    consumer.join()
    return seen[0]


def verify(db: Path, n: int) -> bool:
    """Every task recorded done with its result and full progress; the file is sound."""
    conn = sqlite3.connect(db)
    try:
        (integrity,) = conn.execute("PRAGMA integrity_check").fetchone()
        done, results, rows = conn.execute(
            "SELECT sum(status = 'done' AND progress = 1.0), "
            "sum(result = 'result of ' || task_id), count(*) FROM task_runs"
        ).fetchone()
    finally:
        conn.close()
    return bool(integrity == "ok" and done == n and results == n and rows == n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=("limit", "pipeloom"), required=True)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--label", default="limit")
    args = parser.parse_args()
    n, steps = args.tasks, args.steps
    tasks = list(range(1, n + 1))
    messages = n * (steps + 2)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        db = Path(tmp) / "limit.db"
        t0 = time.perf_counter()
        if args.impl == "limit":
            consumed = run_limit(tasks, steps, args.workers)
            wall = time.perf_counter() - t0
            ok = consumed == messages
        else:
            run_pipeline(tasks, db, workers=args.workers, worker_fn=make_worker(steps))
            wall = time.perf_counter() - t0
            ok = verify(db, n)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = {
        "bench": args.label,
        "impl": args.impl,
        "tasks": n,
        "steps": steps,
        "workers": args.workers,
        "messages": messages,
        "wall_s": round(wall, 3),
        "msgs_per_s": round(messages / wall),
        "tasks_per_s": round(n / wall),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime, 3),
        "voluntary_switches": usage.ru_nvcsw - usage0.ru_nvcsw,
        "involuntary_switches": usage.ru_nivcsw - usage0.ru_nivcsw,
        "verified": ok,
    }
    print(json.dumps(line), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
