"""Resource limits: a capacity is never exceeded and a rate never outrun (proved from the
start and finish times the run recorded), while tasks that use neither keep flowing; on
threads and processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipeloom import Pipeline, TaskDef, run_pipeline
from pipeloom.errors import PipelineError
from pipeloom.executors import ThreadExecutor
from pipeloom.limits import NOT_RUN, Clock, Gate, Limit, parse_rate
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
    """Real time, real workers: only the bound a slow machine cannot break is asserted.

    The k-th start is admitted no earlier than the first admission + k / rate, and the first
    admission comes after the run row was written; a start is recorded after its admission.
    So, sorted, the k-th recorded start is never before run start + k / rate, however late
    workers are scheduled (lateness only pushes a start later).
    """
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
    ((run_started,),) = query(db, "SELECT started_at FROM pipeline_runs")
    resolution = 0.002  # stored times are cut to the millisecond
    for k, start in enumerate(starts):
        assert start >= _t(run_started) + k / rate - resolution, k


def test_a_task_of_its_own_rate_is_metered_in_any_pipeline(tmp_path: Path) -> None:
    db = tmp_path / "own.db"
    pipe = Pipeline("own-rate", db=db, workers=4)  # not the pipeline that declared the task
    pipe.map(tasks.own_rate_call, range(40))
    assert pipe.run(progress=False).ok
    starts = sorted(_t(s) for (s,) in query(db, "SELECT started_at FROM task_runs"))
    ((run_started,),) = query(db, "SELECT started_at FROM pipeline_runs")
    for k, start in enumerate(starts):
        assert start >= _t(run_started) + k / 200 - 0.002, k


class VirtualClock(Clock):
    """Time that moves only when the gate waits: a rate is checked without sleeping."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        assert timeout is not None, "the gate waited for a completion that cannot come"
        self.t += timeout


def test_a_rate_of_10_per_second_holds_within_10_percent_over_100_calls() -> None:
    """The issue's figure, exactly: 100 calls at 10/s on a virtual clock (no sleeping)."""
    clock = VirtualClock()
    gate = Gate({"api": Limit("api", rate=10.0)}, lambda task: ("api",), clock)
    done = gate.follow_up(None)
    starts = []
    for task in gate.wrap([TaskDef(i, f"call {i}") for i in range(1, 101)]):
        starts.append(clock.now())
        done(task, None)  # finished at once: only the rate holds it back
    assert len(starts) == 100
    achieved = 99 / (starts[-1] - starts[0])
    assert 10 * 0.9 <= achieved <= 10 * 1.1
    for k, start in enumerate(starts):  # evenly spaced: never two inside 1/rate
        assert start == pytest.approx(starts[0] + k / 10)
    for start in starts:  # any window of one second holds at most 10 starts
        assert sum(1 for s in starts if start <= s < start + 1.0) <= 10


def test_a_task_that_never_ran_gives_its_rate_start_back() -> None:
    clock = VirtualClock()
    gate = Gate({"api": Limit("api", capacity=1, rate=1.0)}, lambda task: ("api",), clock)
    done = gate.follow_up(None)
    stream = iter(gate.wrap([TaskDef(i, f"call {i}") for i in range(1, 4)]))
    first = next(stream)
    done(first, NOT_RUN)  # refused by its executor: it called nothing
    second = next(stream)
    assert clock.now() == 1000.0  # took the start the first gave back, without waiting
    done(second, None)
    next(stream)
    assert clock.now() == pytest.approx(1001.0)  # the second did run: its start stands


class RefusingExecutor(ThreadExecutor):
    """Threads that refuse to take some tasks (``submit`` raises), as a broken pool does."""

    def __init__(self, refuse: set[int]) -> None:
        super().__init__()
        self.refuse = refuse

    def submit(self, task_id: int, task: Any) -> None:
        if task_id in self.refuse:
            raise OSError(f"no room for task {task_id}")
        super().submit(task_id, task)


def _record(task: TaskDef, q: Any) -> None:
    time.sleep(0.01)


