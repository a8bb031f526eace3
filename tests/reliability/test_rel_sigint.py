"""Ctrl-C on a running pipeline (SIGINT to a child process running `run_pipeline`)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._harness import query
from tests.reliability._support import (
    CHILD,
    child_output,
    integrity,
    read_events,
    spawn_child,
    wait_for,
)

TASKS = 200


def _done_count(db: Path) -> int:
    """Finished tasks so far; 0 while the file or its tables do not exist yet."""
    if not db.exists():
        return 0
    try:
        return int(query(db, "SELECT count(*) FROM task_runs WHERE status = 'done'")[0][0])
    except sqlite3.OperationalError:
        return 0


@pytest.mark.timeout(60)
def test_first_sigint_lets_in_flight_tasks_finish_and_cancels_the_rest(tmp_path: Path) -> None:
    db, events = tmp_path / "int.db", tmp_path / "int.events"
    child = spawn_child("sigint", db, events, TASKS)
    try:
        wait_for(lambda: len(read_events(events)[1]) >= 8, "eight finished tasks")
        os.kill(child.pid, signal.SIGINT)
        rc = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out, err = child_output(events)
    assert rc == 130, err
    assert "Traceback" not in err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "cancelled"

    assert integrity(db) == "ok"
    rows = query(db, "SELECT task_id, status, started_at FROM task_runs")
    # Tasks in flight when Ctrl-C came were allowed to finish: every task with a row started
    # and is done. Tasks never started get no row (the source is not drained to write them);
    # the run row and the result count them.
    assert {str(s) for _, s, _ in rows} == {"done"}
    assert all(started is not None for _, _, started in rows)
    assert result["not_started"] == TASKS - len(rows) > 0
    assert query(db, "SELECT status, note FROM pipeline_runs") == [
        ("cancelled", f"{TASKS - len(rows)} task(s) not started: the run was stopped")
    ]
    started, finished = read_events(events)
    assert started == {t for t, _, _ in rows}
    assert result["counts"] == {"done": len(rows)}
    assert finished.keys() == {t for t, _, _ in rows}


@pytest.mark.timeout(60)
def test_second_sigint_abandons_in_flight_tasks_as_interrupted(tmp_path: Path) -> None:
    db, events = tmp_path / "int2.db", tmp_path / "int2.events"
    child = spawn_child("sigint2", db, events, TASKS)

    def all_workers_blocked() -> bool:
        started, finished = read_events(events)
        blocked = {t for t in started if t % 5 == 0 and t not in finished}
        return len(blocked) == 4  # the child runs four workers

    try:
        wait_for(all_workers_blocked, "four workers stuck in minute-long tasks")
        os.kill(child.pid, signal.SIGINT)
        time.sleep(0.3)
        assert child.poll() is None, "the first Ctrl-C must wait for in-flight tasks"
        os.kill(child.pid, signal.SIGINT)
        rc = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out, err = child_output(events)
    assert rc == 130, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"

    assert integrity(db) == "ok"
    assert query(db, "SELECT status FROM pipeline_runs") == [("interrupted",)]
    rows = query(db, "SELECT task_id, status, started_at FROM task_runs")
    assert TASKS > len(rows) > 4
    by_status: dict[str, set[int]] = {}
    for task_id, status, _ in rows:
        by_status.setdefault(str(status), set()).add(int(str(task_id)))
    assert set(by_status) == {"done", "interrupted"}
    assert len(by_status["interrupted"]) == 4
    assert all(t % 5 == 0 for t in by_status["interrupted"])
    assert all(started is not None for _, _, started in rows)
    assert query(db, "SELECT note FROM pipeline_runs") == [
        (f"{TASKS - len(rows)} task(s) not started: the run was stopped",)
    ]


@pytest.mark.timeout(60)
def test_cli_demo_sigint_exits_130_with_summary(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeloom_cli", "demo", "--db", str(db), "-n", "500", "-w", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: _done_count(db) > 0,
            "the demo's first finished task",
        )
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert "Stopping" in out  # the first Ctrl-C is acknowledged
    assert "not started" in out and "pipeloom run" in out  # the summary table
    (status, note) = query(db, "SELECT status, note FROM pipeline_runs")[0]
    assert status == "cancelled" and "not started" in str(note)
    assert integrity(db) == "ok"
    assert query(db, "SELECT count(*) FROM task_runs WHERE status = 'running'") == [(0,)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("mode", "signals", "run_status", "statuses"),
    [
        ("sigint", 1, "cancelled", {"done"}),
        ("sigint2", 2, "interrupted", {"done", "interrupted"}),
    ],
    ids=["once", "twice"],
)
def test_cli_run_under_ctrl_c_exits_130_with_a_consistent_file(
    tmp_path: Path, mode: str, signals: int, run_status: str, statuses: set[str]
) -> None:
    db = tmp_path / "cli.db"
    target = f"{CHILD}:cli_main"
    cmd = [sys.executable, "-m", "pipeloom_cli", "run", target, "--db", str(db)]
    child = subprocess.Popen(
        [*cmd, "--arg", f"mode={mode}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _done_count(db) >= 4, "four finished tasks")
        for _ in range(signals):
            child.send_signal(signal.SIGINT)
            time.sleep(0.3)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert "Stopping" in out + err
    assert integrity(db) == "ok"
    assert query(db, "SELECT status FROM pipeline_runs") == [(run_status,)]
    assert {s for (s,) in query(db, "SELECT DISTINCT status FROM task_runs")} == statuses
