"""What only the process executor has: children that die, pickling, real subprocess CLI runs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeloom import PipeloomError, RunResult, TaskDef, run_pipeline
from pipeloom.executors import ProcessExecutor
from tests._harness import query
from tests.executors._support import left_after_kill_9, pipeloom_children
from tests.executors._workers import (
    _wait_for,
    dies,
    dies_once_task_4_ran,
    hogs_the_gil_until_killed,
    holds_until_stopping,
    logs_a_line,
    noop,
    unpicklable_result,
    waits_for_task_3,
)


def test_a_child_that_dies_fails_its_task_and_the_run_goes_on(tmp_path: Path) -> None:
    db = tmp_path / "die.db"
    tasks = [TaskDef(i, f"t{i}") for i in range(1, 9)]
    result = run_pipeline(
        tasks, db, worker_fn=dies, workers=2, executor=ProcessExecutor(), progress=False
    )
    assert result.counts == {"done": 6, "error": 2}
    assert result.failed_task_ids == [2, 3]
    assert query(
        db, "SELECT task_id, message FROM task_runs WHERE status = 'error' ORDER BY task_id"
    ) == [
        (2, "WorkerDied: worker process died (signal SIGKILL)"),
        (3, "WorkerDied: worker process died (exit code 3)"),
    ]
    assert pipeloom_children() == []


def test_an_unpicklable_result_is_the_tasks_error_not_a_hang(tmp_path: Path) -> None:
    db = tmp_path / "pickle.db"
    result = run_pipeline(
        [TaskDef(1, "a"), TaskDef(2, "b")],
        db,
        worker_fn=unpicklable_result,
        executor="processes",
        progress=False,
    )
    assert result.counts == {"error": 2}
    (message,) = query(db, "SELECT message FROM task_runs WHERE task_id = 1")[0]
    assert str(message).startswith("CrossingError: task 1: its result, a function, could not ")
    assert "pickled in the worker" in str(message)


def test_an_unpicklable_task_is_its_own_error(tmp_path: Path) -> None:
    db = tmp_path / "task.db"
    tasks = [TaskDef(1, "ok"), TaskDef(2, "holds a lambda", payload=lambda: None)]
    result = run_pipeline(tasks, db, worker_fn=noop, executor="processes", progress=False)
    assert result.counts == {"done": 1, "error": 1}
    (message,) = query(db, "SELECT message FROM task_runs WHERE task_id = 2")[0]
    assert str(message).startswith("CrossingError: task 2: its task (its item, a function) ")
    assert "could not be pickled for a worker process" in str(message)


def test_a_worker_function_that_cannot_reach_a_child_fails_before_the_run(tmp_path: Path) -> None:
    db = tmp_path / "lambda.db"
    with pytest.raises(PipeloomError, match=r"cannot be sent to a worker process.*top level"):
        run_pipeline(
            [TaskDef(1, "a")],
            db,
            worker_fn=lambda task, q: None,
            executor="processes",
            progress=False,
        )
    # The run is on record as failed, with the reason; no writer was left behind.
    (status, error) = query(db, "SELECT status, error FROM pipeline_runs")[0]
    assert status == "error" and "cannot be sent to a worker process" in str(error)


def test_unknown_executor_names_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="threads, processes, async"):
        run_pipeline([TaskDef(1, "a")], ":memory:", worker_fn=noop, executor="gpu")


def test_logs_from_children_reach_the_drivers_handlers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="user.etl")
    result = run_pipeline(
        [TaskDef(i, f"part-{i}") for i in range(1, 4)],
        tmp_path / "logs.db",
        worker_fn=logs_a_line,
        workers=2,
        executor="processes",
        progress=False,
    )
    assert result.ok
    lines = [r for r in caplog.records if r.name == "user.etl"]
    assert sorted(r.getMessage().split(" in pid")[0] for r in lines) == [
        "loaded part-1",
        "loaded part-2",
        "loaded part-3",
    ]
    assert all(r.process != os.getpid() for r in lines)


# -- a task waiting in a child behind the running one ---------------------------------------


def _on_two_children(tmp_path: Path, n: int, worker_fn: Any, **kwargs: Any) -> RunResult:
    """Tasks 1..n (each told the folder for its marker files) on two worker processes."""
    tasks = [TaskDef(i, f"t{i}", payload=str(tmp_path)) for i in range(1, n + 1)]
    return run_pipeline(
        tasks,
        tmp_path / "run.db",
        worker_fn=worker_fn,
        workers=2,
        executor="processes",
        progress=False,
        **kwargs,
    )


def test_a_task_waiting_behind_a_long_one_is_run_by_a_free_worker(tmp_path: Path) -> None:
    # Task 3 is sent to wait behind task 1, which does not end until task 3 has run: only
    # the free worker taking it back lets the run finish.
    result = _on_two_children(tmp_path, 4, waits_for_task_3)
    assert result.counts == {"done": 4}
    assert pipeloom_children() == []


def test_a_stop_begins_no_waiting_task_and_counts_it_not_started(tmp_path: Path) -> None:
    result = _on_two_children(tmp_path, 6, holds_until_stopping, fail_fast=True)
    ran = {int(p.name.split("-")[1]) for p in tmp_path.glob("ran-*")}
    rows = {int(r[0]) for r in query(tmp_path / "run.db", "SELECT task_id FROM task_runs")}
    # Task 3 waits behind task 1 (held until the stop) and never begins. Task 4 may have
    # begun behind task 2 before the stop reached its worker, and task 1 may not have begun
    # at all (a worker still starting up when the stop came): what began has its row.
    assert 2 in ran and ran <= {1, 2, 4}
    assert rows == ran
    assert result.counts.get("error") == 1 and "cancelled" not in result.counts
    (row,) = query(tmp_path / "run.db", "SELECT tasks_taken, tasks_not_started FROM pipeline_runs")
    assert row == (len(ran), 6 - len(ran))


def test_a_second_ctrl_c_records_interrupted_only_what_began(tmp_path: Path) -> None:
    # Tasks 3 and 4 wait behind 1 and 2, whose children hold their GIL and so cannot give
    # them back at the first Ctrl-C. The second stop signal abandons the run: 1 and 2 were
    # cut short; 3 and 4 never began, so they have no row and count as not started.
    def interrupt_twice() -> None:
        if all(_wait_for(tmp_path / f"ran-{i}") for i in (1, 2)):
            os.kill(os.getpid(), signal.SIGINT)
            # Another signal: two SIGINTs sent at once may reach Python as one.
            os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=interrupt_twice)
    helper.start()
    result = _on_two_children(tmp_path, 6, hogs_the_gil_until_killed)
    helper.join()
    assert result.status == "interrupted"
    db = tmp_path / "run.db"
    assert query(db, "SELECT task_id, status FROM task_runs ORDER BY task_id") == [
        (1, "interrupted"),
        (2, "interrupted"),
    ]
    assert query(db, "SELECT tasks_taken, tasks_not_started FROM pipeline_runs") == [(2, 4)]
    assert (result.total, result.not_started, result.counts) == (2, 4, {"interrupted": 2})
    assert not (tmp_path / "ran-3").exists() and not (tmp_path / "ran-4").exists()
    assert pipeloom_children() == []


def test_a_task_waiting_behind_one_whose_child_dies_runs_elsewhere(tmp_path: Path) -> None:
    result = _on_two_children(tmp_path, 6, dies_once_task_4_ran)
    assert result.counts == {"done": 5, "error": 1}
    sql = "SELECT task_id, message FROM task_runs WHERE status = 'error'"
    assert query(tmp_path / "run.db", sql) == [(1, "WorkerDied: worker process died (exit code 5)")]
    assert pipeloom_children() == []


UNGUARDED = """
from pipeloom import TaskDef, run_pipeline


