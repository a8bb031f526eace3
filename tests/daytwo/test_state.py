"""Incremental state: ctx.state.set commits with the task's rows and done row, or not at all."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests._harness import query
from tests.daytwo._tasks import make_incremental, make_two_setters


def _source(path: Path, ids: range) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS source (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT OR IGNORE INTO source (id) VALUES (?)", [(i,) for i in ids])
    conn.commit()
    conn.close()
    return path


def _cursor(db: Path) -> int | None:
    found = query(db, "SELECT value FROM pipeloom_state WHERE pipeline = 'incremental'")
    return json.loads(found[0][0]) if found else None


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_each_run_loads_what_is_new_and_the_cursor_follows(tmp_path: Path, executor: str) -> None:
    db, src = tmp_path / "runs.db", _source(tmp_path / "source.db", range(1, 121))
    pipe = make_incremental(db, executor=executor)
    for _ in range(3):
        assert pipe.run(progress=False, params={"source": src}).ok
    assert query(db, "SELECT count(*), min(id), max(id) FROM target") == [(120, 1, 120)]
    assert _cursor(db) == 120
    _source(src, range(121, 131))  # the source grows
    result = pipe.run(progress=False, params={"source": src})
    assert result.ok
    assert query(db, "SELECT count(*), max(id) FROM target") == [(130, 130)]
    # which run and task last set the key is recorded
    assert query(db, "SELECT key, run_id, task_key FROM pipeloom_state") == [
        ("cursor", result.run_id, "load_new:batch")
    ]


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_a_task_that_raises_after_set_leaves_state_and_rows_as_they_were(
    tmp_path: Path, executor: str
) -> None:
    db, src = tmp_path / "runs.db", _source(tmp_path / "source.db", range(1, 81))
    pipe = make_incremental(db, executor=executor)
    assert pipe.run(progress=False, params={"source": src}).ok
    assert _cursor(db) == 50
    failed = pipe.run(progress=False, params={"source": src, "fail_after_set": True})
    assert not failed.ok
    assert _cursor(db) == 50  # the set was discarded with the attempt
    assert query(db, "SELECT count(*) FROM target") == [(50,)]
    assert pipe.run(progress=False, params={"source": src}).ok
    assert _cursor(db) == 80
    assert query(db, "SELECT count(*), count(DISTINCT id) FROM target") == [(80, 80)]


def test_a_second_task_setting_the_same_key_in_one_run_fails(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    result = make_two_setters(db).run(progress=False)
    assert not result.ok
    statuses = dict(query(db, "SELECT task_key, status FROM task_runs"))
    assert sorted(statuses.values()) == ["done", "error"]
    (winner,) = [k for k, s in statuses.items() if s == "done"]
    (loser,) = [k for k, s in statuses.items() if s == "error"]
    assert query(db, "SELECT value, task_key FROM pipeloom_state") == [
        (json.dumps(winner.split(":")[1]), winner)
    ]
    (error,) = query(db, "SELECT message FROM task_runs WHERE task_key = ?", loser)
    assert "state key 'shared' was already set in run" in error[0]
    # the next run may set it again: the rule is one task per key per run
    assert make_two_setters(db).run(progress=False).ok is False
    assert query(db, "SELECT count(*) FROM pipeloom_state") == [(1,)]


def test_get_reads_the_value_committed_before_the_run(tmp_path: Path) -> None:
    from pipeloom import Context, Pipeline

    db = tmp_path / "runs.db"
    pipe = Pipeline("snap", db=db, workers=1)
    seen: list[object] = []

    @pipe.task
    def step(ctx: Context, item: int) -> None:
        seen.append(ctx.state.get("n", "unset"))
        ctx.state.set(f"n{item}", item)
        if item == 1:
            ctx.state.set("n", item)

    pipe.map(step, [1, 2])
    assert pipe.run(progress=False).ok
    assert seen == ["unset", "unset"]  # a value set in this run is not read back in it
    assert pipe.run(progress=False).ok is True
    assert seen[2:] == [1, 1]


def test_a_value_that_is_not_json_is_a_one_line_error(tmp_path: Path) -> None:
    from pipeloom import Context, Pipeline

    pipe = Pipeline("bad", db=tmp_path / "runs.db", workers=1)

    @pipe.task
    def step(ctx: Context, item: int) -> None:
        ctx.state.set("when", object())

    pipe.map(step, [1])
    assert not pipe.run(progress=False).ok
    (message,) = query(tmp_path / "runs.db", "SELECT message FROM task_runs")
    assert "state values are JSON" in message[0]


def test_a_streaming_task_still_holds_its_state_set_until_done(tmp_path: Path) -> None:
    from pipeloom import Context, Pipeline
    from tests.daytwo._tasks import Row, insert_rows, target_schema

    db = tmp_path / "runs.db"

    def run(item: int) -> bool:
        pipe = Pipeline(
            "stream", db=db, workers=1, handlers={Row: insert_rows}, schema=target_schema
        )

        @pipe.task(atomic=False)
        def load(ctx: Context, item: int) -> None:
            ctx.emit(Row(item, "streamed"))  # applied as it is sent
            ctx.state.set("cursor", item)  # held: commits only with the done row
            if item == 2:
                raise RuntimeError("failed after set")

        pipe.map(load, [item])
        return pipe.run(progress=False).ok

    assert run(1)
    assert not run(2)
    assert query(db, "SELECT value FROM pipeloom_state") == [("1",)]
    assert query(db, "SELECT id FROM target ORDER BY id") == [(1,), (2,)]  # streamed rows stay
