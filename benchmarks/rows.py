"""The row path: domain rows through pipeloom against a hand-made loader, same rows, same table.

T tasks each make R rows (one small frozen dataclass a row) for a table with a primary key,
applied by an ``executemany`` handler. Modes (each run in its own process, alternating):

- ``hand``: the hand-made loader: 4 threads make the same row objects onto a
  ``queue.SimpleQueue``, one thread applies them with the same handler in transactions of
  5,000 rows (WAL, ``synchronous=NORMAL``);
- ``atomic`` / ``stream``: a pipeline task per T, ``ctx.emit`` per row, atomic (the default)
  or ``atomic=False``, 4 threads;
- ``many`` / ``many-stream``: the same with one ``ctx.emit_many(rows)`` per task;
- ``proc-atomic`` / ``proc-many``: ``ctx.emit`` / ``ctx.emit_many`` on the process executor
  (2 workers): the rows are made in child processes and cross to the driver. Its line gives
  the driver's CPU time per row (``driver_cpu_us_per_row``), all of the driver's threads;
- ``dask-atomic`` / ``dask-many``: the same on a 2-worker LocalCluster (started before the
  clock; its scheduler runs in the driver process, so its CPU counts as the driver's).

Each run checks the table holds T x R rows and every task is ``done``. One JSON line per run,
then a summary with medians and the ratio of each mode's rows/s to the hand-made loader's::

    uv run python benchmarks/rows.py                          # hand, atomic, stream; 3 rounds
    uv run python benchmarks/rows.py --modes hand,atomic,many,proc-atomic,proc-many
    PIPELOOM_PROFILE=/tmp/prof uv run python benchmarks/rows.py --run atomic  # every thread
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _runs import alternate, finish  # type: ignore[import-not-found]

from pipeloom import Context, Pipeline

TXN_ROWS = 5_000


@dataclass(frozen=True, slots=True)
class Row:
    """One domain row."""

    task: int
    n: int
    amount: int
    label: str


def schema(conn: sqlite3.Connection) -> None:
    """A table with a primary key and a CHECK, like a real target."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS rows (task INTEGER NOT NULL, n INTEGER NOT NULL, "
        "amount INTEGER NOT NULL CHECK (amount >= 0), label TEXT NOT NULL, "
        "PRIMARY KEY (task, n))"
    )


def save_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    """The handler (also the hand-made loader's): one executemany."""
    conn.executemany(
        "INSERT INTO rows VALUES (?, ?, ?, ?)", [(r.task, r.n, r.amount, r.label) for r in rows]
    )


def make_rows(task: int, rows: int) -> list[Row]:
    """One task's rows."""
    label = f"task-{task}"
    return [Row(task, n, n, label) for n in range(rows)]


ROWS_PER_TASK = int(os.environ.get("PIPELOOM_ROWS_PER_TASK", "1000"))

pipe = Pipeline("rows", db="rows.db", workers=4, schema=schema)
pipe.register(Row, save_rows)


@pipe.task
def emit_one(ctx: Context, task: int) -> int:
    """``ctx.emit`` per row (atomic)."""
    emit = ctx.emit
    for row in make_rows(task, ROWS_PER_TASK):
        emit(row)
    return ROWS_PER_TASK


@pipe.task(atomic=False)
def emit_one_stream(ctx: Context, task: int) -> int:
    """``ctx.emit`` per row, streamed."""
    emit = ctx.emit
    for row in make_rows(task, ROWS_PER_TASK):
        emit(row)
    return ROWS_PER_TASK


@pipe.task
def emit_many(ctx: Context, task: int) -> int:
    """One ``ctx.emit_many`` per task (atomic)."""
    ctx.emit_many(make_rows(task, ROWS_PER_TASK))
    return ROWS_PER_TASK


@pipe.task(atomic=False)
def emit_many_stream(ctx: Context, task: int) -> int:
    """One ``ctx.emit_many`` per task, streamed."""
    ctx.emit_many(make_rows(task, ROWS_PER_TASK))
    return ROWS_PER_TASK


TASKS = {
    "atomic": (emit_one, "threads"),
    "stream": (emit_one_stream, "threads"),
    "many": (emit_many, "threads"),
    "many-stream": (emit_many_stream, "threads"),
    "proc-atomic": (emit_one, "processes"),
    "proc-many": (emit_many, "processes"),
    "dask-atomic": (emit_one, "dask"),
    "dask-many": (emit_many, "dask"),
}