def work(task, q):
    return None


# No `if __name__ == "__main__":`: every worker process that imports this starts it again.
run_pipeline([TaskDef(i, f"t{{i}}") for i in range(1, 5)], {db!r}, worker_fn=work,
             workers=2, executor="processes", progress=False)
"""


def test_a_script_that_runs_at_import_fails_once_with_the_fix_and_records_one_run(
    tmp_path: Path,
) -> None:
    db = tmp_path / "unguarded.db"
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(db=str(db)), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    # Each worker refuses the run its import would start, naming the script and the fix...
    assert f"{script} starts a run when it is imported" in proc.stderr
    # ...so the file holds the driver's run only, ended with the reason, nothing begun.
    ((status, error, taken, not_started),) = query(
        db, "SELECT status, error, tasks_taken, tasks_not_started FROM pipeline_runs"
    )
    assert (status, taken, not_started) == ("error", 0, 4)
    assert "worker processes in a row died while starting (exit code 1)" in str(error)
    assert 'needs `if __name__ == "__main__":`' in str(error)
    assert query(db, "SELECT count(*) FROM task_runs") == [(0,)]
    assert pipeloom_children() == []


def test_every_module_the_forkserver_preloads_exists() -> None:
    """The forkserver skips a preload that fails to import without a word, and each child
    would then import it again (~230 ms each): a renamed module must fail here instead."""
    import importlib

    from pipeloom.executors.processes import _PRELOAD

    for name in _PRELOAD:
        assert importlib.import_module(name).__name__ == name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_children_busy_in_c_die_with_a_driver_killed_outright(tmp_path: Path) -> None:
    # SIGKILL gives the driver no chance to stop its children, and these cannot notice:
    # holding the GIL, their pipe watch never runs. They must still go (the forkserver
    # exits with the driver, and the kernel kills its children), not spin on forever.
    assert left_after_kill_9(tmp_path, '"processes"') == []


@pytest.mark.parametrize(
    ("killed", "code", "text"),
    [
        ("its pipe broke", 3, "exit code 3"),
        ("its pipe broke", -9, "signal SIGKILL"),
        ("its pipe broke", None, "its pipe broke"),
        ("killed after its timeout", -9, "killed after its timeout"),
        (None, 3, "exit code 3"),
    ],
)
def test_a_dead_childs_task_says_how_it_died_not_how_the_driver_noticed(
    killed: str | None, code: int | None, text: str
) -> None:
    # A send that found the pipe broken raced the child's exit: the exit code is the truth
    # (test_a_child_that_dies_fails_its_task... recorded "its pipe broke" once in ~20 runs).
    from pipeloom.executors.processes import _death_text

    assert _death_text(killed, code) == text
