"""Stages on every executor: results cross to the consuming task wherever tasks run."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pipeloom import Pipeline
from pipeloom.executors import Executor, TaskQueue
from tests._harness import query
from tests.executors import _stage_tasks as t
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
    assert sorted(query(db, sql)) == [
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
    assert query(db, sql) == [("124",)]  # 11 + 21 + 41 + 51


class OneThreadEach(Executor):
    """The class docstring's example executor: a thread per task."""

    name = "one-thread-each"

    def submit(self, task_id: int, task: Any) -> None:
        def run() -> None:
            q = TaskQueue(self.sink, self.engine.stopping)
            try:
                returned = self.worker_fn(task, q)
            except BaseException as exc:
                self.engine.task_done(task_id, task, exc, task_id in q.finished_ids)
            else:
                finished = task_id in q.finished_ids
                self.engine.task_done(task_id, task, None, finished, returned)

        threading.Thread(target=run, daemon=True).start()

    def shutdown(self, timeout: float | None) -> bool:
        return True


def test_a_custom_executor_that_hands_back_what_the_worker_returned_runs_stages(
    tmp_path: Path,
) -> None:
    db = tmp_path / "custom.db"
    pipe = Pipeline("custom", db=db, workers=2, executor=OneThreadEach())
    parsed = pipe.map(t.parse, pipe.map(t.download, [1, 2]))
    pipe.gather(t.summarise, pipe.map(t.load, parsed))
    result = pipe.run(progress=False)
    assert result.ok and result.counts == {"done": 7}
    assert query(db, "SELECT result FROM task_runs WHERE task_key LIKE 'summarise:%'") == [("32",)]
