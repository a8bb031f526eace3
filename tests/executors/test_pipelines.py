"""Declarative pipelines on every executor: retries, resume, and timeouts that really stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeloom import Pipeline
from tests._harness import query
from tests.executors import _pipes
from tests.executors._support import pipeloom_children
from tests.executors.conftest import EXECUTORS


@pytest.mark.parametrize("executor", EXECUTORS)
def test_retries_results_and_resume(tmp_path: Path, executor: str, make_executor: Any) -> None:
    db = tmp_path / "p.db"
    task = _pipes.square_async if executor == "async" else _pipes.square
    pipe = Pipeline("squares", db=db, workers=2, executor=make_executor(executor))
    pipe.map(task, [1, 2, 3, 4])
    first = pipe.run(progress=False)
    assert first.ok and first.counts == {"done": 4}
    assert query(
        db, f"SELECT task_key, result, attempt FROM task_runs WHERE task_key = '{task.name}:3'"
    ) == [(f"{task.name}:3", "9", 2)]
    assert query(db, "SELECT count(*) FROM task_attempts WHERE status = 'error'") == [(1,)]

    again = Pipeline("squares", db=db, workers=2, executor=make_executor(executor))
    again.map(task, [1, 2, 3, 4, 5])
    second = again.run(resume=True, progress=False)
    assert second.ok and second.counts == {"skipped": 4, "done": 1}


def test_a_timeout_kills_a_cpu_bound_task_in_its_process(tmp_path: Path) -> None:
    db = tmp_path / "spin.db"
    pipe = Pipeline("spin", db=db, workers=2, executor="processes")
    pipe.map(_pipes.spin, [1, 2, 3])
    result = pipe.run(progress=False)
    assert result.counts == {"done": 2, "timeout": 1}
    (message,) = query(db, "SELECT message FROM task_runs WHERE status = 'timeout'")[0]
    assert "its worker process was killed" in str(message)
    assert pipeloom_children() == []


def test_a_task_waiting_behind_one_killed_for_its_timeout_still_runs(tmp_path: Path) -> None:
    # Task 3 is sent to wait behind task 2, which holds its process's GIL in C: the child
    # can neither give task 3 back nor begin it. Killed for task 2's timeout, the child
    # takes task 3 down with it unbegun, and another child runs it.
    db = tmp_path / "hog.db"
    pipe = Pipeline("hog", db=db, workers=2, executor="processes")
    pipe.map(_pipes.hog, [2, 1, 3])
    result = pipe.run(progress=False)
    assert result.counts == {"done": 2, "timeout": 1}
    assert query(db, "SELECT task_key, status FROM task_runs ORDER BY task_id") == [
        ("hog:2", "timeout"),
        ("hog:1", "done"),
        ("hog:3", "done"),
    ]
    assert pipeloom_children() == []


def test_a_killed_attempt_is_retried_in_a_fresh_process(tmp_path: Path) -> None:
    db = tmp_path / "retry.db"
    pipe = Pipeline("spin-once", db=db, workers=1, executor="processes")
    pipe.map(_pipes.spin_first_try, [10])
    result = pipe.run(progress=False)
    assert result.ok
    assert query(db, "SELECT status, result, attempt FROM task_runs") == [("done", "12", 2)]
    assert query(db, "SELECT attempt, status FROM task_attempts") == [(1, "timeout")]


def test_an_async_timeout_cancels_the_coroutine(tmp_path: Path) -> None:
    db = tmp_path / "aio.db"
    pipe = Pipeline("aio", db=db, workers=3, executor="async")
    pipe.map(_pipes.sleepy_async, [1, 2, 3])
    result = pipe.run(progress=False)
    assert result.counts == {"done": 2, "timeout": 1}
    (message,) = query(db, "SELECT message FROM task_runs WHERE status = 'timeout'")[0]
    assert "the coroutine was cancelled" in str(message)
