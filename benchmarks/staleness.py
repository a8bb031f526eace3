"""Staleness: how long after a worker's ``finished`` message another connection sees the row.

Each task stores the ``time.monotonic()`` at which its worker sent Finished in ``result``. A
reader in a separate process (its own connection, like ``pipeloom status`` or Datasette)
polls ``task_runs`` every millisecond and records, for every task, when it first saw the row
``done``. ``CLOCK_MONOTONIC`` is system-wide on Linux, so the two clocks compare. One JSON line
per load: ``paced`` (each task sleeps ``--work-ms``, the usual case) and ``saturated`` (no-op
tasks at full speed: the queue fills, so the delay is mostly waiting behind the backlog).

    uv run python benchmarks/staleness.py
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pipeloom import MsgTaskFinished, MsgTaskStarted, TaskDef, run_pipeline, utc_now


def read_until(db: Path, n: int, deadline_s: float, poll_s: float) -> list[float]:
    """The reader process: poll until ``n`` tasks were seen done; return their delays."""
    end = time.monotonic() + deadline_s
    while not db.exists() and time.monotonic() < end:
        time.sleep(poll_s)
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    delays: list[float] = []
    seen: set[int] = set()
    since = newest = ""
    while len(seen) < n and time.monotonic() < end:
        try:
            found = conn.execute(
                "SELECT task_id, result, finished_at FROM task_runs "
                "WHERE status = 'done' AND finished_at >= ?",
                (since,),
            ).fetchall()
        except sqlite3.OperationalError:  # the schema is not there yet
            time.sleep(poll_s)
            continue
        now = time.monotonic()
        for task_id, sent, finished_at in found:
            if task_id not in seen:
                seen.add(task_id)
                delays.append(now - float(sent))
                newest = max(newest, finished_at)
        if newest:  # look back 2 s: a row can commit after a later-stamped one
            since = (datetime.fromisoformat(newest) - timedelta(seconds=2)).isoformat(
                timespec="milliseconds"
            )
        time.sleep(poll_s)
    conn.close()
    return delays


def measure(load: str, n: int, workers: int, work_ms: float, poll_ms: float) -> dict[str, Any]:
    def worker(task: TaskDef, q: Any) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        if work_ms:
            time.sleep(work_ms / 1000)
        q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=repr(time.monotonic())))

    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        db = Path(tmp) / "stale.db"
        reader = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--reader",
                str(db),
                "--tasks",
                str(n),
                "--poll-ms",
                str(poll_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.3)  # let the reader start before the first task finishes
        tasks = [TaskDef(i, f"task-{i}") for i in range(1, n + 1)]
        t0 = time.perf_counter()
        run_pipeline(tasks, db, workers=workers, worker_fn=worker, progress=False)
        wall = time.perf_counter() - t0
        out, _ = reader.communicate(timeout=120)
    delays_ms = sorted(d * 1000 for d in json.loads(out))
    q = statistics.quantiles(delays_ms, n=100) if len(delays_ms) > 1 else delays_ms * 99
    return {
        "bench": "staleness",
        "load": load,
        "tasks": n,
        "workers": workers,
        "work_ms": work_ms,
        "poll_ms": poll_ms,
        "seen": len(delays_ms),
        "wall_s": round(wall, 3),
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
        "max_ms": round(delays_ms[-1], 1) if delays_ms else None,
        "verified": len(delays_ms) == n,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work-ms", type=float, default=2.0)
    parser.add_argument("--poll-ms", type=float, default=1.0)
    parser.add_argument("--full-tasks", type=int, default=20_000)
    parser.add_argument("--reader", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        print(json.dumps(read_until(Path(args.reader), args.tasks, 100.0, args.poll_ms / 1000)))
        return 0
    ok = True
    for load, n, work in (("paced", args.tasks, args.work_ms), ("saturated", args.full_tasks, 0.0)):
        result = measure(load, n, args.workers, work, args.poll_ms)
        ok = ok and bool(result["verified"])
        print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
