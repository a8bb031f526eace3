"""Log records made inside a task land in task_logs, whatever executor ran the task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeloom import Pipeline, RunOptions
from tests._harness import query
from tests.executors import _pipes
from tests.executors.conftest import EXECUTORS


@pytest.mark.parametrize("executor", EXECUTORS)
def test_ctx_log_and_user_logging_are_stored_per_task_and_attempt(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "logs.db"
    task = _pipes.chatty_async if executor == "async" else _pipes.chatty
    pipe = Pipeline(
        "logs",
        db=db,
        workers=2,
        executor=make_executor(executor),
        options=RunOptions(task_log_limit=10),
    )
    pipe.map(task, [1, 2, 3, 4])
    result = pipe.run(progress=False)
    assert result.ok, result

    by_task = dict(query(db, "SELECT task_key, task_id FROM task_runs"))
    three = by_task[f"{task.name}:3"]
    logged = query(
        db,
        "SELECT attempt, level, logger, message FROM task_logs WHERE task_id = ? ORDER BY id",
        three,
    )
    assert [(a, lvl, msg.splitlines()[0]) for a, lvl, _, msg in logged] == [
        (1, "INFO", "loading item 3"),
        (1, "WARNING", "user line 3"),
        (1, "ERROR", "attempt 1 failed"),
        (2, "INFO", "loading item 3"),
        (2, "WARNING", "user line 3"),
    ]
    assert logged[1][2] == "user.etl"
    assert "ConnectionError: flaky on the first try" in logged[2][3]  # its traceback too

    # Task 4 logged 32 records; 10 are kept and one row counts the other 22.
    four = by_task[f"{task.name}:4"]
    assert query(db, "SELECT count(*) FROM task_logs WHERE task_id = ? AND dropped = 0", four) == [
        (10,)
    ]
    assert query(
        db,
        "SELECT level, logger, dropped FROM task_logs WHERE task_id = ? AND dropped > 0",
        four,
    ) == [("WARNING", "pipeloom", 22)]
    # Nothing pipeloom logs about the run itself is taken for a task's log.
    assert query(
        db,
        "SELECT count(*) FROM task_logs WHERE logger LIKE 'pipeloom.%' "
        "AND logger NOT LIKE 'pipeloom.task.%'",
    ) == [(0,)]
