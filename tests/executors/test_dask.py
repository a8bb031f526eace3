"""DaskExecutor on a real LocalCluster with worker processes, against real SQLite files.

The worker functions and the declarative pipeline live in this module; the cluster's worker
processes import it, as workers import a user's installed code.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeloom import Context, Pipeline, TaskDef, run_pipeline
from pipeloom.errors import PipeloomError
from pipeloom.executors import TaskQueue, resolve_executor
from pipeloom.executors.dask import DaskExecutor, DaskUnavailableError
from pipeloom.messages import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, utc_now
from pipeloom.result import RunResult
from tests._harness import query
from tests.executors._support import left_after_kill_9
from tests.reliability._support import wait_for

if TYPE_CHECKING:
    from distributed import Client


# One xdist worker runs every test here, so the suite starts one cluster, not one per worker.
pytestmark = pytest.mark.xdist_group("dask")


@pytest.fixture
def client(dask_client: Client) -> Client:
    """The suite's one cluster (tests/executors/conftest.py)."""
    return dask_client


def run(client: Client, tasks: Any, db: Path, worker: Any, **kw: Any) -> RunResult:
    return run_pipeline(
        tasks, db, worker_fn=worker, executor=DaskExecutor(client=client), progress=False, **kw
    )


def status_of(db: Path, task_id: int) -> str | None:
    """The task's status as a reader sees it now (None before the writer made its tables)."""
    try:
        rows = query(db, "SELECT status FROM task_runs WHERE task_id = ?", task_id)
    except sqlite3.OperationalError:  # the file exists but the schema is not committed yet
        return None
    return str(rows[0][0]) if rows else None


def count_status(db: Path, status: str) -> int:
    try:
        return int(query(db, "SELECT COUNT(*) FROM task_runs WHERE status = ?", status)[0][0])
    except sqlite3.OperationalError:  # the file exists but the schema is not committed yet
        return 0


def counts(db: Path) -> dict[str, int]:
    return dict(query(db, "SELECT status, COUNT(*) FROM task_runs GROUP BY status"))


# -- worker functions (run in the Dask worker processes) -----------------------------------


def shaped(task: TaskDef, q: TaskQueue) -> None:
    """The shape users copy from the docs."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    for step in range(1, task.steps + 1):
        q.put(MsgTaskProgress(task.task_id, step, task.steps, f"step {step}"))
    logging.getLogger("pipeloom_test.dask").info("task %s on pid %s", task.task_id, os.getpid())
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=str(os.getpid())))


def raises_on_even(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    if task.task_id % 2 == 0:
        raise ValueError(f"bad row {task.task_id}")


@dataclass(frozen=True)
class MsgRow:
    """A user's own message, applied by a user's handler on the driver."""

    task_id: int
    value: str


def emits_rows(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgRow(task.task_id, f"row-{task.task_id}"))


@dataclass(frozen=True)
class MsgHandle:
    task_id: int
    handle: Any


def sends_a_lock(task: TaskDef, q: TaskQueue) -> None:
    if task.task_id == 2:
        q.put(MsgHandle(task.task_id, threading.Lock()))


def fails_first(task: TaskDef, q: TaskQueue) -> None:
    """Task 1 fails; every other task waits until the driver recorded that failure."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    if task.task_id == 1:
        raise RuntimeError("first task fails")
    db = Path(task.payload)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn = sqlite3.connect(db)
        try:
            row = conn.execute("SELECT status FROM task_runs WHERE task_id = 1").fetchone()
        finally:
            conn.close()
        if row is not None and row[0] == "error":
            return
        time.sleep(0.01)


def waits_for_go(task: TaskDef, q: TaskQueue) -> None:
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    go = Path(task.payload) / "go"
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def holds_until_the_run_stops(task: TaskDef, q: TaskQueue) -> None:
    """Runs until the driver tells the workers the run stopped (``q.stopping``)."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    q.stopping.wait(30)


def victim(task: TaskDef, q: TaskQueue) -> None:
    """First execution: note this process's pid, then block until killed. A rerun returns."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    marker = Path(task.payload) / "first-pid"
    if task.task_id == 1 and not marker.exists():
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(marker)
        while True:  # SIGKILLed by the test
            time.sleep(0.05)
    q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=str(os.getpid())))


@dataclass(frozen=True)
class MsgSquare:
    n: int
    square: int


