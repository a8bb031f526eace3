"""SIGKILL a running pipeline at random moments: the file stays sound and nothing is lost."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from functools import partial
from pathlib import Path

import pytest

from pipeloom import TaskDef, TaskQueue, run_pipeline
from tests._harness import query
from tests.reliability._support import integrity, read_events, spawn_child, wait_for

TRIALS = 20
CHUNKS = 4
TASKS = 5000
SEED = 20261123


def _has_events(events: Path) -> bool:
    return events.exists() and events.stat().st_size > 0


def _noop(task: TaskDef, q: TaskQueue) -> None:
    """The follow-up run has no tasks; its writer only has to open the file."""


@pytest.mark.timeout(100)
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_sigkill_mid_run_keeps_committed_finishes_and_next_writer_marks_interrupted(
    tmp_path: Path, chunk: int
) -> None:
    # The 20 trials run as 4 seeded chunks of 5, so parallel test workers share them.
    _kill_trials(tmp_path, signal.SIGKILL, TRIALS // CHUNKS, SEED + 100 * chunk)


@pytest.mark.timeout(60)
def test_sigterm_mid_run_is_a_graceful_stop_not_a_crash(tmp_path: Path) -> None:
    """SIGTERM stops a run like a first Ctrl-C: its own row is closed, nothing is left running.

    (test_rel_signals.py covers every executor, SIGHUP, the grace period and PID 1.)
    """
    rng = random.Random(SEED + 1)
    for trial in range(4):
        db, events = tmp_path / f"term-{trial}.db", tmp_path / f"term-{trial}.events"
        child = spawn_child("kill", db, events, TASKS)
        try:
            wait_for(partial(_has_events, events), "first commit")
            with contextlib.suppress(subprocess.TimeoutExpired):  # still running: good
                child.wait(timeout=rng.uniform(0.05, 0.4))
            os.kill(child.pid, signal.SIGTERM)
        finally:
            child.wait()
        assert child.returncode in (0, 143), f"trial {trial}: exit {child.returncode}"
        assert integrity(db) == "ok", f"trial {trial}"
        ((status, reason),) = query(db, "SELECT status, stop_reason FROM pipeline_runs")
        if child.returncode == 143:
            assert (status, reason) == ("cancelled", "sigterm"), f"trial {trial}"
        else:
            assert (status, reason) == ("done", None), f"trial {trial}"
        assert query(db, "SELECT count(*) FROM task_runs WHERE status = 'running'") == [(0,)]
        _started, finished = read_events(events)
        stored = dict(query(db, "SELECT task_id, status FROM task_runs"))
        assert all(stored.get(t) == s for t, s in finished.items()), f"trial {trial}"


def _kill_trials(tmp_path: Path, sig: signal.Signals, trials: int, seed: int) -> None:
    rng = random.Random(seed)
    outcomes: list[str] = []
    interrupted = 0
    for trial in range(trials):
        db = tmp_path / f"kill-{trial}.db"
        events = tmp_path / f"kill-{trial}.events"
        child = spawn_child("kill", db, events, TASKS)
        try:
            wait_for(partial(_has_events, events), "first commit")
            delay = rng.uniform(0.05, 0.6)
            with contextlib.suppress(subprocess.TimeoutExpired):  # still running: good
                child.wait(timeout=delay)
            os.kill(child.pid, sig)
        finally:
            child.wait()  # reap it, so its pid is really gone
        completed = child.returncode == 0
        outcomes.append("completed" if completed else "killed")
        _started, finished = read_events(events)
        assert finished, f"trial {trial}: the child committed no finish before the kill"

        assert integrity(db) == "ok", f"trial {trial}"
        dead_run = query(db, "SELECT id, status FROM pipeline_runs ORDER BY id")
        assert len(dead_run) == 1
        run_id = dead_run[0][0]

        # The next writer to open the file notices the dead pid.
        run_pipeline([], db, worker_fn=_noop, progress=False)

        assert integrity(db) == "ok", f"trial {trial}"
        runs = dict(query(db, "SELECT id, status FROM pipeline_runs ORDER BY id"))
        assert runs[run_id] == ("done" if completed else "interrupted"), f"trial {trial}"
        assert query(db, "SELECT count(*) FROM task_runs WHERE status = 'running'") == [(0,)]
        stored = dict(query(db, "SELECT task_id, status FROM task_runs WHERE run_id = ?", run_id))
        interrupted += sum(1 for s in stored.values() if s == "interrupted")
        lost = {t: s for t, s in finished.items() if stored.get(t) != s}
        assert not lost, f"trial {trial}: committed finishes lost or changed: {lost}"
        ((total, done, reason, finished_at, heartbeat),) = query(
            db,
            "SELECT tasks_total, tasks_done, stop_reason, finished_at, heartbeat_at "
            "FROM pipeline_runs WHERE id = ?",
            run_id,
        )
        # The planned total stays, whatever was left undone.
        assert (total, done) == (TASKS, sum(1 for s in stored.values() if s == "done"))
        if not completed:
            # A dead run ends at its last sign of life, not when the next writer noticed.
            assert reason == "crashed" and finished_at == heartbeat, f"trial {trial}"
    # The seeded delays must actually cut runs short, or the test proves little.
    assert outcomes.count("killed") >= trials // 2, outcomes
    assert interrupted > 0, "some kills caught tasks mid-flight, and those were marked"
