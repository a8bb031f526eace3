"""Stages on every executor: results cross to the consuming task wherever tasks run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeloom import Pipeline
from tests.executors import _stage_tasks as t
from tests.executors._support import rows
from tests.executors.conftest import EXECUTORS


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_chain_and_a_fan_in_run_on_every_executor(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "stages.db"
    pipe = Pipeline("stages", db=db, workers=2, executor=make_executor(executor))
    pages = pipe.map(t.download, [1, 2, 3, 4])
    parsed = pipe.map(t.parse, pages)
    loaded = pipe.map(t.load, parsed)
    pipe.gather(t.summarise, loaded)
    result = pipe.run(progress=False)
    assert result.status == "error"
    assert result.counts == {"done": 10, "error": 1, "upstream_failed": 2}
    sql = "SELECT task_key, status, result FROM task_runs WHERE task_key LIKE 'load:%'"
    assert sorted(rows(db, sql)) == [
        ("load:1", "done", "11"),
        ("load:2", "done", "21"),
        ("load:3", "upstream_failed", None),
        ("load:4", "done", "41"),
    ]

    # Resume without the broken item and with a new one: only the new chain and the fan-in
    # run; the fan-in reads the earlier loads' results back from the store.
    again = Pipeline("stages", db=db, workers=2, executor=make_executor(executor))
    pages = again.map(t.download, [1, 2, 4, 5])
    loaded = again.map(t.load, again.map(t.parse, pages))
    again.gather(t.summarise, loaded)
    second = again.run(resume=True, progress=False)
    assert second.ok, second.counts
    assert second.counts == {"skipped": 9, "done": 4}
    sql = "SELECT result FROM task_runs WHERE run_id = 2 AND task_key LIKE 'summarise:%'"
    assert rows(db, sql) == [("124",)]  # 11 + 21 + 41 + 51
