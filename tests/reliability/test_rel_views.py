"""One run, every view: what RunResult, the run row, the runs view, `pipeloom status` and
observe say of one mixed run (a failure, a retry, a timeout, a rejected handler batch, a
Ctrl-C stop, then a resume) is the same, and is what happened."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeloom import Context, Pipeline, run_pipeline
from pipeloom.schema import RUNS_SELECT
from pipeloom.status import STOP_TEXT
from pipeloom_cli.app import app
from tests._harness import query
from tests.reliability._support import read_events, spawn_child, wait_for

runner = CliRunner()
ITEMS = list(range(1, 13))
STOP_AT = 6
"""The item whose task presses Ctrl-C (SIGINT to this process). The signal reaches the main
thread a moment later, so the worker may take one or two more items first."""


@dataclass(frozen=True)
class Row:
    item: int
    value: int


def _store(conn: sqlite3.Connection, rows: list[Row]) -> None:
    conn.executemany(
        "INSERT INTO rows (item, value) VALUES (?, ?)", [(r.item, r.value) for r in rows]
    )


def _schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS rows (item INTEGER, value INTEGER CHECK (value >= 0))")


def _until_handled() -> None:
    """Wait (at most 10 s) until the main thread has run the engine's Ctrl-C handler.

    The signal is handled on the main thread, which a loaded machine may not schedule before
    this worker takes the next items; the handler counts the Ctrl-Cs it has seen.
    """
    handler = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    deadline = time.monotonic() + 10
    while getattr(handler, "count", 1) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)


def _pipeline(db: Path, seen: dict[int, int]) -> Pipeline:
    pipe = Pipeline("views", db=db, workers=1, schema=_schema)
    pipe.handler(Row)(_store)

    @pipe.task(retries=1, backoff=0.05, timeout=0.5, retry_on=(OSError,))
    def work(ctx: Context, item: int) -> int:
        seen[item] = seen.get(item, 0) + 1
        if item == 1:
            raise ValueError("bad partition 1")
        if item == 2 and ctx.attempt == 1:
            time.sleep(0.1)  # attempt 2 must start visibly later than attempt 1
            raise OSError("flaky source")
        if item == 3:
            ctx.cancelled.wait(10)  # times out (not retried: only OSError is)
            return 0
        if item == 4:
            ctx.emit(Row(4, 1))
            ctx.emit(Row(4, -1))  # the handler's CHECK rejects the batch: the task fails
        if item == STOP_AT and ctx.attempt == 1 and not os.environ.get("NO_STOP"):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as a user would press it
            _until_handled()
        return item

    pipe.map(work, ITEMS)
    return pipe


def test_one_stopped_mixed_run_reads_the_same_in_every_view(tmp_path: Path) -> None:
    db = tmp_path / "views.db"
    seen: dict[int, int] = {}
    result = _pipeline(db, seen).run(progress=False)

    # RunResult: stopped by Ctrl-C, planned 12, 6 never started; exit 130 despite failures.
    assert result.stop_reason == "sigint"
    assert result.status == "error"  # failures happened before the stop
    assert result.exit_code == 130
    assert result.planned == len(ITEMS)
    taken = len(seen)
    # The worker may have taken the next item before the stop (admission runs ahead by one).
    assert set(seen) == set(range(1, taken + 1)) and STOP_AT <= taken <= STOP_AT + 1
    assert result.not_started == len(ITEMS) - taken
    done = taken - 3
    assert result.counts == {"done": done, "error": 2, "timeout": 1}

    # The run row and the runs view.
    ((total, row_done, failed, not_started, reason),) = query(
        db,
        f"SELECT tasks_total, tasks_done, tasks_failed, tasks_not_started, stop_reason "
        f"FROM ({RUNS_SELECT}) WHERE id = ?",
        result.run_id,
    )
    assert (total, row_done, failed, not_started, reason) == (12, done, 3, 12 - taken, "sigint")

    # Every attempt has its own start: the retried task's row shows attempt 2's.
    ((attempt1_start,),) = query(
        db, "SELECT started_at FROM task_attempts WHERE task_id = 2 AND attempt = 1"
    )
    ((row_start, attempt),) = query(
        db, "SELECT started_at, attempt FROM task_runs WHERE task_id = 2"
    )
    assert attempt == 2 and row_start > attempt1_start

    # A timeout's one-line error is the timeout, not a frame of the stack dump.
    ((error,),) = query(db, "SELECT error FROM task_runs WHERE task_id = 3")
    assert error.strip().splitlines()[-1].startswith("TaskTimeoutError: did not finish within")

    # Dead letters are traceable by column to their run, task and attempt.
    letters = query(db, "SELECT run_id, task_id, attempt FROM dead_letters ORDER BY id")
    assert letters == [(result.run_id, 4, 1), (result.run_id, 4, 1)]
    assert query(db, "SELECT count(*) FROM rows") == [(0,)]

    # ... and `status --task` lists them, by the same columns.
    shown = runner.invoke(app, ["status", str(db), "--task", "4", "--format", "json"])
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert detail["dead_letters_total"] == 2
    assert {(d["attempt"], d["msg_type"].rsplit(".", 1)[-1]) for d in detail["dead_letters"]} == {
        (1, "Row")
    }

    # pipeloom status (JSON): the same figures, and why it stopped.
    out = runner.invoke(app, ["status", str(db), "--format", "json"])
    assert out.exit_code == 0, out.output
    run = json.loads(out.output)["run"]
    assert run["stop_reason"] == "sigint" and run["stopped"] == STOP_TEXT["sigint"]
    assert run["tasks_total"] == 12 and run["not_started"] == 12 - taken and run["done"] == done

    table = runner.invoke(app, ["status", str(db), "--run", str(result.run_id)])
    assert table.exit_code == 0, table.output
    assert STOP_TEXT["sigint"] in table.output
    assert f"{12 - taken} of 12" in table.output  # not started

    # Observe: the runs list says the same.
    listed = _observe_run_list(db)[0]
    assert (listed["total"], listed["done"], listed["failed"], listed["not_started"]) == (
        12,
        done,
        3,
        12 - taken,
    )
    assert listed["stopped"] == STOP_TEXT["sigint"]

    # A resume runs what is left; skipped tasks count as done in every view.
    os.environ["NO_STOP"] = "1"
    try:
        again = _pipeline(db, {}).run(progress=False, resume=True)
    finally:
        del os.environ["NO_STOP"]
    assert again.stop_reason is None and again.not_started == 0
    assert again.counts["skipped"] == done
    ((done2, total2),) = query(
        db, f"SELECT tasks_done, tasks_total FROM ({RUNS_SELECT}) WHERE id = ?", again.run_id
    )
    listed2 = _observe_run_list(db)[0]
    assert done2 == listed2["done"] == again.counts["done"] + done
    assert total2 == listed2["total"] == 12


def _observe_run_list(db: Path) -> list[dict[str, Any]]:
    import asyncio

    from pipeloom_observe.app import build_datasette

    async def read() -> list[dict[str, Any]]:
        ds = build_datasette(db)
        await ds.invoke_startup()
        response = await ds.client.get(f"/{db.stem}/run_list.json?_shape=objects")
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows

    return asyncio.run(read())


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_a_crashed_run_reads_the_same_in_every_view_and_ends_at_its_last_sign_of_life(
    tmp_path: Path,
) -> None:
    db, events = tmp_path / "crash.db", tmp_path / "crash.events"
    child = spawn_child("sigint2", db, events, 40)  # every fifth task hangs for a minute
    try:
        wait_for(lambda: len(read_events(events)[1]) >= 8, "eight committed finishes")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    # Its lease passes (made short here rather than waited for): it is stale, not running.
    sqlite3.connect(db).execute("UPDATE pipeline_runs SET lease_s = 0.001").connection.commit()
    ((started, heartbeat),) = query(db, "SELECT started_at, heartbeat_at FROM pipeline_runs")
    lived = round(_seconds(started, heartbeat), 3)

    # Stale: every reader stops its clock, and its running tasks' clocks, at the heartbeat.
    ((shown, duration),) = query(db, f"SELECT shown_status, duration_s FROM ({RUNS_SELECT})")
    assert shown == "stale" and duration == pytest.approx(lived, abs=0.002)
    out = runner.invoke(app, ["status", str(db), "--format", "json"])
    doc = json.loads(out.output)
    assert doc["run"]["elapsed"] == pytest.approx(lived, abs=0.002)
    assert doc["run"]["stopped"] == STOP_TEXT["crashed"]
    hung = [t for t in doc["tasks"] if t["status"] == "running"]
    assert hung and all(t["stale_at"] == heartbeat for t in hung)
    listed = _observe_run_list(db)[0]
    assert (listed["status"], listed["stopped"]) == ("stale", STOP_TEXT["crashed"])
    assert listed["duration_s"] == pytest.approx(lived, abs=0.002)

    # The next writer marks it interrupted at its last sign of life, not at this moment.
    run_pipeline([], db, worker_fn=lambda task, q: None, progress=False)
    ((status, reason, finished, row_duration),) = query(
        db,
        f"SELECT status, stop_reason, finished_at, duration_s FROM ({RUNS_SELECT}) WHERE id = 1",
    )
    assert (status, reason, finished) == ("interrupted", "crashed", heartbeat)
    assert row_duration == pytest.approx(lived, abs=0.002)
    ends = query(
        db,
        "SELECT started_at, finished_at FROM task_runs WHERE run_id = 1 AND status = ?",
        "interrupted",
    )
    assert ends and all(f == max(s, heartbeat) for s, f in ends)
    listed = _observe_run_list(db)[-1]
    assert (listed["status"], listed["stopped"]) == ("interrupted", STOP_TEXT["crashed"])
    out = runner.invoke(app, ["status", str(db), "--run", "1", "--format", "json"])
    assert json.loads(out.output)["run"]["stop_reason"] == "crashed"
