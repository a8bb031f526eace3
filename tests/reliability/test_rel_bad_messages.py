"""Bad messages, generated with hypothesis: the writer never crashes and the books balance.

Every message sent is either applied (possibly normalised) or dead-lettered with a reason:
``messages_applied + messages_dead == sent`` and the ``dead_letters`` table holds exactly the
dead ones. Normalisations (documented in docs/reliability.md) are checked one by one below.
"""

from __future__ import annotations

import math
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeloom import (
    SENTINEL,
    MessageQueue,
    MsgRunFinished,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    SQLiteWriter,
    TaskDef,
    TaskQueue,
    run_pipeline,
)
from tests._harness import scratch_dir

TERMINAL = ("done", "error", "cancelled", "timeout", "skipped", "interrupted")


class BigStr(str):
    """A 10 MB string with a short repr, so hypothesis can report examples holding it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BigStr(<10 MB>)"


BIG = BigStr("x" * 10_000_000)
LIMIT = 100_000 + 100  # MAX_PAYLOAD_CHARS plus the "[truncated ...]" note
TASK_IDS = range(-2, 7)

SETTINGS = settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Unknown:
    """A message type nobody registered a handler for."""

    text: str


class Unprintable:
    """An object whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


good_ids = st.sampled_from(list(TASK_IDS))
task_ids = st.one_of(
    good_ids,
    good_ids,
    st.text(max_size=3),
    st.floats(),
    st.none(),
    st.just(True),
    st.integers(min_value=2**63, max_value=2**70),
)
numbers = st.one_of(
    st.integers(-10, 20),
    st.just(0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.text(max_size=3),
    st.integers(min_value=2**63, max_value=2**70),
)
texts = st.one_of(
    st.text(max_size=20),
    st.just(BIG),
    st.none(),
    st.integers(),
    st.binary(max_size=5),
)
statuses = st.one_of(
    st.sampled_from(TERMINAL),
    st.sampled_from(TERMINAL),
    st.sampled_from(["running", "queued", "banana", ""]),
    st.none(),
    st.integers(),
)
results = st.one_of(
    st.none(),
    st.text(max_size=10),
    st.just(BIG),
    st.integers(),
    st.floats(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.floats(), max_size=3),
    st.sets(st.integers(), max_size=3),
    st.builds(object),
    st.binary(max_size=4),
    st.dictionaries(st.tuples(st.integers()), st.integers(), max_size=2),
)
attempts = st.one_of(st.just(1), st.just(1), st.none(), st.text(max_size=2), st.just(True))

started = st.builds(
    MsgTaskStarted, task_id=task_ids, name=texts, started_at=texts, attempt=attempts, key=texts
)
progress = st.builds(MsgTaskProgress, task_id=task_ids, step=numbers, total=numbers, message=texts)
finished = st.builds(
    MsgTaskFinished,
    task_id=task_ids,
    status=statuses,
    finished_at=texts,
    result=results,
    message=texts,
    error=texts,
    attempt=attempts,
    name=texts,
)
others = st.one_of(
    st.integers(),
    st.text(max_size=5),
    st.none(),
    st.builds(object),
    st.lists(st.integers(), max_size=3),
    st.builds(Unknown, st.one_of(st.text(max_size=5), st.just(BIG))),
    st.builds(Unprintable),
    st.builds(MsgRunFinished, statuses),
    st.builds(TaskDef, task_id=task_ids, name=texts),
)
messages = st.one_of(started, progress, finished, others)


def _valid_id(task_id: Any) -> bool:
    # A bool is an int to Python and to SQLite: True is task 1 (docs/reliability.md).
    return type(task_id) in (int, bool) and task_id in TASK_IDS


def _expected_finishes(msgs: list[Any]) -> dict[int, str]:
    """The first finish of each task that the writer can apply: it must win."""
    first: dict[int, str] = {}
    for msg in msgs:
        if (
            type(msg) is MsgTaskFinished
            and _valid_id(msg.task_id)
            and isinstance(msg.status, str)
            and msg.status in TERMINAL
        ):
            first.setdefault(int(msg.task_id), msg.status)
    return first


def _run_writer(msgs: list[Any], batch_size: int) -> tuple[SQLiteWriter, Path, Any]:
    tmp = scratch_dir()
    db = Path(tmp.name) / "bad.db"
    q = MessageQueue()
    writer = SQLiteWriter(db, q, batch_size=batch_size, commit_interval=0.001)
    writer.start()
    for msg in msgs:
        q.put(msg)
    q.put(SENTINEL)
    writer.join(timeout=60)
    return writer, db, tmp


# 120 examples in all, as three derandomized shards of 40 (each shard's examples come from
# its own name), so parallel test workers share them.
SHARD = settings(SETTINGS, max_examples=40)


@SHARD
@given(msgs=st.lists(messages, max_size=30), batch_size=st.integers(1, 40))
def test_writer_never_crashes_and_books_balance(msgs: list[Any], batch_size: int) -> None:
    _never_crashes_and_books_balance(msgs, batch_size)


@SHARD
@given(msgs=st.lists(messages, max_size=30), batch_size=st.integers(1, 40))
def test_writer_never_crashes_and_books_balance_shard_2(msgs: list[Any], batch_size: int) -> None:
    _never_crashes_and_books_balance(msgs, batch_size)


@SHARD
@given(msgs=st.lists(messages, max_size=30), batch_size=st.integers(1, 40))
def test_writer_never_crashes_and_books_balance_shard_3(msgs: list[Any], batch_size: int) -> None:
    _never_crashes_and_books_balance(msgs, batch_size)


def _never_crashes_and_books_balance(msgs: list[Any], batch_size: int) -> None:
    writer, db, tmp = _run_writer(msgs, batch_size)
    with tmp:
        assert not writer.is_alive(), "the writer finished"
        assert writer.error is None, writer.error
        assert writer.messages_applied + writer.messages_dead == len(msgs)
        conn = sqlite3.connect(db)
        try:
            dead = conn.execute("SELECT msg_type, payload, error FROM dead_letters").fetchall()
            assert len(dead) == writer.messages_dead
            for msg_type, payload, error in dead:
                assert msg_type and error, "every dead letter names its type and reason"
                assert len(payload) <= LIMIT
            rows = conn.execute(
                "SELECT task_id, status, progress, name, message, result, error, started_at, "
                "finished_at FROM task_runs"
            ).fetchall()
            run_status = conn.execute("SELECT status FROM pipeline_runs").fetchone()[0]
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
    assert run_status in ("done", "error", "cancelled", "interrupted")
    expected = _expected_finishes(msgs)
    for task_id, status, prog, *text in rows:
        assert 0.0 <= prog <= 1.0 and math.isfinite(prog)
        assert all(value is None or len(value) <= LIMIT for value in text)
        # The first finish wins; no later start, progress or finish reopens or changes it.
        # A task whose finish never arrived (or was dead-lettered) is closed "interrupted"
        # when the writer ends: a finished run holds no running task.
        assert status == expected.get(task_id, "interrupted"), (task_id, msgs)
    assert {r[0] for r in rows} >= expected.keys()


@pytest.mark.parametrize(
    ("msgs", "check"),
    [
        # step > total clamps to 1.0; negative clamps to 0.0
        ([MsgTaskProgress(1, 7, 4)], lambda r: r["progress"] == 1.0 and r["step"] == 7),
        ([MsgTaskProgress(1, -3, 4)], lambda r: r["progress"] == 0.0),
        # total = 0, NaN, inf: progress keeps its previous value
        (
            [MsgTaskProgress(1, 1, 4), MsgTaskProgress(1, 1, 0)],
            lambda r: r["progress"] == 0.25,
        ),
        (
            [MsgTaskProgress(1, 2, 4), MsgTaskProgress(1, math.nan, 4)],  # type: ignore[arg-type]
            lambda r: r["progress"] == 0.5,
        ),
        (
            [MsgTaskProgress(1, 3, 4), MsgTaskProgress(1, 1, math.inf)],  # type: ignore[arg-type]
            lambda r: r["progress"] == 0.0,  # step / inf is 0
        ),
        (
            [MsgTaskProgress(1, math.inf, 4)],  # type: ignore[arg-type]
            lambda r: r["progress"] == 0.0 and r["step"] is None,  # not finite: unchanged
        ),
        # progress after a finish is ignored
        (
            [MsgTaskFinished(1, "done", "t"), MsgTaskProgress(1, 1, 4, "late")],
            lambda r: r["progress"] == 1.0 and r["message"] is None,
        ),
        # finished before started: the late start does not reopen the task
        (
            [MsgTaskFinished(1, "done", "t1"), MsgTaskStarted(1, "late", "t0")],
            lambda r: r["status"] == "done" and r["finished_at"] == "t1",
        ),
        # duplicate finished: the first one stands
        (
            [MsgTaskFinished(1, "error", "t1"), MsgTaskFinished(1, "done", "t2")],
            lambda r: r["status"] == "error" and r["finished_at"] == "t1",
        ),
        # results that are not strings are stored as JSON, or as repr when not JSON-able
        (
            [MsgTaskFinished(1, "done", "t", result={"a": [1, 2]})],  # type: ignore[arg-type]
            lambda r: r["result"] == '{"a": [1, 2]}',
        ),
        ([MsgTaskFinished(1, "done", "t", result=42)], lambda r: r["result"] == "42"),  # type: ignore[arg-type]
        ([MsgTaskFinished(1, "done", "t", result={3})], lambda r: r["result"] == "{3}"),  # type: ignore[arg-type]
        # 10 MB texts are cut to 100,000 characters with a note
        (
            [MsgTaskFinished(1, "done", "t", result=BIG, message=BIG, error=BIG)],
            lambda r: all(
                len(r[c]) < LIMIT and "truncated" in r[c] for c in ("result", "message", "error")
            ),
        ),
        (
            [MsgTaskStarted(1, BIG, "t"), MsgTaskProgress(1, 1, 2, BIG)],
            lambda r: len(r["name"]) < LIMIT and len(r["message"]) < LIMIT,
        ),
        # a task the engine never scheduled still gets a readable row
        ([MsgTaskFinished(99, "done", "t")], lambda r: r["name"] == "task 99"),
    ],
)
def test_normalisations(msgs: list[Any], check: Callable[[dict[str, Any]], bool]) -> None:
    writer, db, tmp = _run_writer(msgs, batch_size=1)
    with tmp:
        assert writer.error is None
        assert writer.messages_dead == 0, "normalised, not dead-lettered"
        conn = sqlite3.connect(db)
        conn.row_factory = sqlite3.Row
        try:
            row = dict(conn.execute("SELECT * FROM task_runs").fetchone())
        finally:
            conn.close()
    assert check(row), row


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (MsgTaskProgress("7", 1, 2), "task_id must be an int"),  # type: ignore[arg-type]
        (MsgTaskFinished(1.5, "done", "t"), "task_id must be an int"),  # type: ignore[arg-type]
        (MsgTaskFinished(2**64, "done", "t"), "too large"),
        (MsgTaskFinished(1, "banana", "t"), "status 'banana' is not one of"),  # type: ignore[arg-type]
        (MsgTaskProgress(1, 2**64, 2**65), "too large"),
        (Unknown("?"), "no handler registered"),
        (42, "no handler registered"),
        (MsgRunFinished("banana"), "run status"),
    ],
)
def test_dead_letters_name_the_reason(msg: Any, reason: str) -> None:
    writer, db, tmp = _run_writer([msg], batch_size=1)
    with tmp:
        assert writer.error is None
        assert (writer.messages_applied, writer.messages_dead) == (0, 1)
        conn = sqlite3.connect(db)
        try:
            (error,) = conn.execute("SELECT error FROM dead_letters").fetchone()
        finally:
            conn.close()
    assert reason in error


