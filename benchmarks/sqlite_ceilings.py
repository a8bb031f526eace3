"""Raw SQLite ceilings on this machine: what any writer could reach, one JSON line each.

1. ``executemany`` of N rows in one transaction (the most a batched writer can do).
2. One commit per row, WAL, synchronous=NORMAL (what a naive per-message writer gets).
3. Four threads, each with its own connection, one commit per row and no busy timeout:
   rows/s and how many "database is locked" errors they hit (why pipeloom has one writer).

The table has the shape of pipeloom's ``task_runs`` row (14 columns, a unique index).

    uv run python benchmarks/sqlite_ceilings.py
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_DDL = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, run_id INTEGER, task_id INTEGER, task_key TEXT, "
    "name TEXT, status TEXT, progress REAL, step INTEGER, total INTEGER, message TEXT, "
    "started_at TEXT, finished_at TEXT, result TEXT, error TEXT, attempt INTEGER)",
    "CREATE UNIQUE INDEX t_run_task ON t (run_id, task_id)",
)
_INSERT = (
    "INSERT INTO t (run_id, task_id, task_key, name, status, progress, step, total, message, "
    "started_at, finished_at, result, error, attempt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_TS = "2026-01-01T00:00:00.000+00:00"


def row(i: int, thread: int = 0) -> tuple[Any, ...]:
    return (1 + thread, i, None, f"task-{i}", "done", 1.0, 1, 1, None, _TS, _TS, None, None, 1)


def open_db(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=timeout, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def create(path: Path) -> None:
    conn = open_db(path)
    for ddl in _DDL:
        conn.execute(ddl)
    conn.close()


def one_transaction(path: Path, n: int) -> dict[str, Any]:
    create(path)
    conn = open_db(path)
    rows = [row(i) for i in range(n)]
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(_INSERT, rows)
    conn.execute("COMMIT")
    wall = time.perf_counter() - t0
    conn.close()
    return {
        "case": "executemany_one_transaction",
        "rows": n,
        "wall_s": round(wall, 3),
        "rows_per_s": round(n / wall),
    }


def commit_per_row(path: Path, n: int) -> dict[str, Any]:
    create(path)
    conn = open_db(path)
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute(_INSERT, row(i))  # autocommit: one transaction, one commit per row
    wall = time.perf_counter() - t0
    conn.close()
    return {
        "case": "commit_per_row_wal_normal",
        "rows": n,
        "wall_s": round(wall, 3),
        "rows_per_s": round(n / wall),
    }


def four_writers(path: Path, n: int, threads: int = 4) -> dict[str, Any]:
    create(path)
    written = [0] * threads
    locked = [0] * threads
    other: list[str] = []

    def write(k: int) -> None:
        conn = open_db(path, timeout=0.0)  # no busy timeout: see the contention directly
        conn.execute("PRAGMA busy_timeout = 0")
        for i in range(n // threads):
            try:
                conn.execute(_INSERT, row(i, k))
                written[k] += 1
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    locked[k] += 1
                else:
                    other.append(str(exc))
        conn.close()

    workers = [threading.Thread(target=write, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    ok = sum(written)
    return {
        "case": "four_threads_own_connections",
        "threads": threads,
        "attempted": (n // threads) * threads,
        "rows": ok,
        "locked_errors": sum(locked),
        "other_errors": len(other),
        "wall_s": round(wall, 3),
        "rows_per_s": round(ok / wall),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows for executemany")
    parser.add_argument("--commit-rows", type=int, default=20_000, help="rows, commit per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        base = Path(tmp)
        results = [
            one_transaction(base / "a.db", args.rows),
            commit_per_row(base / "b.db", args.commit_rows),
            four_writers(base / "c.db", args.commit_rows),
        ]
    for result in results:
        print(
            json.dumps({"bench": "sqlite", "sqlite": sqlite3.sqlite_version, **result}), flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
