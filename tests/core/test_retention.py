"""Retention: whole runs go (every row that names them), live runs, each pipeline's latest
run, resume sources and other applications' tables never do, and the views stay right."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeloom import Pipeline, TaskDef, TaskQueue, run_pipeline
from pipeloom.errors import DatabaseError, InvalidArgumentError
from pipeloom.options import RunOptions
from pipeloom.retention import (
    RUN_TABLES,
    Pacing,
    Retention,
    parse_age,
    prune,
    table_sizes,
    vacuum,
)
from tests._harness import query
from tests.core import _unattended_tasks as tasks


def _run(db: Path, name: str = "daily", n: int = 6) -> int:
    """One finished run with failed tasks, retried attempts, logs and dead letters."""
    pipe = Pipeline(name, db=db, workers=2, handlers={tasks.Refused: tasks.refuse})
    pipe.map(tasks.every_third_fails, range(1, n + 1))
    pipe.map(tasks.logs_and_letters, range(1, 3))
    result = pipe.run(progress=False)
    assert result.run_id is not None
    return result.run_id


def _per_run(db: Path, table: str) -> dict[int, int]:
    return dict(query(db, f"SELECT run_id, count(*) FROM {table} GROUP BY run_id"))


def _consistent(db: Path) -> None:
    """No row of a run that is gone; the runs view lists exactly the run rows."""
    ids = {r[0] for r in query(db, "SELECT id FROM pipeline_runs")}
    for table in RUN_TABLES:
        assert set(_per_run(db, table)) <= ids, table
    assert {r[0] for r in query(db, "SELECT id FROM runs")} == ids
    for run_id, total in query(db, "SELECT id, tasks_total FROM runs"):
        assert total == _per_run(db, "task_runs").get(run_id, 0)


def test_prune_deletes_whole_runs_and_never_a_foreign_table(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    daily = [_run(db) for _ in range(4)]
    other = _run(db, "other")
    conn = sqlite3.connect(db)
    # An application's tables: one even has a run_id column, one points at runs by key.
    conn.execute("CREATE TABLE loads (id INTEGER PRIMARY KEY, run_id INTEGER, rows INTEGER)")
    conn.executemany("INSERT INTO loads (run_id, rows) VALUES (?, 10)", [(i,) for i in daily])
    conn.execute(
        "CREATE TABLE audits (id INTEGER PRIMARY KEY, "
        "run INTEGER REFERENCES pipeline_runs(id) ON DELETE CASCADE)"
    )
    conn.execute("INSERT INTO audits (run) VALUES (?)", (daily[0],))
    conn.commit()
    conn.close()
    for table in ("task_attempts", "task_logs", "dead_letters"):
        assert _per_run(db, table).get(daily[1]), table  # the run has rows in every table

    dry = prune(db, Retention(keep_runs=2), dry_run=True)
    assert dry.plan.ids == [daily[1]] and not dry.deleted
    assert dry.plan.kept == {daily[0]: "referenced by your table audits"}
    assert dry.plan.rows["task_runs"] == 8 and dry.plan.rows["dead_letters"] == 2
    assert len(query(db, "SELECT id FROM pipeline_runs")) == 5  # a dry run deletes nothing

    result = prune(db, Retention(keep_runs=2))
    assert result.deleted["pipeline_runs"] == 1
    assert [r[0] for r in query(db, "SELECT id FROM pipeline_runs ORDER BY id")] == [
        daily[0],
        daily[2],
        daily[3],
        other,
    ]
    for table in RUN_TABLES:
        assert daily[1] not in _per_run(db, table), table
    assert query(db, "SELECT count(*) FROM loads") == [(4,)]  # untouched, run_id column or not
    assert query(db, "SELECT run FROM audits") == [(daily[0],)]  # and nothing cascaded
    _consistent(db)
    # The documented query still answers from what is left.
    assert (
        sum(n for _, n in query(db, "SELECT status, COUNT(*) FROM task_runs GROUP BY status")) == 32
    )


def test_latest_run_and_the_run_it_resumed_from_are_kept(tmp_path: Path) -> None:
    db = tmp_path / "resume.db"
    first = _run(db)
    pipe = Pipeline("daily", db=db, workers=2, handlers={tasks.Refused: tasks.refuse})
    pipe.map(tasks.every_third_fails, range(1, 7))
    resumed = pipe.run(progress=False, resume=True)  # skips what run 1 did
    assert resumed.counts.get("skipped")
    plan = prune(db, Retention(keep_runs=1), dry_run=True).plan
    assert plan.ids == []
    assert plan.kept == {first: f"run {resumed.run_id} resumed from it"}
    # The same with --pipeline: the rule is per pipeline.
    plan = prune(db, Retention(keep_runs=1, pipeline="daily"), dry_run=True).plan
    assert plan.kept == {first: f"run {resumed.run_id} resumed from it"}


def _blocked_run(db: Path, started: threading.Event, release: threading.Event) -> None:
    def work(task: TaskDef, q: TaskQueue) -> None:
        started.set()
        release.wait(30)

    run_pipeline([TaskDef(1, "held")], db, worker_fn=work, progress=False, run_name="daily")


def test_a_live_run_is_never_pruned_and_retention_runs_at_start(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    first = _run(db)
    started, release = threading.Event(), threading.Event()
    live = threading.Thread(target=_blocked_run, args=(db, started, release))
    live.start()
    try:
        assert started.wait(30)
        (live_id,) = query(db, "SELECT id FROM pipeline_runs WHERE status = 'running'")[0]
        # Two later runs of the same pipeline, with retention applied as each starts.
        options = RunOptions(keep_runs=1)
        pipe = Pipeline("daily", db=db, workers=2, options=options)
        pipe.map(tasks.ok, range(3))
        pipe.run(progress=False)
        last = pipe.run(progress=False)
        left = [r[0] for r in query(db, "SELECT id FROM pipeline_runs ORDER BY id")]
        assert left == [live_id, last.run_id]  # the first and the middle run went
        assert first not in _per_run(db, "task_runs")
        plan = prune(db, Retention(keep_runs=1), dry_run=True).plan
        assert plan.kept == {live_id: "live: its writer holds an unexpired lease"}
    finally:
        release.set()
        live.join(30)
    _consistent(db)


def test_older_than_and_keep_runs_together(tmp_path: Path) -> None:
    db = tmp_path / "age.db"
    ids = [_run(db) for _ in range(3)]
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE pipeline_runs SET started_at = '2020-01-01T00:00:00+00:00' WHERE id = ?", (ids[0],)
    )
    conn.commit()
    conn.close()
    assert prune(db, Retention(keep_days=30), dry_run=True).plan.ids == [ids[0]]
    # With both rules a run goes only when both say so: run 2 is recent, so it stays.
    assert prune(db, Retention(keep_runs=1, keep_days=30), dry_run=True).plan.ids == [ids[0]]
    assert prune(db, Retention(keep_runs=1), dry_run=True).plan.ids == ids[:2]


def test_a_prune_stopped_half_way_is_finished_by_the_next(tmp_path: Path) -> None:
    db = tmp_path / "half.db"
    ids = [_run(db) for _ in range(2)]
    conn = sqlite3.connect(db)  # what a prune killed after its first transaction leaves
    conn.execute("DELETE FROM pipeline_runs WHERE id = ?", (ids[0],))
    conn.commit()
    conn.close()
    plan = prune(db, Retention(keep_runs=1), dry_run=True).plan
    assert plan.ids == [] and plan.orphans == [ids[0]]
    prune(db, Retention(keep_runs=1))
    _consistent(db)
    assert set(_per_run(db, "task_runs")) == {ids[1]}


def test_settings_are_checked_before_anything_is_deleted(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="keep_runs=0"):
        RunOptions(keep_runs=0)
    with pytest.raises(InvalidArgumentError, match="30x"):
        parse_age("30x")
    assert parse_age("12h").total_seconds() == 43200
    with pytest.raises(DatabaseError, match="no such database file"):
        prune(tmp_path / "missing.db", Retention(keep_runs=1))


def test_vacuum_refuses_while_a_run_is_live_and_gives_space_back(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    for _ in range(3):
        _run(db, n=60)
    prune(db, Retention(keep_runs=1))
    before, after = vacuum(db)
    assert after < before
    sizes = {s.table: s for s in table_sizes(db)}
    assert sizes["task_runs"].rows == 62 and (sizes["task_runs"].bytes or 1) > 0
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE pipeline_runs SET status = 'running', lease_s = 600, "
        "heartbeat_at = strftime('%Y-%m-%dT%H:%M:%f', 'now')"
    )
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="is live, and VACUUM would block"):
        vacuum(db)


def test_incremental_vacuum_shrinks_the_file_beside_a_live_run(tmp_path: Path) -> None:
    """A file in incremental auto-vacuum gives its free pages back in bounded steps, also
    while a run is live (no full VACUUM, so nothing to refuse)."""
    db = tmp_path / "inc.db"
    for _ in range(3):
        _run(db, n=80)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")
    conn.execute(
        "UPDATE pipeline_runs SET status = 'running', lease_s = 600, "
        "heartbeat_at = strftime('%Y-%m-%dT%H:%M:%f', 'now') WHERE id = 3"
    )
    conn.commit()
    conn.close()
    prune(db, Retention(keep_runs=1))
    (free,) = query(db, "PRAGMA freelist_count")[0]
    assert free > 0
    before, after = vacuum(db)
    assert after < before
    assert query(db, "PRAGMA freelist_count") == [(0,)]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


def test_cli_prune_and_info(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    ids = [_run(db) for _ in range(3)]
    cli = [sys.executable, "-m", "pipeloom_cli", "db"]
    dry = subprocess.run(
        [*cli, "prune", str(db), "--keep-runs", "1", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert "would delete 2 run(s)" in dry.stdout and f"run {ids[0]}  daily" in dry.stdout
    done = subprocess.run(
        [*cli, "prune", str(db), "--keep-runs", "1", "--vacuum"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "deleted 2 run(s)" in done.stdout and "vacuum:" in done.stdout
    assert [r[0] for r in query(db, "SELECT id FROM pipeline_runs")] == [ids[2]]
    bad = subprocess.run(
        [*cli, "prune", str(db), "--older-than", "soon"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--older-than" in bad.stderr and "30d" in bad.stderr
    info = subprocess.run([*cli, "info", str(db)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert any(line.split()[:3] == ["task_runs", "8", "rows"] for line in info.stdout.splitlines())


def test_a_transaction_time_below_any_statement_still_finishes_the_prune(
    tmp_path: Path,
) -> None:
    """Transactions end on time, not on a row count: with a bound no statement can meet,
    each transaction still deletes one statement's rows (never an endless loop of empty
    ones), statements shrink to a few rows, and the prune ends with every run row gone."""
    db = tmp_path / "tight.db"
    ids = [_run(db, n=12) for _ in range(3)]
    tight = Pacing(hold=1e-9, pause=0.0, pause_contended=0.0, first_chunk=4)
    result = prune(db, Retention(keep_runs=1), pacing=tight)
    _consistent(db)
    assert set(_per_run(db, "task_runs")) == {ids[-1]}
    assert result.deleted["pipeline_runs"] == 2 and result.deleted["task_runs"] == 28
    assert len(result.holds) == result.transactions
    # One statement each: 2 run rows, then at most 4 rows a statement (first_chunk).
    assert result.transactions >= 2 + 28 // 4