@settings(SETTINGS, max_examples=15)
@given(per_task=st.lists(st.lists(messages, max_size=6), min_size=1, max_size=6))
def test_run_pipeline_books_balance_with_bad_messages(per_task: list[list[Any]]) -> None:
    """Through the engine: result.messages counts what workers sent plus the engine's own."""

    def worker(task: TaskDef, q: TaskQueue) -> None:
        for msg in per_task[task.task_id - 1]:
            q.put(msg)

    with scratch_dir() as tmp:
        db = Path(tmp) / "engine.db"
        tasks = [TaskDef(i, f"t{i}") for i in range(1, len(per_task) + 1)]
        result = run_pipeline(tasks, db, worker_fn=worker, workers=2, progress=False)
        sent = sum(len(m) for m in per_task)
        # The engine posts "done" for a task whose worker sent no MsgTaskFinished for it.
        own_finish = [
            any(type(x) is MsgTaskFinished and x.task_id == i for x in m)
            for i, m in enumerate(per_task, start=1)
        ]
        assert result.messages == sent + own_finish.count(False)
        conn = sqlite3.connect(db)
        try:
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            status = dict(conn.execute("SELECT task_id, status FROM task_runs").fetchall())
        finally:
            conn.close()
        assert result.dead_letters == dead
        # Every task the engine ran ends terminal, unless its own worker sent a finish for it
        # that the writer refused (that finish is then in dead_letters, with the reason).
        for task_id, has_own in enumerate(own_finish, start=1):
            if not has_own:
                assert status[task_id] in TERMINAL


