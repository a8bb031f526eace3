"""Resource limits: a capacity is never exceeded and a rate never outrun (proved from the
start and finish times the run recorded), while tasks that use neither keep flowing; on
threads and processes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from pipeloom import Pipeline
from pipeloom.errors import PipelineError
from pipeloom.limits import parse_rate
from tests._harness import query
from tests.core import _unattended_tasks as tasks

EXECUTORS = ["threads", "processes"]


def _t(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize("executor", EXECUTORS)
def test_capacity_is_never_exceeded_and_other_tasks_flow(tmp_path: Path, executor: str) -> None:
    db = tmp_path / "cap.db"
    pipe = Pipeline("capped", db=db, workers=4, executor=executor)
    pipe.limit("warehouse", 2)
    pipe.map(tasks.warehouse_load, range(6))  # first in the source: they would fill every slot
    pipe.map(tasks.ok, range(30))
    result = pipe.run(progress=False)
    assert result.ok and result.counts == {"done": 36}
    spans = [
        (_t(a), _t(b))
        for a, b in query(
            db,
            "SELECT started_at, finished_at FROM task_runs WHERE task_key LIKE 'warehouse_load:%'",
        )
    ]
    # At every start, fewer than 2 others are running (recorded times, ms precision).
    for start, _ in spans:
        running = [1 for s, f in spans if s <= start < f]
        assert len(running) <= 2
    # The other tasks did not wait behind the warehouse: all were done before the last
    # warehouse task (the 5th and 6th wait for two slots to free twice) could start.
    last_start = max(s for s, _ in spans)
    (others_done,) = query(db, "SELECT max(finished_at) FROM task_runs WHERE task_key LIKE 'ok:%'")[
        0
    ]
    assert _t(others_done) <= last_start


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_rate_is_never_outrun(tmp_path: Path, executor: str) -> None:
    db = tmp_path / "rate.db"
    rate = 100.0
    pipe = Pipeline("metered", db=db, workers=4, executor=executor)
    pipe.limit("api", rate="100/s")
    pipe.map(tasks.ok, range(8))  # unmetered, alongside
    pipe.map(tasks.api_call, range(100))
    result = pipe.run(progress=False)
    assert result.ok
    starts = sorted(
        _t(s)
        for (s,) in query(db, "SELECT started_at FROM task_runs WHERE task_key LIKE 'api_call:%'")
    )
    assert len(starts) == 100
    epsilon = 0.04  # how much later after its admission one start may be recorded than another
    for k, start in enumerate(starts):
        assert start >= starts[0] + k / rate - epsilon, k
    # Over the 100 calls the rate holds within 10%: never faster than 100/s x 1.1.
    assert starts[-1] - starts[0] >= 99 / (rate * 1.1)


def test_declarations_are_checked(tmp_path: Path) -> None:
    assert parse_rate("10/s") == 10 and parse_rate("600/m") == 10 and parse_rate("3600/h") == 1
    with pytest.raises(PipelineError, match="'10/x'"):
        parse_rate("10/x")
    pipe = Pipeline("undeclared", db=tmp_path / "u.db")
    with pytest.raises(PipelineError, match="give a capacity"):
        pipe.limit("warehouse")
    with pytest.raises(PipelineError, match="whole number"):
        pipe.limit("warehouse", 0)
    pipe.map(tasks.warehouse_load, range(2))
    with pytest.raises(PipelineError, match=r"no pipe\.limit\(\) declares it"):
        pipe.run(progress=False)
