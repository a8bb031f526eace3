"""Make a large, realistic pipeloom run history: N runs x M tasks, in pipeloom's own schema.

Reusable (the observe scale benchmark uses it; so can retention work)::

    from benchmarks.make_history import cached_history
    path = cached_history(runs=1_000, tasks=10_000)   # ~/.cache/pipeloom-bench/...

or ``uv run python benchmarks/make_history.py --runs 1000 --tasks 10000``.

What the file holds (deterministic for a seed): four pipelines taking turns, ten runs a day up
to the day before it is made, each run three stages (extract 40 %, transform 40 % consuming
extract, load 20 % consuming transform), one row per task in ``task_runs`` with ISO 8601 UTC
times as the writer stores them. Outcomes: most runs done (about 1 % of tasks retried once,
their failed first attempt in ``task_attempts``); one run in 12 fails (0.5 % of its tasks error
with one of six error messages, their downstream tasks ``upstream_failed``, two log lines each,
a dead letter); one in 30 is stopped by Ctrl-C (``cancelled``, ``stop_reason = 'sigint'``, the
rest not started); one in 50 crashed (``interrupted``, ``stop_reason = 'crashed'``); one in 40
stopped by ``fail_fast``; one in 25 a resume whose first half is ``skipped`` (done in the run
before). The newest run is still ``running`` with a heartbeat two hours old: stale.

Speed: rows are written with ``executemany`` in one transaction per run, with
``journal_mode=OFF`` and ``synchronous=OFF`` (a half-written file is simply made again), and
``task_runs``' secondary indexes are created after the rows (sorting once is far cheaper than
inserting into four B-trees). The end state is exactly pipeloom's schema (plus, optionally,
the indexes this benchmark proposes, `PROPOSED_INDEXES`). A file is complete only once its
``bench_history`` row says so; an unfinished one is made again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from pipeloom.schema import SCHEMA_STATEMENTS, create_schema

CACHE: Final = Path(os.environ.get("PIPELOOM_BENCH_CACHE", Path.home() / ".cache/pipeloom-bench"))

PIPELINES: Final = ("orders_etl", "users_etl", "events_etl", "billing_etl")
STAGES: Final = (("extract", 0.4, None), ("transform", 0.4, "extract"), ("load", 0.2, "transform"))
ERRORS: Final = (
    "ValueError: partition {n} has a corrupt header",
    "ConnectionError: upstream API returned 503 after {n} ms",
    "KeyError: 'customer_id' missing in row {n}",
    "TimeoutError: S3 read of part-{n}.parquet took longer than 30 s",
    "sqlite3.IntegrityError: UNIQUE constraint failed: orders.id ({n})",
    "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position {n}",
)
RETRY_ERROR: Final = "ConnectionError: throttled (HTTP 429), retrying"

PROPOSED_INDEXES: Final = (
    # Failed tasks of a run (first failure, failures across runs): only failed rows are in it.
    "CREATE INDEX IF NOT EXISTS idx_task_runs_failed ON task_runs (run_id, finished_at) "
    "WHERE status IN ('error', 'interrupted', 'timeout')",
)
"""Indexes the observe pages would like core's schema to have (see benchmarks/README.md)."""

_TASK_INDEXES: Final = tuple(
    s for s in SCHEMA_STATEMENTS if "INDEX" in s and " ON task_runs " in s.replace("(", " ")
)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


