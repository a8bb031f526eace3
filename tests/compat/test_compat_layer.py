"""The compatibility layer (pipeloom._compat): 0.0.7's names and call forms, kept in one place."""

from __future__ import annotations

import inspect
import queue
from importlib import import_module
from pathlib import Path

import pytest

import pipeloom
from pipeloom import TaskDef, run_pipeline
from pipeloom._compat import LEGACY_NAMES
from pipeloom.demo import DemoTask, demo_worker
from pipeloom.messages import MsgTaskFinished
from tests._harness import query


def test_legacy_top_level_names_import_but_are_not_listed() -> None:
    for name, module in LEGACY_NAMES.items():
        assert getattr(pipeloom, name) is getattr(import_module(f"pipeloom.{module}"), name)
        assert name not in pipeloom.__all__
    assert len(pipeloom.__all__) <= 22
    for name in pipeloom.__all__:
        assert getattr(pipeloom, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        pipeloom.Nope  # noqa: B018


def test_run_pipeline_has_a_typed_signature() -> None:
    params = inspect.signature(run_pipeline).parameters
    assert list(params)[:2] == ["tasks", "db_path"]
    assert params["db_path"].default == "pipeloom.db"
    assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[2:])


def test_0_0_7_argument_order_runs_and_a_path_alone_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    tasks = [DemoTask(1, "a", steps=1, delay=0)]
    result = run_pipeline(db, tasks, worker_fn=demo_worker, progress=False)  # type: ignore[arg-type]
    assert result.ok and result.db_path == str(db)
    with pytest.raises(
        TypeError, match=r"run_pipeline needs tasks.*run_pipeline\(tasks, db_path\)"
    ):
        run_pipeline(db)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tasks must be an iterable of TaskDef, got int"):
        run_pipeline(5, db)  # type: ignore[arg-type]


def test_demo_worker_records_a_raising_task_as_error_with_its_message(tmp_path: Path) -> None:
    # 0.0.7's demo worker caught what a task raised and finished it "error" with the message.
    db = tmp_path / "demo.db"
    bad = TaskDef(2, "bad", steps="three")  # type: ignore[arg-type]
    result = run_pipeline(
        [DemoTask(1, "good", steps=1, delay=0), bad], db, worker_fn=demo_worker, progress=False
    )
    assert result.counts == {"done": 1, "error": 1}
    ((status, message, error),) = query(
        db, "SELECT status, message, error FROM task_runs WHERE task_id = 2"
    )
    assert status == "error"
    assert message.startswith("TypeError: ") and "str" in message
    assert "Traceback" in error and "_simulate" in error


def test_demo_worker_called_directly_does_not_raise() -> None:
    q: queue.Queue[object] = queue.Queue()
    demo_worker(TaskDef(3, "bad", steps="three"), q)  # type: ignore[arg-type]
    finished = [m for m in q.queue if isinstance(m, MsgTaskFinished)]
    assert [(m.task_id, m.status) for m in finished] == [(3, "error")]
    assert finished[0].message.startswith("TypeError: ")
