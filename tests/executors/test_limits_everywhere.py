"""`run_pipeline(limits=, uses=)` on every executor: a resource of capacity 1 is never held by
two tasks at once (proved from the start and finish times the tasks recorded), and every task
ends."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from pipeloom import TaskDef, run_pipeline
from pipeloom.limits import Limit
from pipeloom.messages import parse_utc
from tests._harness import query
from tests.executors import _workers
from tests.executors.conftest import EXECUTORS


def _uses(task: TaskDef) -> str | None:
    return "warehouse" if task.payload == "warehouse" else None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", EXECUTORS)
def test_a_capacity_holds_on_every_executor(tmp_path: Path, name: str, make_executor: Any) -> None:
    db = tmp_path / "limits.db"
    work = [TaskDef(i, f"load {i}", payload="warehouse") for i in range(1, 6)]
    work += [TaskDef(i, f"other {i}") for i in range(6, 16)]
    result = run_pipeline(
        work,
        db,
        worker_fn=_workers.holds_briefly_async if name == "async" else _workers.holds_briefly,
        workers=3,
        executor=make_executor(name),
        limits=[Limit("warehouse", 1)],
        uses=_uses,
        progress=False,
    )
    assert result.ok and result.counts == {"done": 15}
    spans = sorted(
        (parse_utc(s), parse_utc(f))
        for s, f in query(
            db, "SELECT started_at, finished_at FROM task_runs WHERE name LIKE 'load %'"
        )
    )
    assert len(spans) == 5
    for (_, finished), (started, _) in pairwise(spans):
        assert finished is not None and started is not None
        assert started >= finished  # the next load started only once the last was over
