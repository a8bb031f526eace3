"""Every task taken from the source ends in exactly one terminal row (issue: the record never lies).

Each test is one class of fault: a worker sending pipeloom's control messages, a task source
that raises, tasks without ids, duplicate ids, and stopping a run fed by an endless source.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeloom import (
    SENTINEL,
    MsgRunFinished,
    MsgTaskFinished,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)
from pipeloom.errors import TaskSourceError
from pipeloom.status import decide_run_status
from tests._harness import query
from tests.reliability._support import child_output, integrity, read_events, spawn_child, wait_for


def _noop(task: Any, q: TaskQueue) -> None:
    return None


@pytest.mark.parametrize("queue_size", [2, 50_000])
def test_a_worker_cannot_stop_the_writer_or_decide_the_run(tmp_path: Path, queue_size: int) -> None:
    db = tmp_path / "control.db"

    def worker(task: TaskDef, q: TaskQueue) -> None:
        if task.task_id == 2:
            q.put(SENTINEL)
            q.put(MsgRunFinished("done"))
        if task.task_id == 3:
            raise RuntimeError("task 3 fails")

    tasks = [TaskDef(i, f"t{i}") for i in range(1, 101)]
    result = run_pipeline(
        tasks, db, worker_fn=worker, workers=4, progress=False, queue_size=queue_size
    )
    assert result.counts == {"done": 99, "error": 1}
    assert result.status == "error" and not result.ok
    assert query(db, "SELECT status, tasks_total FROM pipeline_runs") == [("error", 100)]
    dead = query(db, "SELECT msg_type, error FROM dead_letters ORDER BY id")
    assert [t for t, _ in dead] == [
        "pipeloom.messages._Sentinel",
        "pipeloom.messages.MsgRunFinished",
    ]
    assert all("only pipeloom's engine may send" in e for _, e in dead)


@pytest.mark.parametrize("store", [True, False])
def test_a_task_source_that_raises_ends_the_run_as_error(tmp_path: Path, store: bool) -> None:
    db = tmp_path / "source.db"

    def source() -> Iterator[TaskDef]:
        for i in range(1, 11):
            if i == 6:
                raise OSError("listing s3://bucket/day=6 failed")
            yield TaskDef(i, f"t{i}")

    result = run_pipeline(
        source(), db, worker_fn=_noop, workers=2, progress=False, store_task_status=store
    )
    assert not result.ok
    assert result.status == "error" or not store
    assert result.error is not None and "OSError: listing s3://bucket/day=6 failed" in result.error
    if store:
        assert result.counts == {"done": 5}
        status, error = query(db, "SELECT status, error FROM pipeline_runs")[0]
        assert status == "error"
        assert "the task source raised OSError" in error and "Traceback" in error


@dataclass
class Job:
    """A task object of the user's own, without a ``task_id``."""

    path: str


def test_tasks_without_ids_still_get_their_failures_recorded(tmp_path: Path) -> None:
    db = tmp_path / "noid.db"

    def worker(job: Job, q: TaskQueue) -> None:
        if job.path.endswith("2.csv"):
            raise ValueError(f"bad header in {job.path}")

    jobs = (Job(f"in/{i}.csv") for i in range(1, 5))
    result = run_pipeline(jobs, db, worker_fn=worker, workers=2, progress=False)
    assert result.counts == {"done": 3, "error": 1}
    assert result.failed_task_ids == [2] and not result.ok
    (task_id, name, message) = query(
        db, "SELECT task_id, name, message FROM task_runs WHERE status = 'error'"
    )[0]
    assert task_id == 2
    assert name == "task 2: Job(path='in/2.csv')"
    assert message == "ValueError: bad header in in/2.csv"


def test_duplicate_ids_in_a_list_are_refused_before_anything_runs(tmp_path: Path) -> None:
    db = tmp_path / "dup.db"
    tasks = [TaskDef(1, "a"), TaskDef(2, "b"), TaskDef(1, "c")]
    with pytest.raises(TaskSourceError, match=r"task_id 1 appears twice .*#1 and #3"):
        run_pipeline(tasks, db, worker_fn=_noop, progress=False)
    assert not db.exists()


def test_duplicate_ids_from_a_generator_end_the_run_as_error(tmp_path: Path) -> None:
    db = tmp_path / "dupgen.db"
    seen: list[str] = []

    def worker(task: TaskDef, q: TaskQueue) -> None:
        seen.append(task.name)
        if task.name == "second-7":
            raise AssertionError("the duplicate must never run")

    ids = [*range(1, 11), 7, *range(11, 20)]
    tasks = (TaskDef(i, f"second-{i}" if n == 10 else f"t{i}") for n, i in enumerate(ids))
    result = run_pipeline(tasks, db, worker_fn=worker, workers=1, progress=False)
    assert "second-7" not in seen
    assert result.status == "error" and not result.ok
    assert result.counts == {"done": 10}
    assert result.error is not None and "task_id 7 twice" in result.error
    assert query(db, "SELECT name, status FROM task_runs WHERE task_id = 7") == [("t7", "done")]


def test_non_integer_ids_are_refused_with_the_value(tmp_path: Path) -> None:
    with pytest.raises(TaskSourceError, match=r"task_id='a'"):
        run_pipeline([TaskDef("a", "x")], tmp_path / "x.db", worker_fn=_noop)  # type: ignore[arg-type]


