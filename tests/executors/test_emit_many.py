"""``ctx.emit_many``: rows in bulk keep every promise ``ctx.emit`` makes, on every executor.

Atomic output (a failed attempt leaves no row), the rejected row named among the dead
letters, ``max_outputs`` and a streamed task's rows reaching the writer in bounded batches.
On processes and Dask the rows cross as plain tuples (``executors/_rowpack.py``) and must
arrive as the same objects of the same classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeloom import RunOptions
from pipeloom.pipeline import OutputLimitError
from tests._harness import query
from tests.executors import _bulk
from tests.executors.conftest import EXECUTORS


def _task(name: str, executor: str) -> Any:
    task = getattr(_bulk, f"{name}_async" if executor == "async" else name, None)
    return task if task is not None else getattr(_bulk, name)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_bulk_rows_commit_with_their_task_or_not_at_all(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "bulk.db"
    pipe = _bulk.make_pipe(db, make_executor(executor), workers=2)
    pipe.map(_task("load", executor), [("a", 300, -1), ("gone", 300, -2), ("b", 40, -1)])
    result = pipe.run(progress=False)

    assert result.counts == {"done": 2, "error": 1}
    assert query(db, "SELECT file, count(*), sum(amount) FROM rows GROUP BY file") == [
        ("a", 300, sum(range(300))),
        ("b", 40, sum(range(40))),
    ]
    assert query(db, "SELECT file, count(*) FROM pairs GROUP BY file") == [("a", 300), ("b", 40)]
    # Every field arrived as it was sent, None included (every third row has a note).
    assert query(db, "SELECT n, note FROM rows WHERE file = 'a' AND n < 4 ORDER BY n") == [
        (0, "r0"),
        (1, None),
        (2, None),
        (3, "r3"),
    ]
    message = query(db, "SELECT message FROM task_runs WHERE task_key LIKE '%gone%'")[0][0]
    assert message.startswith("ConnectionError: gone: the source went away")
    assert "600 emitted messages of this attempt discarded" in message
    assert query(db, "SELECT count(*) FROM dead_letters") == [(0,)]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_rejected_bulk_row_is_named_and_the_rest_point_to_it(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "reject.db"
    pipe = _bulk.make_pipe(db, make_executor(executor), workers=2)
    pipe.map(_task("load", executor), [("good", 100, -1), ("bad", 100, 37)])
    result = pipe.run(progress=False)

    assert result.counts == {"done": 1, "error": 1}
    assert query(db, "SELECT DISTINCT file FROM rows") == [("good",)]
    (message,) = query(db, "SELECT message FROM task_runs WHERE task_key LIKE '%bad%'")[0]
    assert "handler save_rows rejected Row output 38 of 200 (IntegrityError: CHECK" in message
    assert "applied: Row(file='bad', n=37, amount=-1, note=None)" in message
    assert "200 output messages dead-lettered" in message

    dead = query(db, "SELECT id, msg_type, payload, error FROM dead_letters ORDER BY id")
    assert len(dead) == 200
    first_id, msg_type, payload, error = dead[0]
    assert msg_type.endswith("_bulk.Row") and json.loads(payload)["n"] == 37
    assert "this Row (output 38 of 200) was rejected by handler save_rows" in error
    assert "CHECK constraint failed" in error
    others = dead[1:]
    assert all(f"(dead letter {first_id})" in d[3] for d in others)
    assert sorted(json.loads(d[2])["n"] for d in others if d[1].endswith("Row")) == [
        n for n in range(100) if n != 37
    ]
    assert sum(1 for d in others if d[1].endswith("Pair")) == 100


@pytest.mark.parametrize("executor", EXECUTORS)
def test_emit_many_over_max_outputs_fails_the_task_and_holds_nothing(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    db = tmp_path / "limit.db"
    pipe = _bulk.make_pipe(db, make_executor(executor))
    pipe.map(_bulk.too_many, [("fits", 50, -1), ("huge", 51, -1)])
    result = pipe.run(progress=False)

    assert result.counts == {"done": 1, "error": 1}
    (message,) = query(db, "SELECT message FROM task_runs WHERE task_key LIKE '%huge%'")[0]
    assert message.startswith(f"{OutputLimitError.__name__}: task")
    assert "max_outputs=50" in message
    assert query(db, "SELECT file, count(*) FROM rows GROUP BY file") == [("fits", 50)]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_streamed_bulk_task_reaches_the_writer_in_bounded_batches(
    tmp_path: Path, executor: str, make_executor: Any
) -> None:
    """5,000 rows through a queue of 32 messages and batches of 200: none is held whole."""
    db = tmp_path / "stream.db"
    _bulk.batch_sizes.clear()
    options = RunOptions(queue_size=32, batch_size=200)
    pipe = _bulk.make_pipe(db, make_executor(executor), options=options)
    pipe.map(_task("stream", executor), [("big", 5_000, -1)])
    result = pipe.run(progress=False)

    assert result.ok
    assert query(db, "SELECT count(*), count(DISTINCT n) FROM rows") == [(5_000, 5_000)]
    assert sum(_bulk.batch_sizes) == 5_000
    assert max(_bulk.batch_sizes) <= 200


@pytest.mark.parametrize(
    ("executor", "pad", "slack"),
    [("threads", 0, 4), ("async", 0, 4), ("processes", 2_000, 12)],
)
def test_rows_held_by_finished_tasks_pause_the_workers_when_the_writer_falls_behind(
    tmp_path: Path, executor: str, pad: int, slack: int, make_executor: Any
) -> None:
    """An atomic task's rows travel in its finish: the queue's bound counts them as rows.

    80 tasks of 200 rows each (16,000) against a slow handler and a queue of 1,000: rows
    made and not yet applied stay near the bound, plus what the two workers hold between
    emitting and queueing (on processes also the finishes in each child's pipe: rows of
    2,000 characters make one finish fill most of a pipe's buffer), instead of all 16,000
    waiting in memory.
    """
    produced = tmp_path / "produced.txt"
    produced.touch()
    _bulk.produced_file[:] = [str(produced)]
    _bulk.in_flight.clear()
    _bulk._applied[0] = 0
    db = tmp_path / "burst.db"
    options = RunOptions(queue_size=1_000)
    pipe = _bulk.make_pipe(db, make_executor(executor), workers=2, options=options)
    pipe.map(_task("burst", executor), [(i, 200, str(produced), pad) for i in range(80)])
    try:
        result = pipe.run(progress=False)
    finally:
        _bulk.produced_file.clear()

    assert result.ok and result.counts == {"done": 80}
    assert _bulk._applied[0] == 16_000
    assert max(_bulk.in_flight) <= 1_000 + slack * 200, _bulk.in_flight