@dataclass(frozen=True)
class MsgRow:
    """A user message whose handler refuses negative values."""

    value: int


def _insert_rows(conn: sqlite3.Connection, msgs: list[MsgRow]) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS user_rows (value INTEGER NOT NULL)")
    for msg in msgs:
        if msg.value < 0:
            raise ValueError(f"value {msg.value} is negative")
        conn.execute("INSERT INTO user_rows VALUES (?)", (msg.value,))


def test_a_rejected_message_costs_only_itself() -> None:
    """The handler's batch fails, is retried one by one, and only the bad one is dead."""
    msgs = [MsgRow(1), MsgRow(-2), MsgRow(3)]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "handler.db"
        q = MessageQueue()
        writer = SQLiteWriter(db, q, handlers={MsgRow: _insert_rows}, commit_interval=0.05)
        writer.start()
        for msg in msgs:
            q.put(msg)
        q.put(SENTINEL)
        writer.join(timeout=60)
        assert writer.error is None
        assert (writer.messages_applied, writer.messages_dead) == (2, 1)
        conn = sqlite3.connect(db)
        try:
            values = [v for (v,) in conn.execute("SELECT value FROM user_rows ORDER BY value")]
            dead = conn.execute("SELECT msg_type, payload, error FROM dead_letters").fetchall()
        finally:
            conn.close()
    assert values == [1, 3]
    assert len(dead) == 1
    msg_type, payload, error = dead[0]
    assert msg_type.endswith("MsgRow") and '"value": -2' in payload
    assert error == "ValueError: value -2 is negative"