def run_hand(db: Path, tasks: int, rows: int) -> None:
    """The hand-made loader: 4 producer threads, one executemany thread."""
    q: queue.SimpleQueue[Row | None] = queue.SimpleQueue()
    todo = iter(range(tasks))
    lock = threading.Lock()

    def produce() -> None:
        put = q.put
        while True:
            with lock:
                task = next(todo, None)
            if task is None:
                return
            for row in make_rows(task, rows):
                put(row)

    def consume() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        schema(conn)
        batch: list[Row] = []
        get = q.get
        while True:
            row = get()
            if row is not None:
                batch.append(row)
            if len(batch) >= TXN_ROWS or (row is None and batch):
                conn.execute("BEGIN")
                save_rows(conn, batch)
                conn.execute("COMMIT")
                batch = []
            if row is None:
                conn.close()
                return

    writer = threading.Thread(target=consume)
    writer.start()
    producers = [threading.Thread(target=produce) for _ in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    q.put(None)
    writer.join()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_dask(db: Path, workers: int | None) -> tuple[Any, float, float]:
    """A run on a 2-worker LocalCluster started (and warmed) before the clock."""
    from distributed import Client, LocalCluster

    from pipeloom.executors import DaskExecutor

    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        client.run(lambda: None)
        t0, cpu0 = time.perf_counter(), _cpu()
        executor = DaskExecutor(client=client)
        result = pipe.run(db=db, workers=workers, executor=executor, progress=False)
        return result, time.perf_counter() - t0, _cpu() - cpu0


def run_once(mode: str, tasks: int, rows: int, workers: int | None) -> dict[str, Any]:
    """One run in a fresh file; returns its JSON line."""
    with tempfile.TemporaryDirectory(prefix="pipeloom-rows-") as tmp:
        db = Path(tmp) / "rows.db"
        profile = os.environ.get("PIPELOOM_PROFILE")
        if profile:
            from _profile import install  # type: ignore[import-not-found]

            install(profile, f"rows-{mode}")
        cpu0 = _cpu()
        t0 = time.perf_counter()
        done = tasks
        cpu: float | None = None
        if mode == "hand":
            run_hand(db, tasks, rows)
        else:
            task, executor = TASKS[mode]
            pipe._stages.clear()  # one mapping per run (a benchmark may reach in)
            pipe.map(task, range(tasks))
            if executor == "dask":
                result, wall, cpu = _run_dask(db, workers)
            else:
                n = workers or (2 if executor == "processes" else 4)
                result = pipe.run(db=db, workers=n, executor=executor, progress=False)
                wall = time.perf_counter() - t0
            done = result.counts.get("done", 0)
        if mode == "hand":
            wall = time.perf_counter() - t0
        if cpu is None:
            cpu = _cpu() - cpu0
        conn = sqlite3.connect(db)
        try:
            (stored,) = conn.execute("SELECT count(*) FROM rows").fetchone()
        finally:
            conn.close()
    total = tasks * rows
    return {
        "bench": "rows",
        "mode": mode,
        "tasks": tasks,
        "rows_per_task": rows,
        "wall_s": round(wall, 3),
        "rows_per_s": round(total / wall),
        "driver_cpu_s": round(cpu, 3),
        "driver_cpu_us_per_row": round(cpu / total * 1e6, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "verified": stored == total and done == tasks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", default="hand,atomic,stream")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rows", type=int, default=ROWS_PER_TASK)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run", help="one run of this mode in this process")
    parser.add_argument("--json-out", help="append the JSON lines to this file as well")
    args = parser.parse_args()
    if args.run:
        line = run_once(args.run, args.tasks, args.rows, args.workers)
        print(json.dumps(line), flush=True)
        return 0
    modes = args.modes.split(",")
    env = {**os.environ, "PIPELOOM_ROWS_PER_TASK": str(args.rows)}
    sizes = ["--tasks", str(args.tasks), "--rows", str(args.rows)]
    sizes += ["--workers", str(args.workers)] if args.workers else []
    lines = alternate(__file__, modes, args.repeat, lambda mode: ["--run", mode, *sizes], env)
    rates = {m: statistics.median(x["rows_per_s"] for x in lines if x["mode"] == m) for m in modes}
    summary: dict[str, Any] = {
        "bench": "rows_summary",
        "median_rows_per_s": rates,
        "driver_cpu_us_per_row": {
            m: statistics.median(x["driver_cpu_us_per_row"] for x in lines if x["mode"] == m)
            for m in modes
        },
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "verified": all(x["verified"] for x in lines),
    }
    if "hand" in rates:
        summary["over_hand"] = {m: round(r / rates["hand"], 2) for m, r in rates.items()}
    return int(finish(lines, summary, args.json_out))


if __name__ == "__main__":
    sys.exit(main())
