"""Canned queries and table settings: the raw, SQL-level answers, one click from the pages.

The pages people land on are the plugin's (`pipeloom_observe.plugin.pages`); these stay for
scripts (``.json``) and for anyone who wants the SQL. Each is bounded: none reads every task
row of a large history (see benchmarks/README.md, "observe at scale").
"""

from __future__ import annotations

from typing import Any, Final

from pipeloom.schema import RUNS_SELECT
from pipeloom_observe.sql import (
    ACTIVE_SQL,
    FAILED_SQL,
    RUN_END_SQL,
    RUN_PARAM_NOTE,
    RUN_SQL,
    SECONDS_SQL,
    STALE_SQL,
    STOP_TEXT_SQL,
    SUCCEEDED_SQL,
    TIMED_SQL,
    stop_text_sql,
)

__all__ = ["FLAKY_KEYS", "FLAKY_RUNS", "QUERIES", "TABLES"]

FLAKY_RUNS: Final = 30
"""Flaky tasks are looked for in the newest runs of the file, this many."""
FLAKY_KEYS: Final = 200
"""At most this many failing keys are checked for a success (the ones that failed most)."""

QUERIES: Final[dict[str, dict[str, Any]]] = {
    "run_list": {
        "title": "Runs",
        "description": (
            "Every run, newest first: status, duration, tasks done (skipped included) / "
            "failed / planned total, tasks not started and why the run stopped, progress "
            "of a live run. stale: still 'running' in the file, but its writer stopped sending "
            "heartbeats (its process died or is stuck); its duration ends at its last sign of "
            "life. Open a run id for its dashboard."
        ),
        "hide_sql": True,
        "sql": f"""
SELECT
  v.id AS run_id,
  v.shown_status AS status,
  v.stale,
  v.name,
  v.started_at,
  v.duration_s,
  v.tasks_done AS done,
  v.tasks_failed AS failed,
  v.tasks_total AS total,
  v.tasks_not_started AS not_started,
  {STOP_TEXT_SQL} AS stopped,
  CASE WHEN v.status = 'running' THEN v.progress END AS progress,
  ROUND(v.tasks_per_s, 1) AS tasks_per_s,
  r.params,
  r.error
FROM ({RUNS_SELECT}) AS v
JOIN pipeline_runs r ON r.id = v.id
ORDER BY v.id DESC
LIMIT 1000
""".strip(),
    },
    "latest_run": {
        "title": "Run summary",
        "description": "One run with its task counts, counted live from task_runs."
        + RUN_PARAM_NOTE,
        "hide_sql": True,
        "sql": f"""
SELECT
  r.id AS run_id,
  r.name,
  r.status,
  {STALE_SQL} AS stale,
  r.heartbeat_at,
  r.started_at,
  r.finished_at,
  {SECONDS_SQL.format(end=RUN_END_SQL, start="r.started_at")} AS seconds,
  r.workers,
  MAX(r.tasks_total, COUNT(t.id)) AS tasks,
  COALESCE(SUM(t.status IN {SUCCEEDED_SQL}), 0) AS done,
  COALESCE(SUM(t.status IN {FAILED_SQL}), 0) AS failed,
  COALESCE(SUM(t.status IN {ACTIVE_SQL}), 0) AS in_flight,
  r.tasks_not_started AS not_started,
  {stop_text_sql("r.stop_reason", STALE_SQL)} AS stopped
FROM pipeline_runs r
LEFT JOIN task_runs t ON t.run_id = r.id
WHERE r.id = {RUN_SQL}
GROUP BY r.id
""".strip(),
    },
    "failures": {
        "title": "Failed tasks",
        "description": "Tasks of a run that failed (error, timeout, interrupted), with their error."
        + RUN_PARAM_NOTE,
        "hide_sql": True,
        "sql": f"""
SELECT
  t.run_id,
  t.task_id,
  t.name,
  t.status,
  t.attempt,
  t.finished_at,
  t.message,
  t.error
FROM task_runs t
WHERE t.run_id = {RUN_SQL} AND t.status IN {FAILED_SQL}
ORDER BY t.task_id
LIMIT 1000
""".strip(),
    },
    "slowest_tasks": {
        "title": "Slowest tasks",
        "description": (
            "The 100 longest tasks of a run that ran to an end (done, error, timeout; an "
            "interrupted task's finish is only when its death was noticed)." + RUN_PARAM_NOTE
        ),
        "hide_sql": True,
        "sql": f"""
SELECT
  t.run_id,
  t.task_id,
  t.name,
  t.status,
  t.started_at,
  t.finished_at,
  {SECONDS_SQL.format(end="t.finished_at", start="t.started_at")} AS seconds
FROM task_runs t
WHERE t.run_id = {RUN_SQL} AND t.status IN {TIMED_SQL}
  AND t.started_at IS NOT NULL AND t.finished_at IS NOT NULL
ORDER BY seconds DESC, t.task_id
LIMIT 100
""".strip(),
    },
    "tasks_per_minute": {
        "title": "Tasks finished per minute",
        "description": "Throughput of a run, in UTC minutes." + RUN_PARAM_NOTE,
        "hide_sql": True,
        "sql": f"""
SELECT
  substr(finished_at, 1, 16) AS minute,
  COUNT(*) AS tasks,
  SUM(status IN {SUCCEEDED_SQL}) AS done,
  SUM(status IN {FAILED_SQL}) AS failed
FROM task_runs
WHERE run_id = {RUN_SQL} AND finished_at IS NOT NULL
GROUP BY minute
ORDER BY minute
""".strip(),
    },
    "flaky_tasks": {
        "title": "Flaky tasks",
        "description": (
            f"Task keys that failed in some of the last {FLAKY_RUNS} runs and succeeded in "
            "others: the tasks to look at first. run_id and task_id: its latest failure. "
            f"Bounded (the {FLAKY_KEYS} keys that failed most), so it answers at once on a "
            "history of millions of tasks."
        ),
        "hide_sql": True,
        "sql": f"""
WITH recent AS (SELECT id FROM pipeline_runs ORDER BY id DESC LIMIT {FLAKY_RUNS}),
-- The first task row of those runs: a key's rows from there on are found in its index.
floor AS (
  SELECT MIN((SELECT MIN(t.id) FROM task_runs t WHERE t.run_id = recent.id)) AS id FROM recent
),
failed AS (
  SELECT t.task_key, COUNT(*) AS failed, MAX(t.id) AS latest
  FROM task_runs t
  WHERE t.run_id IN (SELECT id FROM recent) AND t.status IN {FAILED_SQL}
    AND t.task_key IS NOT NULL
  GROUP BY t.task_key
  ORDER BY failed DESC, t.task_key
  LIMIT {FLAKY_KEYS}
),
counted AS (
  SELECT f.task_key, f.failed, f.latest,
    (SELECT COUNT(*) FROM task_runs s WHERE s.task_key = f.task_key
       AND s.id >= (SELECT id FROM floor) AND s.run_id IN (SELECT id FROM recent)) AS runs,
    (SELECT COUNT(*) FROM task_runs s WHERE s.task_key = f.task_key
       AND s.id >= (SELECT id FROM floor) AND s.run_id IN (SELECT id FROM recent)
       AND s.status IN {SUCCEEDED_SQL}) AS succeeded
  FROM failed f
)
SELECT c.task_key, c.runs, c.succeeded, c.failed, l.run_id, l.task_id
FROM counted c JOIN task_runs l ON l.id = c.latest
WHERE c.succeeded > 0
ORDER BY c.failed DESC, c.task_key
""".strip(),
    },
}
"""Canned queries: the questions people ask of run history first (their SQL folded away)."""

