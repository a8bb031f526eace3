import json
import queue
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.progress import Progress

from pipeloom import (
    SENTINEL,
    AppliedBatch,
    MessageQueue,
    MsgRunFinished,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    Pipeline,
    PipelineError,
    SQLiteWriter,
    TaskDef,
    run_pipeline,
    utc_now,
)
from tests._harness import query, scratch_dir


@dataclass(frozen=True, slots=True)
class MsgUpsertUser:
    user_id: int
    email: str


@dataclass(frozen=True, slots=True)
class MsgNoHandler:
    value: int


def users_schema(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")


def run_writer(db: Path | str, messages: list[Any], **kwargs: Any) -> SQLiteWriter:
    """Queue everything before the writer starts, so it sees one deterministic batch."""
    q = MessageQueue()
    for msg in messages:
        q.put(msg)
    q.put_nowait(SENTINEL)
    writer = SQLiteWriter(db, q, **kwargs)
    writer.start()
    writer.join(30)
    assert not writer.is_alive()
    writer.raise_if_failed()
    return writer


def test_custom_message_handler_receives_batches_and_upserts(tmp_path: Path) -> None:
    db = tmp_path / "users.db"
    batches: list[int] = []

    def upsert(conn: sqlite3.Connection, msgs: list[MsgUpsertUser]) -> None:
        batches.append(len(msgs))
        conn.executemany(
            "INSERT INTO users (id, email) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET email = excluded.email",
            [(m.user_id, m.email) for m in msgs],
        )

    messages: list[Any] = [MsgUpsertUser(i, f"u{i}@old") for i in range(50)]
    messages.append(MsgUpsertUser(7, "u7@new"))
    run_writer(db, messages, handlers={MsgUpsertUser: upsert}, schema=users_schema)
    assert query(db, "SELECT count(*) FROM users") == [(50,)]
    assert query(db, "SELECT email FROM users WHERE id = 7") == [("u7@new",)]
    assert max(batches) > 1
    assert sum(batches) == 51


def test_decorator_registration_on_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "deco.db"
    q = MessageQueue()
    writer = SQLiteWriter(db, q, schema=users_schema)

    @writer.handler(MsgUpsertUser)
    def upsert(conn: sqlite3.Connection, msgs: list[MsgUpsertUser]) -> None:
        conn.executemany("INSERT INTO users VALUES (?, ?)", [(m.user_id, m.email) for m in msgs])

    q.put(MsgUpsertUser(1, "a@b"))
    q.put_nowait(SENTINEL)
    writer.start()
    writer.join(30)
    assert query(db, "SELECT * FROM users") == [(1, "a@b")]


def test_handlers_through_run_pipeline_with_a_schema_callable(tmp_path: Path) -> None:
    db = tmp_path / "users.db"

    def upsert(conn: sqlite3.Connection, msgs: list[MsgUpsertUser]) -> None:
        conn.executemany(
            "INSERT INTO users (id, email) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET email = excluded.email",
            [(m.user_id, m.email) for m in msgs],
        )

    def worker(task: TaskDef, msg_q: Any) -> None:
        for i in range(10):
            msg_q.put(MsgUpsertUser(task.task_id * 100 + i, f"user{i}"))
        msg_q.put(MsgUpsertUser(task.task_id * 100, "updated"))

    result = run_pipeline(
        [TaskDef(i, f"page-{i}") for i in range(1, 6)],
        db,
        workers=2,
        worker_fn=worker,
        handlers={MsgUpsertUser: upsert},
        schema=users_schema,
        progress=False,
    )
    assert result.counts == {"done": 5}
    assert query(db, "SELECT count(*) FROM users") == [(50,)]
    assert query(db, "SELECT DISTINCT email FROM users WHERE id % 100 = 0") == [("updated",)]


def test_handler_rejecting_one_message_keeps_the_other_99(tmp_path: Path) -> None:
    db = tmp_path / "dl.db"

    def strict(conn: sqlite3.Connection, msgs: list[MsgUpsertUser]) -> None:
        for m in msgs:
            if "@" not in m.email:
                raise ValueError(f"invalid email {m.email!r}")
        conn.executemany("INSERT INTO users VALUES (?, ?)", [(m.user_id, m.email) for m in msgs])

    messages = [MsgUpsertUser(i, f"u{i}@x" if i != 42 else "broken") for i in range(100)]
    writer = run_writer(db, messages, handlers={MsgUpsertUser: strict}, schema=users_schema)
    assert query(db, "SELECT count(*) FROM users") == [(99,)]
    assert query(db, "SELECT count(*) FROM users WHERE id = 42") == [(0,)]
    dead = query(db, "SELECT run_id, msg_type, payload, error FROM dead_letters")
    assert len(dead) == 1
    run_id, msg_type, payload, error = dead[0]
    assert run_id == writer.run_id
    assert msg_type.endswith("MsgUpsertUser")
    assert json.loads(payload) == {"user_id": 42, "email": "broken"}
    assert error == "ValueError: invalid email 'broken'"
    assert writer.messages_applied == 99
    assert writer.messages_dead == 1


def test_unknown_message_type_is_dead_lettered_not_fatal(tmp_path: Path) -> None:
    db = tmp_path / "unknown.db"
    messages: list[Any] = [
        MsgNoHandler(1),
        MsgTaskStarted(1, "still works", utc_now()),
        MsgTaskFinished(1, "done", utc_now()),
    ]
    writer = run_writer(db, messages)
    assert query(db, "SELECT status FROM task_runs") == [("done",)]
    (error,) = query(db, "SELECT error FROM dead_letters")[0]
    assert "no handler registered" in error and "MsgNoHandler" in error
    assert writer.messages_dead == 1


def test_progress_updates_of_one_task_are_folded_to_the_latest(tmp_path: Path) -> None:
    db = tmp_path / "fold.db"
    applied: list[AppliedBatch] = []
    messages: list[Any] = [MsgTaskStarted(1, "folded", utc_now())]
    messages += [MsgTaskProgress(1, step, 10, f"s{step}") for step in range(1, 8)]
    run_writer(db, messages, listeners=[applied.append])
    # Its step and total stay; the run ended without its finish, so it is not left "running".
    assert query(db, "SELECT status, step, total, progress FROM task_runs") == [
        ("interrupted", 7, 10, 0.7)
    ]
    assert applied[0].progress == {1: (7, 10, "s7")}
    assert applied[0].started == [(1, "folded")]
    assert applied[0].messages == 8


def test_seed_style_writer_with_plain_queue_and_rich_bars(tmp_path: Path) -> None:
    db = tmp_path / "seed.db"
    q: queue.Queue[Any] = queue.Queue()
    progress = Progress(auto_refresh=False, disable=True)
    bar = progress.add_task("task 1", total=4)
    writer = SQLiteWriter(db, q, task_progress=progress, task_bar_map={1: bar})
    writer.start()
    q.put(MsgTaskStarted(1, "one", utc_now()))
    q.put(MsgTaskProgress(1, 2, 4))
    q.put(MsgTaskFinished(1, "done", utc_now()))
    q.put(SENTINEL)
    writer.join(30)
    assert query(db, "SELECT status, progress FROM task_runs") == [("done", 1.0)]
    assert progress.tasks[0].completed == 4


lifecycle = st.one_of(
    st.builds(MsgTaskStarted, st.integers(1, 5), st.text(max_size=5), st.just(utc_now())),
    st.builds(
        MsgTaskProgress,
        st.integers(1, 5),
        st.integers(-5, 20),
        st.integers(-5, 20),
        st.text(max_size=5),
    ),
    st.builds(
        MsgTaskFinished,
        st.integers(1, 5),
        st.sampled_from(["done", "error", "cancelled"]),
        st.just(utc_now()),
    ),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(lifecycle, max_size=30))
def test_any_lifecycle_sequence_leaves_consistent_rows(messages: list[Any]) -> None:
    with scratch_dir() as tmp:
        db = Path(tmp) / "h.db"
        writer = run_writer(db, messages)
        stored = {
            task_id: (status, progress)
            for task_id, status, progress in query(
                db, "SELECT task_id, status, progress FROM task_runs"
            )
        }
    assert writer.messages_applied + writer.messages_dead == len(messages)
    assert writer.messages_dead == 0
    expected: dict[int, str] = {}
    for msg in messages:
        if isinstance(msg, MsgTaskFinished):
            expected.setdefault(msg.task_id, msg.status)  # the first finish stands
    for task_id, (status, progress) in stored.items():
        # A task whose finish never came is closed "interrupted" when the writer ends.
        assert status == expected.get(task_id, "interrupted")
        assert 0.0 <= progress <= 1.0
        if status == "done":
            assert progress == 1.0
    assert set(stored) == {m.task_id for m in messages}


def test_no_handler_may_take_over_pipeloom_own_messages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MsgTaskFinished is handled by pipeloom itself"):
        SQLiteWriter(tmp_path / "w.db", MessageQueue(), handlers={MsgTaskFinished: print})
    writer = SQLiteWriter(tmp_path / "w.db", MessageQueue())
    with pytest.raises(ValueError, match="MsgTaskStarted"):
        writer.handler(MsgTaskStarted)(print)
    pipe = Pipeline("p", db=tmp_path / "p.db")
    with pytest.raises(PipelineError, match="MsgRunFinished is handled by pipeloom itself"):
        pipe.register(MsgRunFinished, print)
    assert writer.handlers == {} and pipe.handlers == {}


def test_the_writer_takes_the_same_options_object_a_pipeline_does(tmp_path: Path) -> None:
    from pipeloom import MsgTaskLog, RunOptions

    db = tmp_path / "opts.db"
    seen: list[int] = []
    options = RunOptions(
        lease=9.0, task_log_limit=1, listeners=(lambda applied: seen.append(applied.messages),)
    )
    messages: list[Any] = [
        MsgTaskStarted(1, "a", utc_now()),
        MsgTaskLog(1, "kept"),
        MsgTaskLog(1, "dropped"),
        MsgTaskFinished(1, "done", utc_now()),
    ]
    writer = run_writer(db, messages, options=options)
    assert writer.lease == 9.0 and writer.batch_size == 5_000
    assert query(db, "SELECT lease_s FROM pipeline_runs") == [(9.0,)]
    assert query(db, "SELECT message, dropped FROM task_logs ORDER BY id")[0] == ("kept", 0)
    assert query(db, "SELECT sum(dropped) FROM task_logs") == [(1,)]
    assert seen == [4]  # its listener was called with the one batch
    with pytest.raises(TypeError, match="lease both as keyword"):
        SQLiteWriter(db, MessageQueue(), lease=3.0, options=options)


def test_without_tables_a_repeated_finish_counts_its_task_once(tmp_path: Path) -> None:
    """The counts a run without pipeloom's tables is judged by: one per task, as with rows."""
    messages: list[Any] = [
        MsgTaskFinished(1, "error", utc_now(), message="boom"),
        MsgTaskFinished(1, "error", utc_now(), message="boom again"),  # its own batch
        MsgTaskFinished(2, "done", utc_now()),
    ]
    writer = run_writer(tmp_path / "bare.db", messages, store_task_status=False, batch_size=1)
    assert writer.status_counts == {"error": 1, "done": 1}
    assert writer.failed_task_ids == [1]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("lease", float("nan")),
        ("lease", 0),
        ("batch_size", 0),
        ("task_log_limit", -1),
        ("commit_interval", float("inf")),
        ("synchronous", "SOMETIMES"),
    ],
)
def test_a_writer_refuses_a_setting_no_run_could_use_as_run_pipeline_does(
    tmp_path: Path, setting: str, value: Any
) -> None:
    """SQLiteWriter's keywords go through the same check as RunOptions and run_pipeline."""
    from pipeloom.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=rf"SQLiteWriter\({setting}="):
        SQLiteWriter(tmp_path / "w.db", MessageQueue(), **{setting: value})
    assert not (tmp_path / "w.db").exists()


@given(kinds=st.lists(st.sampled_from(["user", "nohandler"]), min_size=1, max_size=60))
@settings(max_examples=40, deadline=None)
def test_a_batch_of_rows_is_applied_in_order_whatever_its_mix_of_types(kinds: list[str]) -> None:
    # One type alone takes the writer's fast path (the batch's list as it is); a mix goes
    # message by message. Either way: every handled row in the order sent, every other
    # one dead-lettered.
    got: list[int] = []

    def record(conn: sqlite3.Connection, msgs: list[MsgUpsertUser]) -> None:
        got.extend(m.user_id for m in msgs)

    messages: list[Any] = [
        MsgUpsertUser(i, f"u{i}@x") if kind == "user" else MsgNoHandler(i)
        for i, kind in enumerate(kinds)
    ]
    with scratch_dir() as tmp:
        db = Path(tmp) / "mix.db"
        run_writer(db, messages, handlers={MsgUpsertUser: record})
        dead = [json.loads(p)["value"] for (p,) in query(db, "SELECT payload FROM dead_letters")]
    assert got == [i for i, kind in enumerate(kinds) if kind == "user"]
    assert sorted(dead) == [i for i, kind in enumerate(kinds) if kind == "nohandler"]
