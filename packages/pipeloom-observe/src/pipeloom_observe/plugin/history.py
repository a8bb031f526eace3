"""What the plugin's pages read: bounded queries over a run history of any size.

Every query here is bounded by a page of runs (at most `RUNS_PAGE`, or `FAILURE_RUNS` for the
failures across runs) or by one or two runs' tasks, reached through an index: no page reads
every task row of the file. Failed tasks are found with ``status IN ('error', 'interrupted',
'timeout')`` spelt exactly as `pipeloom_observe.sql.FAILED_SQL`, so a partial index on the
failed rows (benchmarks/README.md proposes one) serves them; without it they are found through
``idx_task_runs_run_task``, one run at a time.

The functions take Datasette's `Database` (its ``execute`` runs on a read-only connection
under the time limit) and return plain dicts, the same ones the pages render and the JSON
endpoints return.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from pipeloom.messages import parse_utc
from pipeloom.schema import RUNS_SELECT
from pipeloom_observe.sql import FAILED_SQL, STOP_TEXT_SQL, SUCCEEDED_SQL, TIMED_SQL

__all__ = [
    "BUCKETS",
    "FAILURE_RUNS",
    "RUNS_PAGE",
    "RUN_FILTERS",
    "RunFilter",
    "compare_runs",
    "error_signature",
    "failure_groups",
    "pipelines",
    "run_detail",
    "run_list",
    "stage_tasks",
]

RUNS_PAGE: Final = 50
"""Runs per page of the runs list."""
FAILURE_RUNS: Final = 200
"""Failures across runs are counted over at most this many runs (the newest that match)."""
FAILURE_ROWS: Final = 20_000
"""At most this many (error, day) groups are read for the failures page."""
BUCKETS: Final = 60
"""Time buckets of a stage lane."""
CHANGED_SHOWN: Final = 200
"""Tasks listed whose status changed between two runs (all are counted)."""
TASKS_PAGE: Final = 100
"""Tasks per page of a stage's drill-down."""

RUN_FILTERS: Final[dict[str, tuple[str, str]]] = {
    "": ("any status", "1"),
    "failed_or_stopped": (
        "failed or stopped",
        "(v.status IN ('error', 'cancelled', 'interrupted') OR v.stale = 1 "
        "OR v.stop_reason IS NOT NULL)",
    ),
    "failed": ("failed", "v.status = 'error'"),
    "stopped": (
        "stopped (Ctrl-C, signal, fail_fast, crashed, stale)",
        "(v.stop_reason IS NOT NULL OR v.stale = 1 OR v.status IN ('cancelled', 'interrupted'))",
    ),
    "stale": ("stale (its process stopped sending heartbeats)", "v.stale = 1"),
    "running": ("running", "(v.status = 'running' AND v.stale = 0)"),
    "done": ("done", "v.status = 'done'"),
}
"""The runs list's status filter: value -> (label, SQL over the runs view ``v``)."""


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a visitor asked for: pipeline, status group, started from / until (UTC days)."""

    pipeline: str = ""
    status: str = ""
    since: date | None = None
    until: date | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """SQL over the runs view ``v`` and its parameters."""
        terms = [RUN_FILTERS.get(self.status, RUN_FILTERS[""])[1]]
        params: dict[str, Any] = {}
        if self.pipeline:
            terms.append("v.name = :pipeline")
            params["pipeline"] = self.pipeline
        if self.since is not None:
            terms.append("v.started_at >= :since")
            params["since"] = self.since.isoformat()
        if self.until is not None:
            # Up to the end of that day: started_at text sorts as time (one format, UTC).
            terms.append("v.started_at < :until")
            params["until"] = (self.until + timedelta(days=1)).isoformat()
        return " AND ".join(terms), params


async def _rows(db: Any, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    result = await db.execute(sql, dict(params or {}))
    return [dict(row) for row in result.rows]


async def pipelines(db: Any) -> list[str]:
    """Every pipeline name in the file (one row per run: a small table)."""
    rows = await _rows(db, "SELECT DISTINCT name FROM pipeline_runs ORDER BY name")
    return [str(row["name"]) for row in rows]


_FIRST_FAILURE: Final = f"""
SELECT t.run_id, t.task_id, t.task_key, t.name, t.stage, t.status,
  COALESCE(NULLIF(t.message, ''), t.error, t.status) AS what
