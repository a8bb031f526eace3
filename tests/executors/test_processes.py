"""What only the process executor has: children that die, pickling, real subprocess CLI runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pipeloom import PipeloomError, TaskDef, run_pipeline
from pipeloom.executors import ProcessExecutor
from tests._harness import query
from tests.executors._support import pipeloom_children
from tests.executors._workers import dies, logs_a_line, noop, unpicklable_result


def test_a_child_that_dies_fails_its_task_and_the_run_goes_on(tmp_path: Path) -> None:
    db = tmp_path / "die.db"
    tasks = [TaskDef(i, f"t{i}") for i in range(1, 9)]
    result = run_pipeline(
        tasks, db, worker_fn=dies, workers=2, executor=ProcessExecutor(), progress=False
    )
    assert result.counts == {"done": 6, "error": 2}
    assert result.failed_task_ids == [2, 3]
    assert query(
        db, "SELECT task_id, message FROM task_runs WHERE status = 'error' ORDER BY task_id"
    ) == [
        (2, "WorkerDied: worker process died (signal SIGKILL)"),
        (3, "WorkerDied: worker process died (exit code 3)"),
    ]
    assert pipeloom_children() == []


def test_an_unpicklable_result_is_the_tasks_error_not_a_hang(tmp_path: Path) -> None:
    db = tmp_path / "pickle.db"
    result = run_pipeline(
        [TaskDef(1, "a"), TaskDef(2, "b")],
        db,
        worker_fn=unpicklable_result,
        executor="processes",
        progress=False,
    )
    assert result.counts == {"error": 2}
    (message,) = query(db, "SELECT message FROM task_runs WHERE task_id = 1")[0]
    assert str(message).startswith("CrossingError: task 1: its result, a function, could not ")
    assert "pickled in the worker" in str(message)


def test_an_unpicklable_task_is_its_own_error(tmp_path: Path) -> None:
    db = tmp_path / "task.db"
    tasks = [TaskDef(1, "ok"), TaskDef(2, "holds a lambda", payload=lambda: None)]
    result = run_pipeline(tasks, db, worker_fn=noop, executor="processes", progress=False)
    assert result.counts == {"done": 1, "error": 1}
    (message,) = query(db, "SELECT message FROM task_runs WHERE task_id = 2")[0]
    assert str(message).startswith("CrossingError: task 2: its task (its item, a function) ")
    assert "could not be pickled for a worker process" in str(message)


def test_a_worker_function_that_cannot_reach_a_child_fails_before_the_run(tmp_path: Path) -> None:
    db = tmp_path / "lambda.db"
    with pytest.raises(PipeloomError, match=r"cannot be sent to a worker process.*top level"):
        run_pipeline(
            [TaskDef(1, "a")],
            db,
            worker_fn=lambda task, q: None,
            executor="processes",
            progress=False,
        )
    # The run is on record as failed, with the reason; no writer was left behind.
    (status, error) = query(db, "SELECT status, error FROM pipeline_runs")[0]
    assert status == "error" and "cannot be sent to a worker process" in str(error)


def test_unknown_executor_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="threads, processes, async"):
        run_pipeline([TaskDef(1, "a")], ":memory:", worker_fn=noop, executor="gpu")


def test_logs_from_children_reach_the_drivers_handlers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="user.etl")
    result = run_pipeline(
        [TaskDef(i, f"part-{i}") for i in range(1, 4)],
        tmp_path / "logs.db",
        worker_fn=logs_a_line,
        workers=2,
        executor="processes",
        progress=False,
    )
    assert result.ok
    lines = [r for r in caplog.records if r.name == "user.etl"]
    assert sorted(r.getMessage().split(" in pid")[0] for r in lines) == [
        "loaded part-1",
        "loaded part-2",
        "loaded part-3",
    ]
    assert all(r.process != os.getpid() for r in lines)
