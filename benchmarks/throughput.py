"""Throughput of pipeloom: T tasks x S progress messages, no-op work, one JSON line.

Each task sends Started, S Progress and Finished, so a run moves T * (S + 2) messages.
Afterwards the file is checked: every task ``done``, progress 1.0, ``integrity_check`` ok.

    uv run python benchmarks/throughput.py --tasks 1000 --steps 100
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


def make_worker(steps: int) -> Any:
    """The no-op workload: only the messages a real task would send."""

    def worker(task: TaskDef, q: Any) -> None:
        tid = task.task_id
        put = q.put
        put(MsgTaskStarted(tid, task.name, utc_now()))
        for i in range(1, steps + 1):
            put(MsgTaskProgress(tid, i, steps))
        put(MsgTaskFinished(tid, "done", utc_now()))

    return worker


def task_defs(n: int, steps: int) -> Iterator[TaskDef]:
    for i in range(1, n + 1):
        yield TaskDef(i, f"task-{i}", steps=steps)


def verify(db: Path, n: int) -> dict[str, Any]:
    """Check the file really holds every task as done; returns what was found."""
    conn = sqlite3.connect(db)
    try:
        (integrity,) = conn.execute("PRAGMA integrity_check").fetchone()
        done, full = conn.execute(
            "SELECT count(*), sum(progress = 1.0) FROM task_runs WHERE status = 'done'"
        ).fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM task_runs").fetchone()
    finally:
        conn.close()
    ok = integrity == "ok" and done == n and full == n and rows == n
    return {"verified": ok, "integrity": integrity, "rows": rows, "done": done}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--progress", action="store_true", help="live bars (needs a terminal)")
    parser.add_argument("--generator", action="store_true", help="tasks from a generator")
    parser.add_argument("--json-out", help="append the JSON line to this file as well")
    parser.add_argument("--label", default="throughput")
    args = parser.parse_args()
    n, steps = args.tasks, args.steps
    tasks: Any = task_defs(n, steps) if args.generator else list(task_defs(n, steps))
    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        db = Path(tmp) / "bench.db"
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = usage0.ru_utime + usage0.ru_stime
        t0 = time.perf_counter()
        result = run_pipeline(
            tasks,
            db,
            workers=args.workers,
            worker_fn=make_worker(steps),
            progress=args.progress,
        )
        wall = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu0
        check = verify(db, n)
    messages = n * (steps + 2)
    line = json.dumps(
        {
            "bench": args.label,
            "impl": "pipeloom",
            "tasks": n,
            "steps": steps,
            "workers": args.workers,
            "progress": args.progress,
            "messages": messages,
            "writer_messages": result.messages,
            "wall_s": round(wall, 3),
            "msgs_per_s": round(messages / wall),
            "tasks_per_s": round(n / wall),
            "peak_rss_mb": round(rss_mb, 1),
            "cpu_s": round(cpu, 3),
            "voluntary_switches": usage.ru_nvcsw - usage0.ru_nvcsw,
            **check,
        }
    )
    print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return 0 if check["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
