"""pipeloom observe at scale: every page's time on a 1,000-run / 10,000,000-task history.

Makes (or reuses, from ~/.cache/pipeloom-bench/) the history with `make_history`, starts a real
``pipeloom observe`` server on it, loads each page ``--loads`` times over HTTP (after one
untimed load that warms SQLite's page cache) and prints one JSON line per page (p50, p95, max,
bytes) and one for the server (its peak RSS, ``VmHWM``). ``--index-cost`` instead measures what
`make_history.PROPOSED_INDEXES` cost a writer: the same pipeline run on a file with and without
them, alternated, plus the index's size and build time on the large file.

    uv run python benchmarks/observe_scale.py                # about 2 minutes once the file exists
    uv run python benchmarks/observe_scale.py --runs 100 --tasks 10000 --loads 5
    uv run python benchmarks/observe_scale.py --index-cost
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.make_history import PROPOSED_INDEXES, cached_history


def _one(db: Path, sql: str) -> Any:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute(sql).fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def pages(db: Path) -> dict[str, str]:
    """The pages to time, with ids picked from the file (a done, a failed, a stale run...)."""
    name = db.stem
    done = _one(db, "SELECT MAX(id) FROM pipeline_runs WHERE status = 'done' AND tasks_skipped = 0")
    failed = _one(db, "SELECT MAX(id) FROM pipeline_runs WHERE status = 'error'")
    stale = _one(db, "SELECT MAX(id) FROM pipeline_runs WHERE status = 'running'")
    task = _one(db, f"SELECT task_id FROM task_runs WHERE run_id = {failed} AND status = 'error'")
    since = _one(db, "SELECT substr(MAX(started_at), 1, 10) FROM pipeline_runs")
    week = _one(db, f"SELECT date('{since}', '-7 days')")
    window = _one(
        db,
        f"SELECT strftime('%Y-%m-%dT%H:%M:%SZ', started_at, '+60 seconds') || '|' || "
        f"strftime('%Y-%m-%dT%H:%M:%SZ', started_at, '+90 seconds') "
        f"FROM pipeline_runs WHERE id = {done}",
    )
    start, end = window.split("|")
    base = f"/-/pipeloom/{name}"
    dash = "/-/dashboards"
    return {
        "home (runs)": "/",
        "runs: failed or stopped, last 7 days": f"/?status=failed_or_stopped&since={week}",
        "runs: one pipeline, page 5": "/?pipeline=orders_etl&before=800",
        "failures across runs": f"{base}/failures",
        "failures: last 7 days, one pipeline": f"{base}/failures?since={week}&pipeline=orders_etl",
        "run page (10,000 tasks)": f"{base}/run/{done}",
        "run page, failed run": f"{base}/run/{failed}",
        "run JSON (live poll), stale run": f"{base}/run/{stale}.json",
        "stage drill-down (time window)": (
            f"{base}/run/{done}/tasks?stage=transform&from={start}&to={end}"
        ),
        "stage drill-down, page 20": f"{base}/run/{done}/tasks?stage=extract&page=20",
        "compare (newest with previous)": f"{base}/compare",
        "compare two runs": f"{base}/compare?a={failed}&b={done}",
        "task page": f"{base}/task/{failed}/{task}",
        "canned: run_list": f"/{name}/run_list",
        "canned: latest_run": f"/{name}/latest_run?run_id={done}",
        "canned: failures": f"/{name}/failures?run_id={failed}",
        "canned: slowest_tasks": f"/{name}/slowest_tasks?run_id={done}",
        "canned: tasks_per_minute": f"/{name}/tasks_per_minute?run_id={done}",
        "canned: flaky_tasks": f"/{name}/flaky_tasks",
        "table: pipeline_runs": f"/{name}/pipeline_runs",
        "table: task_runs": f"/{name}/task_runs",
        "table: task_runs of one run": f"/{name}/task_runs?run_id={done}",
        "dashboard: run (page)": f"{dash}/run?run_id={done}",
        "dashboard: run history (page)": f"{dash}/run-history",
        **{f"chart: {key}": path for key, path in charts(db, name, done).items()},
    }


def charts(db: Path, name: str, run_id: int) -> dict[str, str]:
    """The datasette-dashboards charts' queries, as the page's scripts request them."""
    from pipeloom_observe.dashboards import dashboards

    found = {}
    for slug, board in dashboards(name).items():
        for key, chart in board["charts"].items():
            query = {"sql": chart["query"], "_shape": "array"}
            if ":run_id" in chart["query"]:
                query["run_id"] = str(run_id)
            if ":name" in chart["query"]:
                query["name"] = ""
            found[f"{slug}/{key}"] = f"/{name}.json?{urllib.parse.urlencode(query)}"
    return found


def _get(url: str) -> tuple[int, int]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, len(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, len(exc.read())


def serve(db: Path) -> tuple[subprocess.Popen[str], str]:
    """A real ``pipeloom observe`` on ``db`` and its address."""
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeloom_cli", "observe", str(db), "--port", "0", "--no-open"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    match = re.search(r"at (http://\S+?)/ ", line)
    if match is None:
        server.terminate()
        raise SystemExit(f"pipeloom observe did not start: {line!r}")
    return server, match.group(1)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_pages(db: Path, loads: int, only: str = "") -> None:
    """Print each page's p50/p95 over ``loads`` loads, then the server's peak RSS."""
    server, base = serve(db)
    try:
        for label, path in pages(db).items():
            if only and not re.search(only, label):
                continue
            status, size = _get(base + path)  # warm-up, untimed
            times = []
            for _ in range(loads):
                began = time.perf_counter()
                status, size = _get(base + path)
                times.append(time.perf_counter() - began)
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(
                json.dumps(
                    {
                        "page": label,
                        "status": status,
                        "p50_s": round(statistics.median(times), 4),
                        "p95_s": round(p95, 4),
                        "max_s": round(times[-1], 4),
                        "kb": round(size / 1024),
                        "path": path if len(path) < 120 else path[:117] + "...",
                    }
                ),
                flush=True,
            )
        print(json.dumps({"server_peak_rss_mb": round(peak_rss_mb(server.pid), 1)}))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _pipeline_seconds(tasks: int, proposed: bool) -> float:
    """Run a real pipeline of ``tasks`` no-op tasks (1 % fail) on a fresh file; its wall time."""
    from pipeloom import MsgTaskFinished, MsgTaskStarted, TaskDef, TaskQueue, run_pipeline, utc_now
    from pipeloom.db import connect, init_schema

    def work(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        if task.task_id % 100 == 0:
            q.put(MsgTaskFinished(task.task_id, "error", utc_now(), message="boom"))
        else:
            q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "cost.db"
        conn = connect(db)
        init_schema(conn, db)
        for statement in PROPOSED_INDEXES if proposed else ():
            conn.execute(statement)
        conn.commit()
        conn.close()
        began = time.perf_counter()
        run_pipeline(
            [TaskDef(i, f"t{i}") for i in range(1, tasks + 1)],
            db,
            worker_fn=work,
            workers=4,
            progress=False,
            handle_signals=False,
        )
        return time.perf_counter() - began


def index_cost(db: Path, tasks: int, repeats: int) -> None:
    """What the proposed index costs: writer wall time with and without it, size, build time."""
    walls: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for proposed in (False, True):
            walls[proposed].append(_pipeline_seconds(tasks, proposed))
    for proposed, values in walls.items():
        print(
            json.dumps(
                {
                    "writer": "core indexes + proposed" if proposed else "core indexes",
                    "tasks": tasks,
                    "median_s": round(statistics.median(values), 3),
                    "runs_s": [round(v, 3) for v in values],
                    "tasks_per_s": round(tasks / statistics.median(values)),
                }
            )
        )
    conn = sqlite3.connect(db)
    try:
        for statement in PROPOSED_INDEXES:
            name = statement.split("EXISTS", 1)[1].split()[0]
            size = conn.execute(
                "SELECT SUM(pgsize) FROM dbstat WHERE name = ?", (name,)
            ).fetchone()[0]
            rows = conn.execute("SELECT COUNT(*) FROM task_runs").fetchone()[0]
            conn.execute(f"DROP INDEX {name}")
            began = time.perf_counter()
            conn.execute(statement)
            built = time.perf_counter() - began
            conn.commit()
            shown = {"index": name, "task_rows": rows, "kb": round(size / 1024)}
            print(json.dumps({**shown, "build_s": round(built, 2)}))
    finally:
        conn.close()


def main() -> None:
    """Parse the arguments, make or find the history, measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--no-proposed", action="store_true", help="only core's indexes")
    parser.add_argument("--index-cost", action="store_true")
    parser.add_argument("--cost-tasks", type=int, default=50_000)
    parser.add_argument("--only", default="", help="time only pages whose label matches this")
    parser.add_argument(
        "--drop-proposed",
        action="store_true",
        help="time the pages without the proposed indexes (dropped, then built again)",
    )
    args = parser.parse_args()
    db = cached_history(runs=args.runs, tasks=args.tasks, proposed=not args.no_proposed)
    print(json.dumps({"file": str(db), "mb": round(db.stat().st_size / 2**20)}), flush=True)
    if args.index_cost:
        index_cost(db, args.cost_tasks, repeats=3)
    elif args.drop_proposed:
        names = [statement.split("EXISTS", 1)[1].split()[0] for statement in PROPOSED_INDEXES]
        conn = sqlite3.connect(db)
        for name in names:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.commit()
        try:
            print(json.dumps({"without": names}), flush=True)
            time_pages(db, args.loads, args.only)
        finally:
            for statement in PROPOSED_INDEXES:
                conn.execute(statement)
            conn.commit()
            conn.close()
    else:
        time_pages(db, args.loads, args.only)


if __name__ == "__main__":
    main()