decl = Pipeline("dask-declarative")


@decl.handler(MsgSquare)
def on_square(conn: sqlite3.Connection, msgs: list[MsgSquare]) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS squares (n INTEGER PRIMARY KEY, square INTEGER)")
    conn.executemany("INSERT INTO squares VALUES (?, ?)", [(m.n, m.square) for m in msgs])


@decl.task(retries=1)
def square(ctx: Context, n: int) -> int:
    ctx.log.warning("squaring %d (attempt %d)", n, ctx.attempt)
    if n == 3 and ctx.attempt == 1:
        raise OSError("flaky disk")
    ctx.emit(MsgSquare(n, n * n))
    return n * n


# -- tests ----------------------------------------------------------------------------------


def test_shaped_worker_records_every_task_from_worker_processes(
    client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "run.db"
    caplog.set_level(logging.INFO, logger="pipeloom_test.dask")
    tasks = [TaskDef(i, f"load-{i}", steps=3) for i in range(1, 21)]
    result = run(client, tasks, db, shaped)
    assert result.ok and result.counts == {"done": 20}
    rows = query(db, "SELECT task_id, status, progress, step, result FROM task_runs")
    assert sorted(r[0] for r in rows) == list(range(1, 21))
    assert {(r[1], r[2], r[3]) for r in rows} == {("done", 1.0, 3)}
    # The tasks ran in the cluster's worker processes, never in this one.
    assert str(os.getpid()) not in {r[4] for r in rows}
    # Their logging calls came back and were re-emitted here under the same logger.
    forwarded = [r for r in caplog.records if r.name == "pipeloom_test.dask"]
    assert len(forwarded) == 20
    assert {r.getMessage().split()[1] for r in forwarded} == {str(i) for i in range(1, 21)}


def test_a_raising_task_is_its_error_with_the_remote_traceback(
    client: Client, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    result = run(client, [TaskDef(i, f"t{i}") for i in range(1, 7)], db, raises_on_even)
    assert result.status == "error"
    assert sorted(result.failed_task_ids) == [2, 4, 6]
    assert result.counts == {"done": 3, "error": 3}
    message, error = query(db, "SELECT message, error FROM task_runs WHERE task_id = 4")[0]
    assert message == "ValueError: bad row 4"
    assert "raises_on_even" in error and "ValueError: bad row 4" in error


def test_custom_messages_reach_the_users_handler_on_the_driver(
    client: Client, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    seen_thread: set[str] = set()

    def schema(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE rows (task_id INTEGER PRIMARY KEY, value TEXT)")

    def on_rows(conn: sqlite3.Connection, msgs: list[MsgRow]) -> None:
        seen_thread.add(threading.current_thread().name)
        conn.executemany("INSERT INTO rows VALUES (?, ?)", [(m.task_id, m.value) for m in msgs])

    result = run(
        client,
        [TaskDef(i, f"t{i}") for i in range(1, 51)],
        db,
        emits_rows,
        handlers={MsgRow: on_rows},
        schema=schema,
    )
    assert result.ok and result.dead_letters == 0
    assert query(db, "SELECT COUNT(*), MIN(value), MAX(task_id) FROM rows")[0] == (
        50,
        "row-1",
        50,
    )
    assert len(seen_thread) == 1  # the one writer thread, in this process


def test_a_message_that_cannot_be_pickled_fails_its_task(client: Client, tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    result = run(
        client,
        [TaskDef(i, f"t{i}") for i in range(1, 4)],
        db,
        sends_a_lock,
        handlers={MsgHandle: lambda conn, msgs: None},
    )
    assert result.counts == {"done": 2, "error": 1} and result.failed_task_ids == [2]
    message = query(db, "SELECT message FROM task_runs WHERE task_id = 2")[0][0]
    assert message.startswith(
        "CrossingError: task 2: a tests.executors.test_dask.MsgHandle message"
    )
    assert "could not be pickled in the worker" in message


def test_fail_fast_leaves_what_has_not_started_unbegun(client: Client, tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    tasks = [TaskDef(i, f"t{i}", payload=str(db)) for i in range(1, 201)]
    result = run(client, tasks, db, fails_first, fail_fast=True)
    assert result.status == "error"
    got = counts(db)
    # Every task that began has exactly one terminal row; the rest, sent to the cluster or
    # not, never began: no row, counted not started, as on threads and processes.
    assert set(got) <= {"done", "error"} and got["error"] == 1
    ((taken, not_started),) = query(db, "SELECT tasks_taken, tasks_not_started FROM pipeline_runs")
    assert taken == sum(got.values()) and taken + not_started == 200
    assert not_started >= 190


def test_ctrl_c_lets_running_tasks_finish_and_begins_nothing_more(
    client: Client, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    tasks = [TaskDef(i, f"t{i}", payload=str(tmp_path)) for i in range(1, 21)]

    def interrupt() -> None:
        wait_for(lambda: count_status(db, "running") > 0, "a running task")
        os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=interrupt)
    helper.start()
    result = run(client, tasks, db, holds_until_the_run_stops)
    helper.join()
    assert result.status == "cancelled"
    rows = query(db, "SELECT status, started_at IS NOT NULL FROM task_runs")
    # What started finished; what had not started never ran and has no row.
    assert set(rows) == {("done", 1)}
    # Chunks already on the cluster began nothing after the stop: the tasks waiting behind
    # the running ones (one per worker thread) were skipped, not run.
    assert 1 <= len(rows) <= 2
    ((taken, not_started),) = query(db, "SELECT tasks_taken, tasks_not_started FROM pipeline_runs")
    assert (taken, not_started) == (len(rows), 20 - len(rows))
    assert result.total + (result.not_started or 0) == 20


def test_a_second_stop_records_interrupted_only_what_began(client: Client, tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    tasks = [TaskDef(i, f"t{i}", payload=str(tmp_path)) for i in range(1, 21)]

    def interrupt_twice() -> None:
        wait_for(lambda: count_status(db, "running") > 0, "a running task")
        os.kill(os.getpid(), signal.SIGINT)
        # Another signal: two SIGINTs sent at once may reach Python as one.
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=interrupt_twice)
    helper.start()
    try:
        result = run(client, tasks, db, waits_for_go)
    finally:
        helper.join()
        (tmp_path / "go").touch()  # the abandoned tasks' threads end on their workers
    assert result.status == "interrupted"
    rows = query(db, "SELECT status, started_at IS NOT NULL FROM task_runs")
    # What was running was cut short; what waited in its chunk behind it never began, so it
    # has no row and counts as not started, as on processes.
    assert rows and set(rows) == {("interrupted", 1)}
    ((taken, not_started),) = query(db, "SELECT tasks_taken, tasks_not_started FROM pipeline_runs")
    assert (taken, not_started) == (len(rows), 20 - len(rows))
    assert (result.total, result.not_started) == (taken, not_started)


# A generator of 10,000 tasks on the cluster (Dask's default in-flight count, so tiny tasks
# chunk): tests/executors/test_conformance.py::test_a_generator_of_ten_thousand_tasks[dask].


def test_a_killed_worker_reruns_the_task_and_both_attempts_are_recorded(
    client: Client, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    tasks = [TaskDef(i, f"t{i}", payload=str(tmp_path)) for i in range(1, 5)]
    box: dict[str, RunResult] = {}
    runner = threading.Thread(target=lambda: box.update(r=run(client, tasks, db, victim)))
    runner.start()
    marker = tmp_path / "first-pid"
    wait_for(marker.exists, "task 1 to start on a Dask worker")
    pid = int(marker.read_text())
    assert pid in client.run(os.getpid).values()
    # Kill only once the driver recorded the first attempt's start.
    wait_for(lambda: status_of(db, 1) == "running", "task 1's start to reach the database")
    os.kill(pid, signal.SIGKILL)
    runner.join(60)
    assert not runner.is_alive()
    result = box["r"]
    assert result.ok and result.counts == {"done": 4}
    rows = query(db, "SELECT status, attempt, result FROM task_runs WHERE task_id = 1")
    assert len(rows) == 1
    status, attempt, ran_on = rows[0]
    assert (status, attempt) == ("done", 2)
    assert int(ran_on) != pid
    attempts = query(db, "SELECT attempt, status, error FROM task_attempts WHERE task_id = 1")
    assert len(attempts) == 1
    assert attempts[0][:2] == (1, "error")
    assert "Dask worker running this attempt was lost" in attempts[0][2]


def test_a_declarative_pipeline_runs_on_dask_with_retries_logs_and_emits(
    client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "run.db"
    decl.map(square, [1, 2, 3, 4])
    caplog.set_level(logging.WARNING, logger="pipeloom.task")
    result = decl.run(db=db, executor=DaskExecutor(client=client), progress=False)
    assert result.ok and result.counts == {"done": 4}
    assert query(db, "SELECT n, square FROM squares ORDER BY n") == [
        (1, 1),
        (2, 4),
        (3, 9),
        (4, 16),
    ]
    rows = query(db, "SELECT attempt, result FROM task_runs ORDER BY task_id")
    assert [r[1] for r in rows] == ["1", "4", "9", "16"]
    assert [r[0] for r in rows] == [1, 1, 2, 1]
    flaky = query(db, "SELECT attempt, error FROM task_attempts")
    assert len(flaky) == 1 and flaky[0][0] == 1 and "flaky disk" in flaky[0][1]
    logged = {r.getMessage() for r in caplog.records if r.name.startswith("pipeloom.task")}
    assert "[square:3] squaring 3 (attempt 2)" in logged


PIPE_FILE = """
from pipeloom import Context, Pipeline

pipe = Pipeline("from-a-file")


@pipe.task
def double(ctx: Context, n: int) -> int:
    return 2 * n


pipe.map(double, range(1, 6))
"""


def test_pipeloom_run_of_a_file_on_a_dask_scheduler(client: Client, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeloom_cli.app import app

    target = tmp_path / "etl_on_dask.py"  # loaded by path: no importable module name
    target.write_text(PIPE_FILE)
    db = tmp_path / "run.db"
    address = client.scheduler_info()["address"]
    args = ["run", f"{target}:pipe", "--db", str(db), "--dask-address", address]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert query(db, "SELECT result FROM task_runs ORDER BY task_id") == [
        ("2",),
        ("4",),
        ("6",),
        ("8",),
        ("10",),
    ]


def test_by_address_the_cluster_is_left_running(client: Client, tmp_path: Path) -> None:
    address = client.scheduler_info()["address"]
    executor = DaskExecutor(address=address)
    tasks = [TaskDef(i, f"t{i}", steps=2) for i in range(1, 6)]
    result = run_pipeline(
        tasks, tmp_path / "run.db", worker_fn=shaped, executor=executor, progress=False
    )
    assert result.ok and result.counts == {"done": 5}
    assert executor.client is None  # its own connection is closed
    assert client.submit(abs, -3).result() == 3  # the cluster still serves others


def test_its_own_local_cluster_is_closed_after_each_run(tmp_path: Path) -> None:
    executor = DaskExecutor(n_workers=1, threads_per_worker=2, processes=False)
    for name in ("first.db", "second.db"):  # one instance, two runs
        result = run_pipeline(
            [TaskDef(i, f"t{i}") for i in range(1, 11)],
            tmp_path / name,
            worker_fn=raises_on_even,
            executor=executor,
            progress=False,
        )
        assert result.counts == {"done": 5, "error": 5}
        assert executor.client is None and executor._cluster is None


def test_an_unpicklable_worker_function_fails_before_any_task(
    client: Client, tmp_path: Path
) -> None:
    lock = threading.Lock()

    def holds_a_lock(task: Any, q: TaskQueue) -> None:
        with lock:
            pass

    with pytest.raises(PipeloomError, match="could not start") as info:
        run(client, [TaskDef(1, "t")], tmp_path / "run.db", holds_a_lock)
    assert "holds_a_lock" in str(info.value.__cause__)
    assert query(tmp_path / "run.db", "SELECT status FROM pipeline_runs") == [("error",)]


def test_without_the_extra_asking_for_dask_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(DaskUnavailableError, match=r"pipeloom-core\[dask\]") as info:
        resolve_executor("dask")
    assert "\n" not in str(info.value)


def test_import_pipeloom_does_not_import_dask(tmp_path: Path) -> None:

    code = (
        "import sys, pipeloom, pipeloom.executors; "
        "assert pipeloom.executors.resolve_executor('threads'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_the_clusters_workers_busy_in_c_die_with_a_driver_killed_outright(
    tmp_path: Path,
) -> None:
    # distributed's workers watch their parent from a thread, which a task holding the GIL
    # never lets run: without the kernel's parent-death signal they spun on after kill -9.
    executor = "DaskExecutor(n_workers=2, threads_per_worker=1)"
    assert left_after_kill_9(tmp_path, executor) == []
