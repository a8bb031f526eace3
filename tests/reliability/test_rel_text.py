"""Any text is stored: a lifecycle message is never dead-lettered for what its text holds.

File names from ``os.listdir`` that are not UTF-8 hold lone surrogates (``'bad\\udcff.csv'``),
which SQLite's UTF-8 cannot hold. The writer escapes them (``'bad\\\\udcff.csv'``) instead of
refusing the message, so every task keeps exactly one terminal row with its name, and
``resume`` finds the keys it stored. Other odd values a worker may send (an int-like task id,
an enum status, a float step) are recorded where they have a sensible meaning.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pipeloom import (
    Context,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    Pipeline,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)
from pipeloom._text import storable
from tests._harness import query

NAMES = [f"f{i}.csv" for i in range(6)] + ["bad\udcff.csv", "x\udc80y.csv", "caf\udce9.csv"]
FAIL_FIRST_TIME = {"f2.csv", "x\udc80y.csv"}


def _rows(db: Path, run_id: int | None) -> list[tuple[Any, ...]]:
    return query(
        db,
        "SELECT task_key, name, status, message, result FROM task_runs WHERE run_id = ? "
        "ORDER BY task_id",
        run_id,
    )


def test_pipeline_over_undecodable_file_names_records_and_resumes_every_task(
    tmp_path: Path,
) -> None:
    db = tmp_path / "names.db"
    failing = set(FAIL_FIRST_TIME)
    pipe = Pipeline("names", db=db, workers=2)

    @pipe.task
    def load(ctx: Context, name: str) -> str:
        ctx.progress(1, 2, f"reading {name}")
        if name in failing:
            raise ValueError(f"cannot parse {name}")
        return name

    pipe.map(load, NAMES)
    first = pipe.run(progress=False)

    rows = _rows(db, first.run_id)
    keys = [storable(f"load:{n}") for n in NAMES]
    assert [r[0] for r in rows] == keys, "one row per task, each with its (escaped) key"
    assert [r[1] for r in rows] == keys, "each row carries its name"
    expected = ["error" if n in FAIL_FIRST_TIME else "done" for n in NAMES]
    assert [r[2] for r in rows] == expected
    assert rows[NAMES.index("bad\udcff.csv")][4] == storable("bad\udcff.csv")
    assert query(db, "SELECT count(*) FROM dead_letters") == [(0,)]
    assert first.counts == {"done": 7, "error": 2}

    failing.clear()
    second = pipe.run(progress=False, resume=True)
    rows = _rows(db, second.run_id)
    statuses = {r[0]: r[2] for r in rows}
    assert statuses == {
        storable(f"load:{n}"): "done" if n in FAIL_FIRST_TIME else "skipped" for n in NAMES
    }, "resume skips exactly the done tasks and runs the failed ones again"
    assert second.ok
    assert query(db, "SELECT count(*) FROM dead_letters") == [(0,)]


def _surrogate_worker(task: TaskDef, q: TaskQueue) -> None:
    tid, name = task.task_id, task.name
    q.put(MsgTaskStarted(tid, name, utc_now(), key=f"k\udcff{tid}"))
    q.put(MsgTaskProgress(tid, 1, 2, f"step of {name}"))
    if tid % 2:
        q.put(MsgTaskFinished(tid, "done", utc_now(), result=f"out\udc80{tid}", message=name))
    else:
        q.put(
            MsgTaskFinished(tid, "error", utc_now(), message=f"bad {name}", error=f"E\udcff{tid}")
        )


def test_low_level_worker_sending_surrogates_keeps_every_row(tmp_path: Path) -> None:
    db = tmp_path / "low.db"
    tasks = [TaskDef(i, f"t\udcff{i}") for i in range(1, 21)]
    result = run_pipeline(tasks, db, worker_fn=_surrogate_worker, workers=3, progress=False)

    rows = query(
        db,
        "SELECT task_id, name, task_key, status, result, error FROM task_runs "
        "WHERE run_id = ? ORDER BY task_id",
        result.run_id,
    )
    assert [r[0] for r in rows] == list(range(1, 21)), "exactly one row per task"
    for tid, name, key, status, res, err in rows:
        assert name == f"t\\udcff{tid}"
        assert key == f"k\\udcff{tid}"
        if tid % 2:
            assert (status, res) == ("done", f"out\\udc80{tid}")
        else:
            assert (status, err) == ("error", f"E\\udcff{tid}")
    assert result.dead_letters == 0
    assert query(db, "SELECT count(*) FROM dead_letters") == [(0,)]


class Code(enum.Enum):
    """A status enum as a worker might define it."""

    DONE = "done"


class Index:
    """A numpy-like integer: not an int, but usable as one through ``__index__``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class Flag(int):
    """An int subclass (as IntEnum members are)."""


def test_odd_values_are_recorded_where_they_mean_something(tmp_path: Path) -> None:
    odd: list[Any] = [
        MsgTaskStarted(Index(1), "one", utc_now()),  # type: ignore[arg-type]
        MsgTaskProgress(Index(1), 1.5, 3.0, "half"),  # type: ignore[arg-type]
        MsgTaskFinished(Index(1), Code.DONE, utc_now()),  # type: ignore[arg-type]
        MsgTaskStarted(Flag(2), "two", utc_now(), attempt=Index(1)),  # type: ignore[arg-type]
        MsgTaskFinished(Flag(2), "error", utc_now(), error=ValueError("x\udcff")),  # type: ignore[arg-type]
        MsgTaskStarted(3, b"three", utc_now()),  # type: ignore[arg-type]
        MsgTaskFinished(3, "done", utc_now(), result={"k\udcff": [1, 2]}, message=3),  # type: ignore[arg-type]
        MsgTaskFinished(None, "done", utc_now()),  # type: ignore[arg-type]
    ]

    def worker(task: TaskDef, q: TaskQueue) -> None:
        for msg in odd:
            q.put(msg)

    db = tmp_path / "odd.db"
    result = run_pipeline([TaskDef(9, "nine")], db, worker_fn=worker, workers=1, progress=False)
    rows = {
        r[0]: r[1:]
        for r in query(
            db,
            "SELECT task_id, name, status, step, total, progress, error, result, message "
            "FROM task_runs WHERE run_id = ?",
            result.run_id,
        )
    }
    assert rows[1][:5] == ("one", "done", 1.5, 3.0, 1.0)
    assert rows[2][:2] == ("two", "error") and rows[2][5] == "x\\udcff"
    assert rows[3][:2] == ("b'three'", "done")
    assert rows[3][6:] == ('{"k\\udcff": [1, 2]}', "3")
    assert rows[9][1] == "done"
    dead = query(db, "SELECT error FROM dead_letters")
    assert len(dead) == 1, "only the message with no task id at all is refused"
    assert "task_id must be an int, got NoneType" in dead[0][0]


def test_a_pipeline_named_with_surrogates_runs_and_resumes(tmp_path: Path) -> None:
    db = tmp_path / "named.db"
    pipe = Pipeline("sales \udcff", db=db, workers=1)
    attempts: list[int] = []

    @pipe.task
    def load(ctx: Context, item: int) -> int:
        attempts.append(item)
        if item == 2 and attempts.count(2) == 1:
            raise ValueError("first time")
        return item

    pipe.map(load, [1, 2, 3])
    assert pipe.run(progress=False).counts == {"done": 2, "error": 1}
    second = pipe.run(progress=False, resume=True)
    assert second.counts == {"done": 1, "skipped": 2}, "resume found the run by its name"
    assert query(db, "SELECT DISTINCT name FROM pipeline_runs") == [("sales \\udcff",)]