TABLES: Final[dict[str, dict[str, Any]]] = {
    "pipeline_runs": {
        "description": "One row per run_pipeline call, newest first. Open a run for its tasks.",
        "sort_desc": "id",
        "facets": ["status", "name"],
        # Facets and foreign-key cells name a run by its id: by name, every run of a
        # pipeline would look the same ("demo x 6").
        "label_column": "id",
    },
    "task_runs": {
        "description": "One row per task per run, newest first. Open a task id for its page.",
        "sort_desc": "id",
        "facets": ["status", "run_id"],
        "label_column": "name",
    },
    "task_attempts": {
        "description": "Failed attempts of tasks that were retried.",
        "sort_desc": "id",
        "facets": ["status"],
    },
    "task_logs": {
        "description": "Log records written inside tasks (ctx.log and logging), per attempt.",
        "sort_desc": "id",
        "facets": ["level"],
    },
    "dead_letters": {
        "description": "Messages the writer could not apply, with the error it met.",
        "sort_desc": "id",
        "facets": ["msg_type"],
    },
    "pipeloom_state": {
        "description": (
            "Each pipeline's incremental state (ctx.state.set): the JSON value of each key, "
            "committed with the task that set it; run_id and task_key say which."
        ),
        "sort": "key",
        "facets": ["pipeline"],
    },
    "_sqlite_migrations": {"hidden": True},
}