FROM task_runs t
WHERE t.id IN (
  SELECT (SELECT f.id FROM task_runs f WHERE f.run_id = l.value AND f.status IN {FAILED_SQL}
          ORDER BY f.finished_at, f.task_id LIMIT 1)
  FROM json_each(:ids) l
)
"""


async def run_list(db: Any, where: RunFilter, *, before: int | None = None) -> dict[str, Any]:
    """A page of runs, newest first, each with why it stopped and its first failure.

    Args:
        db: the run database.
        where: which runs.
        before: show runs older than this id (the next page).

    Returns:
        ``runs`` (at most `RUNS_PAGE`), ``next_before`` (None on the last page) and
        ``summary`` (counts over every matching run: runs, failed, stopped, stale).
    """
    sql, params = where.where()
    page_sql = sql + (" AND v.id < :before" if before is not None else "")
    if before is not None:
        params = {**params, "before": before}
    runs = await _rows(
        db,
        f"SELECT v.*, {STOP_TEXT_SQL} AS stopped, r.params, r.error AS run_error "
        f"FROM ({RUNS_SELECT}) AS v JOIN pipeline_runs r ON r.id = v.id "
        f"WHERE {page_sql} ORDER BY v.id DESC LIMIT {RUNS_PAGE + 1}",
        params,
    )
    more = len(runs) > RUNS_PAGE
    runs = runs[:RUNS_PAGE]
    failing = [run["id"] for run in runs if run["tasks_failed"]]
    if failing:
        import json

        first = await _rows(db, _FIRST_FAILURE, {"ids": json.dumps(failing)})
        by_run = {row["run_id"]: row for row in first}
        for run in runs:
            run["first_failure"] = by_run.get(run["id"])
    summary = await _rows(
        db,
        "SELECT COUNT(*) AS runs, COALESCE(SUM(v.status = 'error'), 0) AS failed, "
        "COALESCE(SUM(v.stop_reason IS NOT NULL OR v.stale = 1 "
        "OR v.status IN ('cancelled', 'interrupted')), 0) AS stopped, "
        f"COALESCE(SUM(v.stale), 0) AS stale FROM ({RUNS_SELECT}) AS v WHERE {sql}",
        where.where()[1],
    )
    return {
        "runs": runs,
        "next_before": runs[-1]["id"] if more and runs else None,
        "summary": summary[0],
    }


_DIGITS: Final = re.compile(r"\b\d+\b")
_HEX: Final = re.compile(r"0x[0-9a-fA-F]+")


def error_signature(text: str) -> str:
    """The error a failure is grouped under: its last line, numbers as ``N``.

    ``ValueError: partition 3 has a corrupt header`` and ``... partition 12 ...`` are the same
    error met on different data.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else text
    return _DIGITS.sub("N", _HEX.sub("0xN", last))[:300]