def test_a_finish_the_worker_never_sent_is_not_left_running(tmp_path: Path) -> None:
    db = tmp_path / "lost.db"

    def worker(task: TaskDef, q: TaskQueue) -> None:
        # The worker reports a finish for a task that is not its own: task 7's own row
        # gets a done from the engine, task 1000 is a row nobody finishes properly.
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))
        if task.task_id == 3:
            from pipeloom import MsgTaskStarted

            q.put(MsgTaskStarted(1000, "phantom", utc_now()))

    result = run_pipeline(
        [TaskDef(i, f"t{i}") for i in range(1, 6)], db, worker_fn=worker, progress=False
    )
    assert query(db, "SELECT status FROM task_runs WHERE task_id = 1000") == [("interrupted",)]
    assert result.status == "error" and not result.ok
    assert "no finish recorded" in str(query(db, "SELECT note FROM pipeline_runs")[0][0])


def test_run_status_is_done_only_when_every_task_taken_succeeded() -> None:
    assert decide_run_status({"done": 3, "skipped": 2}, taken=5) == "done"
    assert decide_run_status({"done": 3}, taken=5) == "error"  # two tasks unaccounted for
    assert decide_run_status({"done": 3, "running": 1}) == "error"
    assert decide_run_status({"done": 3, "timeout": 1}, taken=4) == "error"
    assert decide_run_status({"done": 3}, taken=3, source_failed=True) == "error"
    assert decide_run_status({"done": 3}, taken=3, stop="cancelled") == "cancelled"
    assert decide_run_status({"done": 3, "interrupted": 1}, taken=4, stop="interrupted") == (
        "interrupted"
    )


@pytest.mark.timeout(60)
def test_ctrl_c_on_an_endless_source_stops_at_once(tmp_path: Path) -> None:
    db, events = tmp_path / "endless.db", tmp_path / "endless.events"
    child = spawn_child("endless", db, events, 0)
    try:
        wait_for(lambda: len(read_events(events)[1]) >= 8, "eight finished tasks")
        os.kill(child.pid, signal.SIGINT)
        rc = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out, err = child_output(events)
    assert rc == 130, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "cancelled" and result["not_started"] is None
    rows = query(db, "SELECT status FROM task_runs")
    # Only what was started has a row: the endless source was never drained.
    assert {s for (s,) in rows} == {"done"} and len(rows) < 1000
    assert query(db, "SELECT status, note FROM pipeline_runs") == [
        (
            "cancelled",
            "stopped before the task source was exhausted; tasks not started were not recorded",
        )
    ]
    assert integrity(db) == "ok"


@pytest.mark.timeout(60)
def test_second_ctrl_c_on_an_endless_source_abandons_and_exits(tmp_path: Path) -> None:
    db, events = tmp_path / "endless2.db", tmp_path / "endless2.events"
    child = spawn_child("endless2", db, events, 0)

    def all_workers_blocked() -> bool:
        started, finished = read_events(events)
        return len({t for t in started if t % 5 == 0 and t not in finished}) == 4

    try:
        wait_for(all_workers_blocked, "four workers stuck in minute-long tasks")
        os.kill(child.pid, signal.SIGINT)
        wait_for(
            lambda: "Stopping" in child_output(events)[0] + child_output(events)[1],
            "the first Ctrl-C acknowledged",
        )
        os.kill(child.pid, signal.SIGINT)
        rc = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out, err = child_output(events)
    assert rc == 130, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"
    statuses = dict(query(db, "SELECT status, count(*) FROM task_runs GROUP BY status"))
    assert statuses["interrupted"] == 4 and set(statuses) == {"done", "interrupted"}
    assert query(db, "SELECT status FROM pipeline_runs") == [("interrupted",)]


def test_tasks_without_ids_in_a_list_keep_their_own_position(tmp_path: Path) -> None:
    """Workers share a list's iterator without a lock: each task's id is still its position.

    A thread switch between taking a task and numbering it used to swap ids between tasks,
    so a row could carry another task's name and its worker's result was lost. A tiny switch
    interval makes such switches frequent.
    """
    db = tmp_path / "positions.db"
    n = 20_000

    def worker(task: int, q: TaskQueue) -> None:
        if task % 2:  # odd tasks report their own finish under their value (= their position)
            q.put(MsgTaskFinished(task, "done", utc_now(), result=f"r{task}"))

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        result = run_pipeline(
            list(range(1, n + 1)), db, worker_fn=worker, workers=4, progress=False
        )
    finally:
        sys.setswitchinterval(previous)
    assert result.counts == {"done": n}
    wrong = query(
        db,
        "SELECT task_id, name, result FROM task_runs WHERE (task_id % 2 = 1 AND "
        "result IS NOT 'r' || task_id) OR (task_id % 2 = 0 AND name IS NOT "
        "'task ' || task_id || ': ' || task_id) LIMIT 5",
    )
    assert wrong == []


def test_an_iterator_over_a_list_is_checked_for_duplicate_ids_as_it_goes(tmp_path: Path) -> None:
    """iter([...]) looks like a list to the engine's fast path, but nobody checked its ids."""
    db = tmp_path / "iter.db"
    tasks = iter([TaskDef(1, "a"), TaskDef(2, "b"), TaskDef(1, "again")])
    result = run_pipeline(tasks, db, worker_fn=_iter_worker, workers=1, progress=False)
    assert result.status == "error"
    assert "task_id 1 twice" in str(result.error)
    assert query(db, "SELECT task_id, name FROM task_runs ORDER BY task_id") == [
        (1, "a"),
        (2, "b"),
    ]


def _iter_worker(task: TaskDef, q: Any) -> None:
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), name=task.name))