class _Clock:
    """ISO strings for offsets (ms) from a run's start, formatted once per second."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.seconds: dict[int, str] = {}

    def at(self, ms: int) -> str:
        sec, milli = divmod(ms, 1000)
        prefix = self.seconds.get(sec)
        if prefix is None:
            prefix = (self.start + timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")
            self.seconds[sec] = prefix
        return f"{prefix}.{milli:03d}+00:00"


def _outcome(run_id: int, runs: int) -> str:
    if run_id == runs:
        return "stale"
    for every, outcome in ((50, "crashed"), (40, "fail_fast"), (30, "sigint"), (25, "resume")):
        if run_id % every == 7:
            return outcome
    return "error" if run_id % 12 == 5 else "done"


TaskRow = tuple[object, ...]


def _run_rows(
    run_id: int, tasks: int, rng: random.Random, outcome: str, clock: _Clock
) -> tuple[list[TaskRow], list[TaskRow], list[TaskRow], list[TaskRow], dict[str, object]]:
    """Rows of one run: task_runs, task_attempts, task_logs, dead_letters, and its run row."""
    workers = 8
    per_task_ms = rng.randint(300, 700)  # this run's mean task duration
    gap = per_task_ms / workers  # tasks start this far apart on average
    stop_at = tasks
    if outcome in {"sigint", "crashed", "fail_fast"}:
        stop_at = int(tasks * rng.uniform(0.3, 0.8))
    if outcome == "stale":
        stop_at = int(tasks * 0.6)
    skipped_until = tasks // 2 if outcome == "resume" else 0
    failing = set()
    if outcome == "error":
        failing = set(rng.sample(range(int(tasks * 0.8)), max(1, tasks // 200)))
    if outcome == "fail_fast":
        failing = {stop_at - 1}
    error_kind = rng.randrange(len(ERRORS))
    rows: list[TaskRow] = []
    attempts: list[TaskRow] = []
    logs: list[TaskRow] = []
    letters: list[TaskRow] = []
    counts: dict[str, int] = {}
    failed_items: set[int] = set()
    task_id = 0
    last_ms = 0
    sizes = [int(tasks * share) for _, share, _ in STAGES]
    sizes[-1] = tasks - sum(sizes[:-1])
    for (stage, _share, upstream), size in zip(STAGES, sizes, strict=True):
        for item in range(size):
            task_id += 1
            key = f"{stage}:{item:05d}"
            start = int(task_id * gap + rng.random() * gap)
            duration = int(per_task_ms * (0.3 + 1.4 * rng.random()))
            if rng.random() < 0.002:
                duration *= 20  # a straggler
            status = "done"
            message = None
            error = None
            attempt = 1
            started: str | None = clock.at(start)
            finished: str | None = clock.at(start + duration)
            if task_id > stop_at:
                if outcome == "stale" and task_id <= stop_at + workers:
                    status, finished = "running", None
                elif outcome in {"sigint", "fail_fast"} and task_id <= stop_at + workers:
                    status, message = "cancelled", "cancelled: the run was stopped"
                elif outcome == "crashed" and task_id <= stop_at + workers:
                    status, message = "interrupted", "interrupted: its process died"
                    finished = clock.at(start + 5000)
                else:
                    break  # never started: counted in tasks_not_started
            elif task_id <= skipped_until:
                status, message = "skipped", f"skipped: done in run {run_id - 1}"
                started = finished = clock.at(0)
            elif upstream is not None and item in failed_items:
                status, message, started = "upstream_failed", f"upstream {upstream} failed", None
                finished = clock.at(start)
            elif task_id in failing:
                n = rng.randint(1, 9999)
                status = "error"
                message = ERRORS[(error_kind + task_id % 2) % len(ERRORS)].format(n=n)
                error = (
                    "Traceback (most recent call last):\n"
                    f'  File "pipelines/{stage}.py", line {40 + item % 60}, in {stage}\n'
                    f"{message}"
                )
                failed_items.add(item)
                logs.append((run_id, task_id, 1, started, "INFO", stage, f"reading {key}", 0))
                logs.append((run_id, task_id, 1, finished, "ERROR", stage, message, 0))
                if len(letters) < 3:
                    payload = json.dumps({"task_id": task_id, "rows": -1})
                    letters.append(
                        (run_id, finished, "LoadedRow", payload, "ValueError: rows < 0", task_id, 1)
                    )
            elif rng.random() < 0.01:
                attempt = 2
                first_end = clock.at(start + duration // 3)
                attempts.append((run_id, task_id, 1, "error", started, first_end, RETRY_ERROR, 0))
                logs.append((run_id, task_id, 1, first_end, "WARNING", stage, RETRY_ERROR, 0))
            if finished is not None:
                last_ms = max(last_ms, start + duration)
            counts[status] = counts.get(status, 0) + 1
            up_id = task_id - size if upstream is not None else None
            rows.append(
                (
                    run_id,
                    task_id,
                    key,
                    stage,
                    status,
                    1.0 if finished else 0.0,
                    message,
                    started,
                    finished,
                    error,
                    attempt,
                    stage,
                    upstream,
                    up_id,
                )
            )
        else:
            continue
        break
    taken = len(rows)
    failed = sum(counts.get(s, 0) for s in ("error", "timeout", "interrupted"))
    run_status = {
        "done": "done",
        "resume": "done",
        "error": "error",
        "fail_fast": "error",
        "sigint": "cancelled",
        "crashed": "interrupted",
        "stale": "running",
    }[outcome]
    end = clock.at(last_ms + 200)
    run: dict[str, object] = {
        "status": run_status,
        "finished_at": None if outcome == "stale" else end,
        "heartbeat_at": clock.at(last_ms) if outcome in {"stale", "crashed"} else end,
        "tasks_total": tasks,
        "tasks_done": counts.get("done", 0) + counts.get("skipped", 0),
        "tasks_error": failed,
        "tasks_cancelled": counts.get("cancelled", 0),
        "tasks_finished": sum(n for s, n in counts.items() if s not in {"running", "queued"}),
        "tasks_planned": tasks,
        "tasks_taken": taken,
        "tasks_not_started": tasks - taken,
        "tasks_skipped": counts.get("skipped", 0),
        "stop_reason": {"sigint": "sigint", "crashed": "crashed", "fail_fast": "fail_fast"}.get(
            outcome
        ),
    }
    return rows, attempts, logs, letters, run


def _runs(runs: int) -> Iterator[tuple[int, str, datetime]]:
    # Ten runs a day, the second newest a day ago: "this week" has runs whoever makes the file.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    base = today - timedelta(hours=2.4 * runs)
    for run_id in range(1, runs + 1):
        start = base + timedelta(hours=2.4 * (run_id - 1), seconds=(run_id * 977) % 600)
        yield run_id, PIPELINES[(run_id - 1) % len(PIPELINES)], start


def append_run(
    conn: sqlite3.Connection,
    run_id: int,
    *,
    name: str,
    start: datetime,
    tasks: int,
    outcome: str = "done",
    rng: random.Random | None = None,
) -> None:
    """Add one synthetic run of ``tasks`` tasks to an open pipeloom file (the caller commits).

    Args:
        conn: a connection to a file holding pipeloom's schema.
        run_id: the new run's id (unused in the file).
        name: its pipeline's name.
        start: when it started; its tasks follow from there.
        tasks: how many tasks it plans (three stages, 40/40/20 %).
        outcome: ``done``, ``error``, ``sigint``, ``crashed``, ``fail_fast``, ``resume`` or
            ``stale`` (still ``running``, its heartbeat long past).
        rng: the random source (a fixed seed when None).
    """
    rng = rng or random.Random(run_id)
    clock = _Clock(start)
    rows, attempts, logs, letters, run = _run_rows(run_id, tasks, rng, outcome, clock)
    params = json.dumps({"day": start.date().isoformat(), "source": f"s3://lake/{name}"})
    conn.execute(
        "INSERT INTO pipeline_runs (id, name, status, started_at, finished_at, workers, "
        "tasks_total, tasks_done, tasks_error, tasks_cancelled, messages, host, pid, "
        "pipeloom_version, params, heartbeat_at, lease_s, owner, tasks_finished, "
        "tasks_planned, tasks_taken, tasks_not_started, tasks_skipped, stop_reason) "
        "VALUES (?, ?, ?, ?, ?, 8, ?, ?, ?, ?, 0, 'bench', 1, '0.1.0', ?, ?, 30.0, "
        "'bench', ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            name,
            run["status"],
            _iso(start),
            run["finished_at"],
            run["tasks_total"],
            run["tasks_done"],
            run["tasks_error"],
            run["tasks_cancelled"],
            params,
            run["heartbeat_at"],
            run["tasks_finished"],
            run["tasks_planned"],
            run["tasks_taken"],
            run["tasks_not_started"],
            run["tasks_skipped"],
            run["stop_reason"],
        ),
    )
    conn.executemany(
        "INSERT INTO task_runs (run_id, task_id, task_key, name, status, progress, message, "
        "started_at, finished_at, error, attempt, stage, upstream_stage, upstream_task_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.executemany(
        "INSERT INTO task_attempts (run_id, task_id, attempt, status, started_at, "
        "finished_at, error, discarded) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        attempts,
    )
    conn.executemany(
        "INSERT INTO task_logs (run_id, task_id, attempt, created_at, level, logger, "
        "message, dropped) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        logs,
    )
    conn.executemany(
        "INSERT INTO dead_letters (run_id, created_at, msg_type, payload, error, task_id, "
        "attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
        letters,
    )


def make_history(
    path: Path, *, runs: int, tasks: int, seed: int = 1, proposed: bool = True
) -> Path:
    """Write a history of ``runs`` runs x ``tasks`` tasks to ``path`` (replaced if present).

    Args:
        path: the file to write.
        runs: how many runs; the newest is a stale ``running`` run.
        tasks: tasks per run (fewer are recorded in runs stopped early).
        seed: the random seed (the same seed makes the same rows).
        proposed: also create `PROPOSED_INDEXES`.
    """
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    # A file made for reading: nothing to protect while writing it (it is made again if cut).
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    create_schema(conn)
    conn.execute("CREATE TABLE bench_history (runs, tasks, seed, proposed, complete)")
    conn.execute("INSERT INTO bench_history VALUES (?, ?, ?, ?, 0)", (runs, tasks, seed, proposed))
    for statement in _TASK_INDEXES:
        name = statement.split("EXISTS", 1)[1].split()[0]
        conn.execute(f"DROP INDEX {name}")
    rng = random.Random(seed)
    began = time.monotonic()
    for run_id, name, start in _runs(runs):
        outcome = _outcome(run_id, runs)
        if outcome == "stale":
            start = datetime.now(UTC) - timedelta(hours=2, minutes=10)
        conn.execute("BEGIN")
        append_run(conn, run_id, name=name, start=start, tasks=tasks, outcome=outcome, rng=rng)
        conn.execute("COMMIT")
        if run_id % 100 == 0:
            print(
                f"make_history: {run_id}/{runs} runs, {time.monotonic() - began:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    for statement in _TASK_INDEXES + (PROPOSED_INDEXES if proposed else ()):
        conn.execute(statement)
    conn.execute("ANALYZE")
    conn.execute("UPDATE bench_history SET complete = 1")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    print(f"make_history: {path} in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return path


def cached_history(*, runs: int, tasks: int, seed: int = 1, proposed: bool = True) -> Path:
    """The history for these settings from the cache, made first if it is missing or unfinished."""
    path = CACHE / f"history-{runs}x{tasks}-s{seed}{'-idx' if proposed else ''}.db"
    if path.exists():
        conn = sqlite3.connect(path)
        try:
            row = conn.execute("SELECT complete FROM bench_history").fetchone()
        except sqlite3.Error:
            row = None
        finally:
            conn.close()
        if row == (1,):
            return path
    return make_history(path, runs=runs, tasks=tasks, seed=seed, proposed=proposed)


def main() -> None:
    """Make (or find) a cached history and print its path and size as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-proposed", action="store_true", help="only core's indexes")
    parser.add_argument("--out", type=Path, help="write here instead of the cache")
    args = parser.parse_args()
    kwargs = {"runs": args.runs, "tasks": args.tasks, "seed": args.seed}
    if args.out:
        path = make_history(args.out, proposed=not args.no_proposed, **kwargs)
    else:
        path = cached_history(proposed=not args.no_proposed, **kwargs)
    print(json.dumps({"path": str(path), "bytes": path.stat().st_size, **kwargs}))


if __name__ == "__main__":
    main()