async def failure_groups(db: Any, where: RunFilter) -> dict[str, Any]:
    """Failed tasks across runs, grouped by error: counts per day and an example task each.

    Counted over the newest `FAILURE_RUNS` runs that match (said on the page when cut).
    """
    sql, params = where.where()
    run_rows = await _rows(
        db,
        f"SELECT v.id, v.name, substr(v.started_at, 1, 10) AS day FROM ({RUNS_SELECT}) AS v "
        f"WHERE {sql} ORDER BY v.id DESC LIMIT {FAILURE_RUNS + 1}",
        params,
    )
    cut = len(run_rows) > FAILURE_RUNS
    run_rows = run_rows[:FAILURE_RUNS]
    if not run_rows:
        return {"groups": [], "days": [], "runs": 0, "cut": False, "failures": 0, "failed_runs": 0}
    import json

    day_of = {row["id"]: row["day"] for row in run_rows}
    name_of = {row["id"]: row["name"] for row in run_rows}
    rows = await _rows(
        db,
        f"""
SELECT t.run_id, COALESCE(NULLIF(t.message, ''), t.error, t.status) AS what, t.status,
  COUNT(*) AS n, MAX(t.task_id) AS example, MAX(t.task_key) AS example_key
FROM task_runs t
WHERE t.run_id IN (SELECT value FROM json_each(:ids)) AND t.status IN {FAILED_SQL}
GROUP BY t.run_id, what, t.status
LIMIT {FAILURE_ROWS}
""",
        {"ids": json.dumps(list(day_of))},
    )
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        signature = error_signature(str(row["what"]))
        group = groups.setdefault(
            signature,
            {
                "signature": signature,
                "count": 0,
                "runs": set(),
                "pipelines": set(),
                "statuses": set(),
                "per_day": {},
                "example": None,
                "message": str(row["what"]).strip().splitlines()[-1:],
            },
        )
        run_id = row["run_id"]
        group["count"] += row["n"]
        group["runs"].add(run_id)
        group["pipelines"].add(name_of[run_id])
        group["statuses"].add(row["status"])
        day = day_of[run_id]
        group["per_day"][day] = group["per_day"].get(day, 0) + row["n"]
        if group["example"] is None or run_id > group["example"]["run_id"]:
            group["example"] = {
                "run_id": run_id,
                "task_id": row["example"],
                "key": row["example_key"],
            }
    days = sorted(set(day_of.values()))
    shown = sorted(groups.values(), key=lambda g: (-g["count"], g["signature"]))
    for group in shown:
        group["first_run"] = min(group["runs"])
        group["last_run"] = max(group["runs"])
        group["runs"] = len(group["runs"])
        group["pipelines"] = sorted(group["pipelines"])
        group["statuses"] = sorted(group["statuses"])
        group["message"] = group["message"][0] if group["message"] else group["signature"]
    return {
        "groups": shown,
        "days": days,
        "runs": len(run_rows),
        "cut": cut,
        "failures": sum(g["count"] for g in shown),
        "failed_runs": len({row["run_id"] for row in rows}),
        "oldest_run": run_rows[-1]["id"],
    }


