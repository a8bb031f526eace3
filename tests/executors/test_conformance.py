"""One conformance set run over every executor, on real SQLite files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeloom import TaskDef, run_pipeline
from tests._harness import query
from tests.executors._support import pipeloom_children
from tests.executors._workers import WORKERS, MsgScore, on_score, schema
from tests.executors.conftest import EXECUTORS


@pytest.mark.parametrize("executor", EXECUTORS)
def test_the_worker_shape_users_copy_and_a_custom_message(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "seed.db"
    tasks = [TaskDef(i, f"t{i}", steps=3) for i in range(1, 21)]
    result = run_pipeline(
        tasks,
        db,
        worker_fn=WORKERS[executor]["seed"],
        workers=2,
        executor=make_executor(executor),
        handlers={MsgScore: on_score},
        schema=schema,
        progress=False,
    )
    assert result.ok and result.counts == {"done": 20}
    assert query(db, "SELECT count(*), min(progress), sum(step) FROM task_runs") == [(20, 1.0, 60)]
    assert query(db, "SELECT result FROM task_runs WHERE task_id = 7") == [("r7",)]
    assert query(db, "SELECT count(*), sum(score) FROM scores") == [(20, 2100)]
    assert result.dead_letters == 0


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_raising_task_is_its_error_with_the_traceback(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "raise.db"
    tasks = [TaskDef(i, f"file-{i}.csv") for i in range(1, 6)]
    result = run_pipeline(
        tasks,
        db,
        worker_fn=WORKERS[executor]["fails"],
        workers=2,
        executor=make_executor(executor),
        progress=False,
    )
    assert result.counts == {"done": 4, "error": 1} and result.failed_task_ids == [3]
    assert result.status == "error" and not result.ok
    message, error = query(db, "SELECT message, error FROM task_runs WHERE task_id = 3")[0]
    assert message == "ValueError: bad input in file-3.csv"
    assert "Traceback" in str(error) and "fails_on_three" in str(error)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fail_fast_stops_admitting(tmp_path: Path, executor: str, make_executor: Any) -> None:
    db = tmp_path / "ff.db"
    tasks = [TaskDef(i, f"t{i}") for i in range(1, 201)]
    result = run_pipeline(
        tasks,
        db,
        worker_fn=WORKERS[executor]["fail_fast"],
        workers=2,
        executor=make_executor(executor),
        fail_fast=True,
        progress=False,
    )
    assert result.status == "error" and result.failed_task_ids == [3]
    assert result.not_started is not None and result.not_started > 0
    assert result.total + result.not_started == 200
    # A task handed to the executor but never begun (Dask: still queued on the cluster;
    # processes: waiting in a child) has no row on any executor: it is counted not started.
    assert query(db, "SELECT count(*) FROM task_runs WHERE status NOT IN ('done', 'error')") == [
        (0,)
    ]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_generator_of_ten_thousand_tasks(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "gen.db"

    def tasks() -> Iterator[TaskDef]:
        for i in range(1, 10_001):
            yield TaskDef(i, f"t{i}")

    result = run_pipeline(
        tasks(),
        db,
        worker_fn=WORKERS[executor]["noop"],
        # Dask counts tasks in flight across the cluster: its default lets tiny tasks chunk.
        workers=None if executor == "dask" else 4,
        executor=make_executor(executor),
        progress=False,
    )
    assert result.ok and result.counts == {"done": 10_000}
    assert query(db, "SELECT count(*), count(DISTINCT task_id) FROM task_runs") == [
        (10_000, 10_000)
    ]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_ctrl_c_stops_admitting_and_leaves_no_child(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "int.db"
    tasks = [TaskDef(i, f"t{i}", payload=os.getpid()) for i in range(1, 101)]
    result = run_pipeline(
        tasks,
        db,
        worker_fn=WORKERS[executor]["interrupt"],
        workers=2,
        executor=make_executor(executor),
        progress=False,
    )
    assert result.status == "cancelled"
    assert result.not_started is not None and result.not_started > 0
    assert result.total + result.not_started == 100
    # What began finished; what never began has no row, on every executor.
    assert query(db, "SELECT count(*) FROM task_runs WHERE status != 'done'") == [(0,)]
    assert pipeloom_children() == []
