"""Cached work: a T-task pipeline run twice with nothing changed, against a resume.

Three runs on one file: ``first`` computes every task (each ``cache=True``, fingerprinted by
its item); ``cached`` runs the pipeline again (a new run, nothing changed: every task is taken
from the first run's results, one indexed lookup each on the driver); ``resume`` resumes the
cached run (every task skipped as done). One JSON line per run, then one summary line with the
cached run's wall time against the resume's. Each run checks every task is ``done`` (or
``skipped``).

    uv run python benchmarks/cache.py --tasks 10000
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeloom import Context, Pipeline


def make(db: Path, tasks: int, workers: int) -> Pipeline:
    """A stage of ``tasks`` cached tasks that each do a little work."""
    pipe = Pipeline("cache-bench", db=db, workers=workers)

    @pipe.task(cache=True)
    def work(ctx: Context, item: int) -> int:
        return sum(range(item % 100))

    pipe.map(work, range(tasks))
    return pipe


def timed(label: str, db: Path, tasks: int, workers: int, **run: Any) -> dict[str, Any]:
    """One run; its wall time and what the file holds for it."""
    pipe = make(db, tasks, workers)
    began = time.perf_counter()
    result = pipe.run(progress=False, **run)
    wall = time.perf_counter() - began
    conn = sqlite3.connect(db)
    try:
        counts = dict(
            conn.execute(
                "SELECT status, count(*) FROM task_runs WHERE run_id = ? GROUP BY status",
                (result.run_id,),
            ).fetchall()
        )
        cached = conn.execute(
            "SELECT count(*) FROM task_runs WHERE run_id = ? AND cached_from_run IS NOT NULL",
            (result.run_id,),
        ).fetchone()[0]
    finally:
        conn.close()
    assert result.ok and sum(counts.values()) == tasks, counts
    return {
        "bench": "cache",
        "run": label,
        "tasks": tasks,
        "workers": workers,
        "wall_s": round(wall, 3),
        "tasks_per_s": round(tasks / wall, 1),
        "statuses": counts,
        "cached": cached,
    }


def main(argv: list[str] | None = None) -> None:
    """Print one JSON line per run and a summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pipeloom-bench-") as tmp:
        db = Path(tmp) / "cache.db"
        first = timed("first", db, args.tasks, args.workers)
        cached = timed("cached", db, args.tasks, args.workers)
        resume = timed("resume", db, args.tasks, args.workers, resume=True)
        for line in (first, cached, resume):
            print(json.dumps(line), flush=True)
        summary = {
            "bench": "cache",
            "summary": True,
            "tasks": args.tasks,
            "first_s": first["wall_s"],
            "cached_s": cached["wall_s"],
            "resume_s": resume["wall_s"],
            "cached_vs_resume": round(cached["wall_s"] / resume["wall_s"], 2),
            "cached_vs_first": round(cached["wall_s"] / first["wall_s"], 2),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
