"""No message a worker sends can stop the writer: odd objects are dead-lettered, never fatal.

Anything that is not SENTINEL and not one of pipeloom's own messages is a user message; with
no handler registered it goes to ``dead_letters`` with its type and a readable payload, even
when its ``__eq__``, ``__hash__``, ``__repr__``, ``__str__`` or ``__class__`` raise. Lifecycle
messages carrying such objects as text keep their task's row.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeloom import (
    SENTINEL,
    MessageQueue,
    MsgRunFinished,
    MsgTaskFinished,
    MsgTaskStarted,
    SQLiteWriter,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)
from tests._harness import query, scratch_dir


class Boom(Exception):
    """Raised by every hostile dunder below."""


class RaisingEq:
    def __eq__(self, other: object) -> bool:
        raise Boom("eq")

    def __hash__(self) -> int:
        raise Boom("hash")


class RaisingRepr:
    def __repr__(self) -> str:
        raise Boom("repr")

    def __str__(self) -> str:
        raise Boom("str")


class RaisingClass:
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise Boom("class")


class RaisingBool:
    def __bool__(self) -> bool:
        raise Boom("bool")

    def __str__(self) -> str:
        return "truthless"


class HostileMeta(type):
    def __hash__(cls) -> int:
        raise Boom("metaclass hash")

    def __eq__(cls, other: object) -> bool:
        raise Boom("metaclass eq")


class FromHostileMeta(metaclass=HostileMeta):
    """Its class cannot be used as a dict key."""


@dataclass(frozen=True)
class Holder:
    """A dataclass message whose field cannot be turned into JSON or repr."""

    inner: Any


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise Boom("exception str")


ODD: list[Any] = [
    None,
    42,
    "text",
    b"\xff",
    [1, 2],
    {"a": 1},
    "sur\udcffrogate",
    RaisingEq(),
    RaisingRepr(),
    RaisingClass(),
    RaisingBool(),
    FromHostileMeta(),
    Holder(RaisingRepr()),
    Holder("sur\udcffrogate"),
    UnprintableError(),
    MsgRunFinished(RaisingEq()),  # type: ignore[arg-type]
    TaskDef(1, RaisingRepr()),  # type: ignore[arg-type]
]


def _write(msgs: list[Any], db: Path, batch_size: int = 5_000) -> SQLiteWriter:
    q = MessageQueue()
    writer = SQLiteWriter(db, q, batch_size=batch_size, commit_interval=0.001)
    for msg in msgs:
        q.put(msg)
    q.put(SENTINEL)
    writer.start()
    writer.join(timeout=30)
    assert not writer.is_alive()
    return writer


def _lifecycle_with_odd_text(task_id: int) -> list[Any]:
    return [
        MsgTaskStarted(task_id, RaisingRepr(), utc_now(), key=RaisingBool()),  # type: ignore[arg-type]
        MsgTaskFinished(
            task_id,
            "error",
            utc_now(),
            result=RaisingRepr(),  # type: ignore[arg-type]
            message=RaisingBool(),  # type: ignore[arg-type]
            error=UnprintableError(),  # type: ignore[arg-type]
        ),
    ]


def test_odd_objects_are_dead_lettered_and_rows_kept(tmp_path: Path) -> None:
    db = tmp_path / "odd.db"
    msgs = [*ODD, *_lifecycle_with_odd_text(7)]
    writer = _write(msgs, db)
    assert writer.error is None, writer.error
    assert (writer.messages_applied, writer.messages_dead) == (2, len(ODD))
    dead = query(db, "SELECT msg_type, payload, error FROM dead_letters ORDER BY id")
    assert len(dead) == len(ODD)
    for msg_type, payload, error in dead:
        assert msg_type and payload and error
    types = [d[0] for d in dead]
    assert f"{__name__}.RaisingClass" in types
    assert any("unrepresentable" in d[1] for d in dead)
    ((name, key, status, result, message, error),) = query(
        db, "SELECT name, task_key, status, result, message, error FROM task_runs"
    )
    assert name.startswith("<unprintable RaisingRepr")
    assert (key, status, message) == ("truthless", "error", "truthless")
    assert result.startswith("<unrepresentable RaisingRepr")
    assert error.startswith("<unprintable UnprintableError")
    assert query(db, "SELECT status FROM pipeline_runs") == [("error",)], "the run ended"


def test_odd_objects_through_run_pipeline_do_not_stop_the_run(tmp_path: Path) -> None:
    # A worker's queue looks at type(msg) only, so every one of them goes through it.
    sendable = list(ODD)

    def worker(task: TaskDef, q: TaskQueue) -> None:
        q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
        for msg in sendable:
            q.put(msg)
        q.put(MsgTaskFinished(task.task_id, "done", utc_now()))

    db = tmp_path / "engine.db"
    tasks = [TaskDef(i, f"t{i}") for i in range(1, 6)]
    result = run_pipeline(tasks, db, worker_fn=worker, workers=2, progress=False)
    assert result.counts == {"done": 5}
    assert result.dead_letters == 5 * len(sendable)


@settings(
    max_examples=15,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    picks=st.lists(st.integers(0, len(ODD) - 1), max_size=12),  # indices: hypothesis hashes
    batch_size=st.integers(1, 8),
)
def test_any_mix_of_odd_objects_balances_the_books(picks: list[int], batch_size: int) -> None:
    msgs = [ODD[i] for i in picks]
    with scratch_dir() as tmp:
        db = Path(tmp) / "mix.db"
        writer = _write([*msgs, *_lifecycle_with_odd_text(1)], db, batch_size)
        assert writer.error is None, writer.error
        assert writer.messages_applied + writer.messages_dead == len(msgs) + 2
        conn = sqlite3.connect(db)
        try:
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            rows = conn.execute("SELECT status FROM task_runs").fetchall()
        finally:
            conn.close()
        assert dead == writer.messages_dead == len(msgs)
        assert rows == [("error",)]
