"""Stages: a three-stage chain over a million generated items; peak RSS, wall time, tasks/s.

``extract(n) -> transform(x) -> load(x)`` per item, declared with ``pipe.map(transform,
extract)``: each completion makes the next stage's task for its item, admitted before new
source items, so the graph is never built and memory should not grow with the item count.
``--flat`` runs the same number of tasks (3 x items) as one flat map instead, for the writer
throughput the chain should keep. Run each mode as its own process: ``ru_maxrss`` is the
process's high-water mark.

    uv run python benchmarks/stages.py --items 1000000
    uv run python benchmarks/stages.py --items 1000000 --flat
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

from pipeloom import Context, Pipeline


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def items(n: int) -> Iterator[int]:
    yield from range(1, n + 1)


def build(db: Path, n: int, workers: int, flat: bool) -> Pipeline:
    pipe = Pipeline("stages-bench", db=db, workers=workers)

    @pipe.task
    def extract(ctx: Context, n: int) -> int:
        return n

    @pipe.task
    def transform(ctx: Context, x: int) -> int:
        return x + 1

    @pipe.task
    def load(ctx: Context, x: int) -> int:
        return x

    if flat:
        pipe.map(extract, items(3 * n))
    else:
        pipe.map(load, pipe.map(transform, pipe.map(extract, items(n))))
    return pipe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--flat", action="store_true", help="3 x items tasks, no stages")
    args = parser.parse_args()
    baseline = rss_mb()
    tasks = 3 * args.items
    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        db = Path(tmp) / "stages.db"
        pipe = build(db, args.items, args.workers, args.flat)
        t0 = time.perf_counter()
        result = pipe.run(progress=False)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peak = rss_mb()
        conn = sqlite3.connect(db)
        (done,) = conn.execute("SELECT count(*) FROM task_runs WHERE status = 'done'").fetchone()
        loads = 0
        if not args.flat:
            sql = (
                "SELECT count(*) FROM task_runs WHERE task_key LIKE 'load:%' AND result IS NOT NULL"
            )
            (loads,) = conn.execute(sql).fetchone()
        conn.close()
    ok = done == tasks and result.counts == {"done": tasks}
    if not args.flat:
        ok = ok and loads == args.items
    print(
        json.dumps(
            {
                "bench": "stages-flat" if args.flat else "stages-chain",
                "items": args.items,
                "tasks": tasks,
                "workers": args.workers,
                "wall_s": round(wall, 3),
                "tasks_per_s": round(tasks / wall),
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                "peak_rss_mb": round(peak, 1),
                "rss_before_run_mb": round(baseline, 1),
                "verified": ok,
            }
        ),
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
