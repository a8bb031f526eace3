"""Cost of atomic task output: T tasks each emitting R rows, atomic vs ``atomic=False``.

A declarative pipeline whose tasks each ``ctx.emit`` R small row messages to one
``executemany`` handler. ``atomic`` holds each task's rows and commits them with its ``done``
row; ``stream`` sends every row to the writer as it is emitted. The modes alternate, each run in
its own process (so its peak RSS is its own), one JSON line per run, then one summary line
with the median wall times. Each run checks the file holds every row
and every task ``done``.

    uv run python benchmarks/atomic.py --tasks 200 --rows 1000 --repeat 3
    uv run python benchmarks/atomic.py --bad 1   # one task's rows rejected by the handler
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _runs import alternate, finish  # type: ignore[import-not-found]

from pipeloom import Context, Pipeline


@dataclass(frozen=True, slots=True)
class MsgRow:
    """One domain row, as a loader would emit it."""

    task: int
    n: int
    amount: int


def schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE rows (task INTEGER, n INTEGER, amount INTEGER CHECK (amount >= 0))")


def save_rows(conn: sqlite3.Connection, msgs: list[MsgRow]) -> None:
    conn.executemany("INSERT INTO rows VALUES (?, ?, ?)", [(m.task, m.n, m.amount) for m in msgs])


def run_once(mode: str, tasks: int, rows: int, workers: int, bad: int = 0) -> dict[str, Any]:
    """One pipeline run in a fresh file; returns its JSON-able figures.

    The first ``bad`` tasks emit one row the handler rejects (a CHECK constraint) halfway.
    """
    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        db = Path(tmp) / "atomic.db"
        pipe = Pipeline("bench", db=db, workers=workers, schema=schema)
        pipe.register(MsgRow, save_rows)

        @pipe.task(atomic=mode == "atomic")
        def load(ctx: Context, task: int) -> int:
            emit = ctx.emit
            for n in range(rows):
                emit(MsgRow(task, n, -1 if task < bad and n == rows // 2 else n))
            return rows

        pipe.map(load, range(tasks))
        t0 = time.perf_counter()
        result = pipe.run(progress=False)
        wall = time.perf_counter() - t0
        conn = sqlite3.connect(db)
        try:
            (stored,) = conn.execute("SELECT count(*) FROM rows").fetchone()
            (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        finally:
            conn.close()
    total = tasks * rows
    # Streaming keeps a bad task's other rows; atomic keeps none of them and dead-letters all.
    good = total - bad * rows if mode == "atomic" else total - bad
    dead_expected = bad * rows if mode == "atomic" else bad
    done_expected = tasks - bad if mode == "atomic" else tasks
    return {
        "bench": "atomic",
        "mode": mode,
        "tasks": tasks,
        "rows_per_task": rows,
        "bad_tasks": bad,
        "workers": workers,
        "rows": total,
        "wall_s": round(wall, 3),
        "rows_per_s": round(total / wall),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "verified": stored == good
        and dead == dead_expected
        and result.counts.get("done", 0) == done_expected,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bad", type=int, default=0, help="tasks with one rejected row")
    parser.add_argument("--mode", choices=("atomic", "stream"), help="one run in this process")
    parser.add_argument("--json-out", help="append the JSON lines to this file as well")
    args = parser.parse_args()
    if args.mode:
        line = run_once(args.mode, args.tasks, args.rows, args.workers, args.bad)
        print(json.dumps(line), flush=True)
        return 0
    sizes = ["--tasks", str(args.tasks), "--rows", str(args.rows)]
    sizes += ["--workers", str(args.workers), "--bad", str(args.bad)]
    modes = ("atomic", "stream")
    lines = alternate(__file__, modes, args.repeat, lambda mode: ["--mode", mode, *sizes])
    walls = {m: statistics.median(x["wall_s"] for x in lines if x["mode"] == m) for m in modes}
    rss = {m: max(x["peak_rss_mb"] for x in lines if x["mode"] == m) for m in modes}
    rows = args.tasks * args.rows
    summary = {
        "bench": "atomic_summary",
        "rows": rows,
        "bad_tasks": args.bad,
        "atomic_wall_s": walls["atomic"],
        "stream_wall_s": walls["stream"],
        "atomic_rows_per_s": round(rows / walls["atomic"]),
        "stream_rows_per_s": round(rows / walls["stream"]),
        "atomic_over_stream_wall": round(walls["atomic"] / walls["stream"], 2),
        "atomic_peak_rss_mb": rss["atomic"],
        "stream_peak_rss_mb": rss["stream"],
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "verified": all(x["verified"] for x in lines),
    }
    return int(finish(lines, summary, args.json_out))


if __name__ == "__main__":
    sys.exit(main())
