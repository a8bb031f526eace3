"""Retention at scale: ``db prune --keep-runs 10`` on 1,000 runs x 10,000 tasks.

Self-contained: it makes its own file (pipeloom's schema, 10 million ``task_runs`` rows plus a
few attempts, logs and dead letters per run), then prunes it while a real pipeloom run writes
the same file, and prints one JSON line:

- ``prune_s``: wall-clock time of the prune (pauses included), its transactions and the
  longest one;
- ``max_wait_ms`` / ``p99_wait_ms``: the longest and 99th-percentile time a concurrent writer
  waited for the write lock during the prune (a probe process that takes the lock every 5 ms,
  as the pipeloom writer does for each commit);
- ``run_max_commit_gap_ms``: the longest gap between two commits of the concurrent pipeloom
  run (its writer commits at least every 20 ms while tasks flow);
- ``bytes_before`` / ``bytes_after_prune`` / ``bytes_after_vacuum`` and ``vacuum_s``.

    uv run python benchmarks/prune.py make /tmp/history.db   # 1,000 x 10,000 (about 3 GB;
                                                             # again to continue a short one)
    uv run python benchmarks/prune.py prune /tmp/history.db  # prune it, measure, vacuum
    uv run python benchmarks/prune.py --runs 50 --tasks 1000 # both, small, in a temp dir
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pipeloom import TaskDef, TaskQueue, run_pipeline
from pipeloom.db import connect, init_schema
from pipeloom.retention import Pacing, Retention, file_bytes, prune, vacuum
from pipeloom.writer import AppliedBatch


def make_history(db: Path, runs: int, tasks: int) -> float:
    """Write finished runs of ``tasks`` task rows each until ``db`` has ``runs``; seconds."""
    began = time.perf_counter()
    conn = connect(db)
    init_schema(conn, str(db))
    # Made once, not a durability test: no WAL copy to write twice, no fsync.
    conn.execute("PRAGMA journal_mode = MEMORY")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -400000")
    # Continues a file an earlier call left short (each call may be time-boxed).
    (have,) = conn.execute("SELECT coalesce(max(id), 0) FROM pipeline_runs").fetchone()
    for run in range(int(have) + 1, runs + 1):
        day = "2025-01-01T00:00:00+00:00"
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO pipeline_runs (id, name, status, started_at, finished_at, workers, "
            "tasks_total, tasks_done, tasks_error, tasks_finished, host, pid) "
            "VALUES (?, 'hourly', 'error', datetime(?, ? || ' hours'), "
            "datetime(?, ? || ' hours', '+50 minutes'), 8, ?, ?, ?, ?, 'bench', 1)",
            (run, day, run, day, run, tasks, tasks - tasks // 100, tasks // 100, tasks),
        )
        # One statement per run: a recursive CTE makes the rows inside SQLite.
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO task_runs (run_id, task_id, task_key, name, status, progress, "
            "started_at, finished_at, result, error, attempt, stage) "
            "SELECT ?, i, 'load:data/part-' || i || '.csv', 'load', "
            "CASE WHEN i % 100 = 0 THEN 'error' ELSE 'done' END, 1.0, "
            "'2025-01-01T00:00:00.000+00:00', '2025-01-01T00:00:01.000+00:00', "
            "CASE WHEN i % 100 = 0 THEN NULL ELSE '{\"rows\": ' || (i * 7) || '}' END, "
            "CASE WHEN i % 100 = 0 THEN 'Traceback (most recent call last):\n  File x\n"
            "ValueError: bad row ' || i || ' in data/part-' || i || '.csv' END, "
            "1 + (i % 100 = 0), 'load' FROM n",
            (tasks, run),
        )
        conn.execute(
            "INSERT INTO task_attempts (run_id, task_id, attempt, status, started_at, "
            "finished_at, error) SELECT run_id, task_id, 1, 'error', started_at, finished_at, "
            "error FROM task_runs WHERE run_id = ? AND status = 'error'",
            (run,),
        )
        conn.execute(
            "INSERT INTO task_logs (run_id, task_id, attempt, created_at, level, logger, "
            "message) SELECT run_id, task_id, 1, started_at, 'INFO', 'load', "
            "'loaded ' || task_id FROM task_runs WHERE run_id = ? AND task_id % 10 = 0",
            (run,),
        )
        conn.execute(
            "INSERT INTO dead_letters (run_id, created_at, msg_type, payload, error, task_id) "
            "VALUES (?, '2025-01-01T00:00:00+00:00', 'MsgRow', '{}', 'no handler', 1)",
            (run,),
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")  # as pipeloom leaves its files
    conn.close()
    return time.perf_counter() - began


def _probe(db: str, stop: str, out: str) -> None:
    """Take the write lock every 5 ms and record how long each take waited."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    waits: list[float] = []
    while not os.path.exists(stop):
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        waits.append(time.perf_counter() - began)
        conn.execute("ROLLBACK")
        time.sleep(0.005)
    Path(out).write_text(json.dumps(waits))


