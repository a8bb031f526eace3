"""Two pipelines in two processes writing one file at the same time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._harness import query
from tests.reliability._support import child_output, integrity, spawn_child

TASKS = 3000
TRIALS = 3


@pytest.mark.timeout(90)
@pytest.mark.parametrize("trial", range(TRIALS))
def test_two_processes_one_file_both_finish_with_distinct_runs(tmp_path: Path, trial: int) -> None:
    db = tmp_path / "shared.db"  # a fresh file: both processes race to create the schema too
    events = [tmp_path / f"proc-{i}.events" for i in (1, 2)]
    children = [spawn_child("race", db, ev, TASKS) for ev in events]
    codes = [child.wait(timeout=60) for child in children]
    outputs = [child_output(ev) for ev in events]
    for code, (out, err) in zip(codes, outputs, strict=True):
        assert code == 0, err
        assert "locked" not in (out + err).lower()
        assert "Traceback" not in err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert {r["status"] for r in results} == {"done"}
    assert results[0]["run_id"] != results[1]["run_id"]

    assert integrity(db) == "ok"
    runs = query(db, "SELECT id, name, status, tasks_total, tasks_done FROM pipeline_runs")
    assert sorted(runs) == sorted(
        (r["run_id"], ev.stem, "done", TASKS, TASKS) for r, ev in zip(results, events, strict=True)
    )
    per_run = query(db, "SELECT run_id, status, count(*) FROM task_runs GROUP BY run_id, status")
    assert sorted(per_run) == sorted((r["run_id"], "done", TASKS) for r in results)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("trial", range(5))
def test_four_processes_opening_a_fresh_file_at_once_never_see_locked(
    tmp_path: Path, trial: int
) -> None:
    """Switching a new file to WAL needs an exclusive lock that SQLite does not wait for;
    the first writers to open a new file used to fail with "database is locked"."""
    db = tmp_path / "fresh.db"
    events = [tmp_path / f"opener-{i}.events" for i in range(4)]
    children = [spawn_child("race", db, ev, 100) for ev in events]
    codes = [child.wait(timeout=60) for child in children]
    for code, ev in zip(codes, events, strict=True):
        out, err = child_output(ev)
        assert code == 0, err
        assert "locked" not in (out + err).lower()
    assert query(db, "SELECT count(*), sum(status = 'done') FROM pipeline_runs") == [(4, 4)]
    assert integrity(db) == "ok"