@pytest.mark.timeout(30)  # before the fix: the run waited forever for the refused task's slot
@pytest.mark.parametrize("fail_fast", [False, True])
def test_a_refused_task_frees_its_resource(tmp_path: Path, fail_fast: bool) -> None:
    db = tmp_path / "refused.db"
    result = run_pipeline(
        [TaskDef(i, f"load {i}") for i in range(1, 9)],
        db,
        worker_fn=_record,
        workers=3,
        executor=RefusingExecutor({2}),
        limits=[Limit("warehouse", 1)],
        uses=lambda task: "warehouse",
        fail_fast=fail_fast,
        progress=False,
    )
    assert query(db, "SELECT status FROM task_runs WHERE task_id = 2") == [("error",)]
    if fail_fast:
        assert result.status == "error" and result.stop_reason == "fail_fast"
        assert result.not_started and result.counts.get("done", 0) + result.not_started == 7
    else:
        assert result.status == "error" and result.counts == {"done": 7, "error": 1}


@pytest.mark.timeout(30)
def test_a_refused_limited_task_fails_its_chain(tmp_path: Path) -> None:
    db = tmp_path / "chain.db"
    pipe = Pipeline("refused-chain", db=db, workers=3, executor=RefusingExecutor({2}))
    pipe.limit("warehouse", 1)
    loads = pipe.map(tasks.warehouse_load, range(4))
    pipe.map(tasks.after_load, loads)
    result = pipe.run(progress=False)
    assert result.counts == {"done": 6, "error": 1, "upstream_failed": 1}


@pytest.mark.timeout(30)  # before the fix: a deadlock on the engine's admission lock
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_chain_behind_a_limited_stage_never_deadlocks(tmp_path: Path, executor: str) -> None:
    db = tmp_path / "chain.db"
    pipe = Pipeline("chained", db=db, workers=3, executor=executor)
    pipe.limit("warehouse", 1)
    loads = pipe.map(tasks.warehouse_quick, range(12))
    pipe.map(tasks.after_load, loads)
    result = pipe.run(progress=False)
    assert result.ok and result.counts == {"done": 24}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_fail_fast_ends_a_run_whose_tasks_wait_on_a_full_resource(
    tmp_path: Path, executor: str
) -> None:
    db = tmp_path / "ff.db"
    pipe = Pipeline("ff", db=db, workers=4, executor=executor, fail_fast=True)
    pipe.limit("warehouse", 1)
    pipe.map(tasks.warehouse_fails, range(20))
    result = pipe.run(progress=False)
    assert result.status == "error" and result.stop_reason == "fail_fast"
    assert result.counts == {"error": 1}
    assert query(db, "SELECT count(*) FROM task_runs WHERE status = 'running'") == [(0,)]


@pytest.mark.timeout(30)
def test_ctrl_c_ends_a_run_whose_tasks_wait_on_a_full_resource(tmp_path: Path) -> None:
    db = tmp_path / "int.db"

    def worker(task: TaskDef, q: Any) -> None:
        if task.task_id == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C
        time.sleep(0.05)

    result = run_pipeline(
        [TaskDef(i, f"load {i}") for i in range(1, 41)],
        db,
        worker_fn=worker,
        workers=4,
        limits={"warehouse": Limit("warehouse", 1, rate=20.0)},
        uses=lambda task: "warehouse",
        progress=False,
    )
    assert result.status == "cancelled" and result.stop_reason == "sigint"
    assert result.not_started and result.counts["done"] + result.not_started == 40
    assert query(db, "SELECT count(*) FROM task_runs WHERE status = 'running'") == [(0,)]


def test_run_pipeline_limits_a_capacity_and_lets_others_flow(tmp_path: Path) -> None:
    db = tmp_path / "low.db"
    lock = threading.Lock()
    holding: list[int] = []
    most = [0]
    order: list[int] = []

    def worker(task: TaskDef, q: Any) -> None:
        if task.payload == "warehouse":
            with lock:
                holding.append(task.task_id)
                most[0] = max(most[0], len(holding))
            time.sleep(0.05)
            with lock:
                holding.remove(task.task_id)
        with lock:
            order.append(task.task_id)

    work = [TaskDef(i, f"load {i}", payload="warehouse") for i in range(1, 5)]
    work += [TaskDef(i, f"other {i}") for i in range(5, 25)]
    result = run_pipeline(
        work,
        db,
        worker_fn=worker,
        workers=4,
        limits=[Limit("warehouse", 1)],
        uses=lambda task: ["warehouse"] if task.payload == "warehouse" else [],
        progress=False,
    )
    assert result.ok and result.counts == {"done": 24}
    assert most[0] == 1
    # The others did not wait behind the warehouse: they all ended before its last load.
    assert order.index(4) > max(order.index(i) for i in range(5, 25))
    with pytest.raises(PipelineError, match="pass uses="):
        run_pipeline(work, db, worker_fn=worker, limits=[Limit("warehouse", 1)])


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