async def run_detail(db: Any, run_id: int) -> dict[str, Any] | None:
    """One run for its page and its live JSON: facts, stage lanes, failures, retried, slowest.

    Reads only that run's tasks (through ``idx_task_runs_run_task``); None when no such run.
    """
    found = await _rows(
        db,
        f"SELECT v.*, {STOP_TEXT_SQL} AS stopped, r.params, r.error AS run_error, r.workers, "
        f"r.heartbeat_at AS last_beat, r.note FROM ({RUNS_SELECT}) AS v JOIN pipeline_runs r "
        "ON r.id = v.id WHERE v.id = :run_id",
        {"run_id": run_id},
    )
    if not found:
        return None
    run = found[0]
    start = parse_utc(run["started_at"])
    span = max(float(run["duration_s"] or 0.0), 0.001)
    params = {"run_id": run_id}
    stages = await _rows(
        db,
        """
SELECT COALESCE(t.stage, '') AS stage, MIN(t.id) AS first, COUNT(*) AS tasks,
  MAX(t.upstream_stage) AS consumes, MIN(t.started_at) AS first_start,
  MAX(COALESCE(t.finished_at, t.started_at)) AS last_end,
  SUM(t.finished_at IS NOT NULL AND t.status NOT IN ('queued', 'running')) AS finished
FROM task_runs t WHERE t.run_id = :run_id GROUP BY t.stage ORDER BY first
""",
        params,
    )
    buckets = await _rows(
        db,
        f"""
SELECT COALESCE(t.stage, '') AS stage, t.status,
  MIN({BUCKETS - 1}, MAX(0, CAST((julianday(COALESCE(t.finished_at, t.started_at))
    - julianday(:start)) * 86400.0 / :span * {BUCKETS} AS INTEGER))) AS bucket,
  COUNT(*) AS n
FROM task_runs t
WHERE t.run_id = :run_id
GROUP BY t.stage, t.status, bucket
""",
        {**params, "start": run["started_at"], "span": span},
    )
    lanes: dict[str, dict[str, Any]] = {}
    for stage in stages:
        first = parse_utc(stage["first_start"])
        last = parse_utc(stage["last_end"])
        seconds = (last - first).total_seconds() if first and last else None
        lanes[stage["stage"]] = {
            "stage": stage["stage"] or "(no stage)",
            "key": stage["stage"],
            "consumes": stage["consumes"],
            "tasks": stage["tasks"],
            "counts": {},
            "first_start": stage["first_start"],
            "last_end": stage["last_end"],
            "span_s": seconds,
            "per_s": round(stage["finished"] / seconds, 2) if seconds else None,
            "buckets": [{} for _ in range(BUCKETS)],
        }
    for row in buckets:
        lane = lanes.get(row["stage"])
        if lane is None:
            continue
        lane["counts"][row["status"]] = lane["counts"].get(row["status"], 0) + row["n"]
        if row["bucket"] is not None:
            cell = lane["buckets"][int(row["bucket"])]
            cell[row["status"]] = cell.get(row["status"], 0) + row["n"]
    failures = await _rows(
        db,
        f"""
SELECT t.task_id, t.task_key, t.name, t.stage, t.status, t.attempt, t.finished_at,
  COALESCE(NULLIF(t.message, ''), t.error, t.status) AS what
FROM task_runs t WHERE t.run_id = :run_id AND t.status IN {FAILED_SQL}
ORDER BY t.finished_at, t.task_id LIMIT 20
""",
        params,
    )
    retried = await _rows(
        db,
        """
SELECT t.task_id, t.task_key, t.name, t.stage, t.status, t.attempt,
  (SELECT a.error FROM task_attempts a WHERE a.run_id = t.run_id AND a.task_id = t.task_id
   ORDER BY a.attempt LIMIT 1) AS first_error
FROM task_runs t WHERE t.run_id = :run_id AND t.attempt > 1
ORDER BY t.attempt DESC, t.task_id LIMIT 20
""",
        params,
    )
    retried_total = await _rows(
        db,
        "SELECT COUNT(*) AS n, COUNT(DISTINCT task_id) AS tasks FROM task_attempts "
        "WHERE run_id = :run_id",
        params,
    )
    slowest = await _rows(
        db,
        f"""
SELECT t.task_id, t.task_key, t.name, t.stage, t.status, t.started_at, t.finished_at,
  ROUND((julianday(t.finished_at) - julianday(t.started_at)) * 86400, 3) AS seconds
FROM task_runs t WHERE t.run_id = :run_id AND t.status IN {TIMED_SQL}
  AND t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
ORDER BY seconds DESC, t.task_id LIMIT 10
""",
        params,
    )
    for row in failures + retried:
        for column in ("what", "first_error"):
            if row.get(column):
                row[column] = str(row[column]).strip().splitlines()[-1]
    live = run["status"] == "running" and not run["stale"]
    end = start + timedelta(seconds=span) if start else None
    return {
        "run": run,
        "live": live,
        "lanes": list(lanes.values()),
        "buckets": BUCKETS,
        "start": run["started_at"],
        "end": end.isoformat(timespec="milliseconds") if end else None,
        "failures": failures,
        "retried": retried,
        "retried_tasks": retried_total[0]["tasks"],
        "failed_attempts": retried_total[0]["n"],
        "slowest": slowest,
        "as_of": datetime.now(UTC).isoformat(timespec="seconds"),
    }


async def stage_tasks(
    db: Any,
    run_id: int,
    *,
    stage: str | None,
    since: str | None,
    until: str | None,
    status: str | None,
    page: int,
) -> dict[str, Any]:
    """The tasks of one run's stage in a time window (by finish, or start if unfinished)."""
    terms = ["t.run_id = :run_id"]
    params: dict[str, Any] = {"run_id": run_id}
    if stage is not None:
        terms.append("COALESCE(t.stage, '') = :stage")
        params["stage"] = stage
    when = "COALESCE(t.finished_at, t.started_at)"
    if since:
        terms.append(f"julianday({when}) >= julianday(:since)")
        params["since"] = since
    if until:
        terms.append(f"julianday({when}) < julianday(:until)")
        params["until"] = until
    if status:
        terms.append("t.status = :status")
        params["status"] = status
    where = " AND ".join(terms)
    rows = await _rows(
        db,
        f"""
SELECT t.task_id, t.task_key, t.name, t.stage, t.status, t.attempt, t.started_at,
  t.finished_at,
  ROUND((julianday(t.finished_at) - julianday(t.started_at)) * 86400, 3) AS seconds,
  COALESCE(NULLIF(t.message, ''), t.error) AS what
FROM task_runs t WHERE {where}
ORDER BY {when}, t.task_id LIMIT {TASKS_PAGE + 1} OFFSET {page * TASKS_PAGE}
""",
        params,
    )
    total = await _rows(db, f"SELECT COUNT(*) AS n FROM task_runs t WHERE {where}", params)
    for row in rows:
        if row.get("what"):
            row["what"] = str(row["what"]).strip().splitlines()[-1]
    return {
        "tasks": rows[:TASKS_PAGE],
        "more": len(rows) > TASKS_PAGE,
        "total": total[0]["n"],
        "page": page,
    }