def _tick(task: TaskDef, q: TaskQueue) -> None:
    time.sleep(0.005)  # 4 workers: about 800 tasks a second, a busy ETL run


def _concurrent_run(db: str, stop: str, out: str) -> None:
    """A real pipeloom run on the same file until ``stop`` exists; records commit gaps."""
    gaps: list[float] = []
    last = [time.perf_counter()]

    def listen(applied: AppliedBatch) -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    def tasks() -> Iterator[TaskDef]:
        i = 0
        while not os.path.exists(stop):
            i += 1
            yield TaskDef(i, f"tick-{i}")

    run_pipeline(
        tasks(),
        db,
        worker_fn=_tick,
        workers=4,
        progress=False,
        run_name="concurrent",
        listeners=[listen],
    )
    Path(out).write_text(json.dumps(gaps[1:]))


def measure(
    db: Path, keep: int, budget: float | None, hold: float | None = None
) -> dict[str, object]:
    """Prune ``db`` to ``keep`` runs while a pipeloom run writes it, then vacuum it.

    With ``budget``, the prune stops after that many seconds (this machine's benchmarks are
    time-boxed); calling it again finishes the rows left (``done`` says when nothing is).
    """
    before = file_bytes(db)
    with tempfile.TemporaryDirectory() as tmp:
        stop, probe_out, run_out = (str(Path(tmp) / n) for n in ("stop", "probe", "run"))
        ctx = mp.get_context("spawn")
        writer = ctx.Process(target=_concurrent_run, args=(str(db), stop, run_out))
        writer.start()
        time.sleep(3.0)  # let the run start (its schema check, its first commits)
        probe = ctx.Process(target=_probe, args=(str(db), stop, probe_out))
        probe.start()
        time.sleep(0.5)
        pacing = Pacing() if hold is None else Pacing(hold=hold)
        result = prune(db, Retention(keep_runs=keep), budget=budget, pacing=pacing)
        Path(stop).touch()
        probe.join()
        writer.join()
        waits = sorted(json.loads(Path(probe_out).read_text()))
        gaps = json.loads(Path(run_out).read_text())
    after_prune = file_bytes(db)
    conn = sqlite3.connect(db)
    left = conn.execute("SELECT count(*) FROM task_runs").fetchone()[0]
    orphaned = conn.execute(
        "SELECT count(*) FROM task_runs WHERE run_id NOT IN (SELECT id FROM pipeline_runs)"
    ).fetchone()[0]
    conn.close()
    after_vacuum = vacuum_s = None
    if not orphaned:
        began = time.perf_counter()
        _, after_vacuum = vacuum(db)
        vacuum_s = round(time.perf_counter() - began, 1)
    return {
        "keep_runs": keep,
        "hold_ms": round(pacing.hold * 1000, 1),
        "deleted": result.deleted,
        "task_rows_left": left,
        "done": not orphaned,
        "prune_s": round(result.elapsed_s, 1),
        "transactions": result.transactions,
        "longest_transaction_ms": round(result.longest_hold_s * 1000, 1),
        "p99_transaction_ms": round(sorted(result.holds)[int(len(result.holds) * 0.99)] * 1000, 1)
        if result.holds
        else None,
        "transactions_over_100ms": sum(1 for h in result.holds if h > 0.1),
        "longest_transaction_cpu_ms": round(result.longest_hold_cpu_s * 1000, 1),
        "probe_takes": len(waits),
        "waits_over_100ms": sum(1 for w in waits if w > 0.1),
        "max_wait_ms": round(waits[-1] * 1000, 1),
        "p99_wait_ms": round(waits[int(len(waits) * 0.99)] * 1000, 1),
        "median_wait_ms": round(statistics.median(waits) * 1000, 2),
        "run_max_commit_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
        "bytes_before": before,
        "bytes_after_prune": after_prune,
        "bytes_after_vacuum": after_vacuum,
        "vacuum_s": vacuum_s,
    }


def main() -> None:
    """``make DB`` writes the file, ``prune DB`` measures on it; with neither, both in /tmp."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("step", nargs="?", choices=["make", "prune", "all"], default="all")
    parser.add_argument("db", nargs="?", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--keep", type=int, default=10)
    parser.add_argument("--budget", type=float, default=None, help="seconds of pruning per call")
    parser.add_argument("--hold", type=float, default=None, help="Pacing.hold, seconds")
    args = parser.parse_args()
    line: dict[str, object] = {"bench": "prune", "sqlite": sqlite3.sqlite_version}
    line["python"] = sys.version.split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "history.db"
        if args.step in ("make", "all"):
            line["make_s"] = round(make_history(db, args.runs, args.tasks), 1)
            line.update(runs=args.runs, tasks_per_run=args.tasks, bytes=file_bytes(db))
        if args.step in ("prune", "all"):
            conn = sqlite3.connect(db)
            line["task_rows"] = conn.execute("SELECT count(*) FROM task_runs").fetchone()[0]
            line["runs_before"] = conn.execute("SELECT count(*) FROM pipeline_runs").fetchone()[0]
            conn.close()
            line.update(measure(db, args.keep, args.budget, args.hold))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