async def previous_run(db: Any, run_id: int) -> int | None:
    """The run of the same pipeline before ``run_id`` (what a comparison starts from)."""
    rows = await _rows(
        db,
        "SELECT p.id FROM pipeline_runs p JOIN pipeline_runs r ON r.id = :run_id "
        "WHERE p.name = r.name AND p.id < r.id ORDER BY p.id DESC LIMIT 1",
        {"run_id": run_id},
    )
    return int(rows[0]["id"]) if rows else None


async def compare_runs(db: Any, a: int, b: int) -> dict[str, Any]:
    """Two runs side by side: each stage's span and counts, and the tasks whose status changed.

    Tasks are matched by ``task_key`` (a task's name when it has no key); reads only those
    two runs' tasks.
    """
    both = {"a": a, "b": b}
    runs = await _rows(
        db,
        f"SELECT v.*, {STOP_TEXT_SQL} AS stopped FROM ({RUNS_SELECT}) AS v WHERE v.id IN (:a, :b)",
        both,
    )
    by_id = {run["id"]: run for run in runs}
    stages = await _rows(
        db,
        f"""
SELECT t.run_id, COALESCE(t.stage, '') AS stage, MIN(t.id) AS first, COUNT(*) AS tasks,
  SUM(t.status IN {SUCCEEDED_SQL}) AS done, SUM(t.status IN {FAILED_SQL}) AS failed,
  ROUND((julianday(MAX(COALESCE(t.finished_at, t.started_at)))
    - julianday(MIN(t.started_at))) * 86400, 3) AS span_s,
  ROUND(AVG(CASE WHEN t.status IN {TIMED_SQL}
    THEN (julianday(t.finished_at) - julianday(t.started_at)) * 86400 END), 3) AS mean_s
FROM task_runs t WHERE t.run_id IN (:a, :b)
GROUP BY t.run_id, t.stage ORDER BY first
""",
        both,
    )
    table: dict[str, dict[str, Any]] = {}
    for row in stages:
        side = "a" if row["run_id"] == a else "b"
        entry = table.setdefault(row["stage"], {"stage": row["stage"] or "(no stage)"})
        entry[side] = row
    for entry in table.values():
        sa, sb = entry.get("a"), entry.get("b")
        if sa and sb and sa["span_s"] is not None and sb["span_s"] is not None:
            entry["delta_s"] = round(sb["span_s"] - sa["span_s"], 3)
    changed = await _rows(
        db,
        """
SELECT key, MAX(CASE WHEN run_id = :a THEN status END) AS status_a,
  MAX(CASE WHEN run_id = :a THEN task_id END) AS task_a,
  MAX(CASE WHEN run_id = :b THEN status END) AS status_b,
  MAX(CASE WHEN run_id = :b THEN task_id END) AS task_b
FROM (SELECT run_id, task_id, status, COALESCE(task_key, name) AS key FROM task_runs
      WHERE run_id IN (:a, :b))
GROUP BY key
HAVING status_a IS NOT status_b
-- Tasks in both runs first: a status that changed says more than a task one run lacks.
ORDER BY status_a IS NULL OR status_b IS NULL, key
""",
        both,
    )
    transitions: dict[tuple[str, str], int] = {}
    for row in changed:
        pair = (row["status_a"] or "", row["status_b"] or "")
        transitions[pair] = transitions.get(pair, 0) + 1
    return {
        "a": by_id.get(a),
        "b": by_id.get(b),
        "stages": list(table.values()),
        "changed": changed[:CHANGED_SHOWN],
        "changed_total": len(changed),
        "transitions": sorted(
            ({"from": k[0], "to": k[1], "tasks": n} for k, n in transitions.items()),
            key=lambda t: -int(t["tasks"]),
        ),
    }


def days_between(days: Sequence[str]) -> list[str]:
    """Every day from the first to the last of ``days`` (gaps included), at most 62."""
    if not days:
        return []
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    span = min((last - first).days, 61)
    return [(last - timedelta(days=span - i)).isoformat() for i in range(span + 1)]
