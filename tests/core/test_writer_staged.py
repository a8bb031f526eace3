"""The writer's fast paths (deferred progress, bulk writes) change no stored value."""

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import pipeloom.record._batch as batch_module
import pipeloom.record._fold as fold_module
import pipeloom.record._task_sql as task_sql
from pipeloom import (
    SENTINEL,
    DatabaseError,
    MessageQueue,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    SQLiteWriter,
    run_pipeline,
)
from tests._harness import query, scratch_dir

COLUMNS = (
    "task_id, task_key, name, status, progress, step, total, message, started_at, "
    "finished_at, result, error, attempt, stage, upstream_stage, upstream_task_id"
)
TIMES = st.sampled_from(["2026-01-01T00:00:00.000+00:00", "2026-01-01T00:00:01.000+00:00"])
IDS = st.integers(1, 30)
ATTEMPTS = st.integers(1, 3)
TEXT = st.text(alphabet="abc", max_size=3)

STAGES = st.one_of(st.none(), st.just("parse"))
messages = st.one_of(
    st.builds(
        MsgTaskStarted, IDS, TEXT, TIMES, ATTEMPTS, st.one_of(st.none(), st.just("k")), STAGES
    ),
    st.builds(MsgTaskProgress, IDS, st.integers(-2, 12), st.integers(-1, 10), TEXT),
    st.builds(
        MsgTaskFinished,
        IDS,
        st.sampled_from(["done", "error", "cancelled", "timeout"]),
        TIMES,
        st.one_of(st.none(), TEXT),
        TEXT,
        st.one_of(st.none(), TEXT),
        ATTEMPTS,
        st.one_of(st.none(), TEXT),
        stage=STAGES,
        upstream_stage=STAGES,
        upstream_task_id=st.one_of(st.none(), IDS),
    ),
)


def write(db: Path, msgs: list[Any], batch_size: int) -> list[tuple[Any, ...]]:
    q = MessageQueue(len(msgs) + 10)
    for msg in msgs:
        q.put_nowait(msg)
    q.put_nowait(SENTINEL)
    writer = SQLiteWriter(db, q, batch_size=batch_size)
    writer.start()
    writer.join(60)
    assert writer.error is None
    stored = query(db, f"SELECT {COLUMNS} FROM task_runs ORDER BY task_id")
    # A task left without a finish is closed as interrupted at the writer's end, stamped with
    # that moment: the clock, not the fold, so it is left out of the comparison.
    finished_at = COLUMNS.split(", ").index("finished_at")
    return [
        (*r[:finished_at], None, *r[finished_at + 1 :]) if r[3] == "interrupted" else r
        for r in stored
    ]


def _row_by_row(conn: sqlite3.Connection, run_id: int | None, fold: Any) -> None:
    """The reference: the same merge rules, one plain upsert statement per row."""
    sql = task_sql._upsert(lambda column: f":{column}", ":run_id")
    for task_id, row in fold.rows.items():
        conn.execute(
            sql, dict(zip(COLUMNS.split(", "), (task_id, *row), strict=True), run_id=run_id)
        )


# No shrinking: each example runs three writers, and shrinking a failure would take minutes.
@settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.lists(messages, min_size=60, max_size=250), st.sampled_from([40, 100, 1000]))
def test_bulk_rows_equal_row_by_row_upserts(msgs: list[Any], batch_size: int) -> None:
    """Padded multi-row statements (inserts of new rows, the inbox trigger's upserts) store
    what one upsert per row stores."""
    with scratch_dir() as tmp:
        default = write(Path(tmp) / "default.db", msgs, batch_size)  # new rows inserted
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(task_sql, "_NEW_ROWS", False)
            upserted = write(Path(tmp) / "upserted.db", msgs, batch_size)
            mp.setattr(batch_module, "upsert_tasks", _row_by_row)
            plain = write(Path(tmp) / "plain.db", msgs, batch_size)
    assert upserted == plain
    assert default == plain


def test_a_big_batch_of_whole_tasks_is_stored(tmp_path: Path) -> None:
    msgs: list[Any] = []
    for i in range(1, 301):
        msgs.append(MsgTaskStarted(i, f"t{i}", "2026-01-01T00:00:00.000+00:00"))
        msgs.append(MsgTaskProgress(i, 1, 2, "half"))
        msgs.append(MsgTaskFinished(i, "done", "2026-01-01T00:00:01.000+00:00", result="ok"))
    stored = write(tmp_path / "big.db", msgs, 5000)
    assert len(stored) == 300
    assert {(r[3], r[4], r[5], r[6], r[7], r[10]) for r in stored} == {
        ("done", 1.0, 1, 2, "half", "ok")
    }
    assert [r[0] for r in stored] == list(range(1, 301))


@pytest.mark.parametrize("tasks", [1, 7, 9, 513, 2041, 4100])
def test_statements_padded_to_a_fixed_size_store_exactly_the_batch(
    tmp_path: Path, tasks: int
) -> None:
    """A batch is written in a few fixed-size statements padded with empty rows; the padding
    never becomes a row, and every row arrives, new (inserted) or begun earlier (upserted)."""
    half = "2026-01-01T00:00:00.000+00:00"
    msgs: list[Any] = [MsgTaskStarted(i, f"t{i}", half) for i in range(1, tasks + 1)]
    msgs += [
        MsgTaskFinished(i, "done", "2026-01-01T00:00:01.000+00:00", result=f"r{i}")
        for i in range(1, tasks + 1)
    ]
    # One batch holds every start (inserted), the next every finish (upserted).
    stored = write(tmp_path / "padded.db", msgs, tasks)
    assert [(r[0], r[3], r[10]) for r in stored] == [
        (i, "done", f"r{i}") for i in range(1, tasks + 1)
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=120))
def test_deferred_progress_folds_like_applying_each_message_at_once(msgs: list[Any]) -> None:
    batched = fold_module._Fold()
    one_by_one = fold_module._Fold()
    batched.add_all(msgs)
    for msg in msgs:
        one_by_one.add_all([msg])  # flushes its progress at once: the eager order
    assert batched.rows == one_by_one.rows
    assert list(batched.rows) == list(one_by_one.rows)
    assert batched.applied == one_by_one.applied
    assert list(batched.applied.progress) == list(one_by_one.applied.progress)


class _Id(int):
    """An int-like task id: the fold's inline paths leave it to the general methods."""


ODD_TEXT = st.text(alphabet="ab\u00e9\ud800", max_size=3)
odd_messages = st.one_of(
    messages,
    st.builds(MsgTaskStarted, IDS, ODD_TEXT, TIMES, ATTEMPTS, stage=STAGES),
    st.builds(MsgTaskProgress, IDS, st.integers(-2, 12), st.integers(-1, 10), ODD_TEXT),
    st.builds(
        MsgTaskFinished,
        IDS,
        st.sampled_from(["done", "error", "skipped", "interrupted"]),
        TIMES,
        st.one_of(st.none(), ODD_TEXT),
        st.one_of(st.just(""), st.none(), ODD_TEXT),
        stage=STAGES,
        upstream_stage=STAGES,
        upstream_task_id=st.one_of(st.none(), IDS),
    ),
)


def _general(msg: Any) -> Any:
    fields = {f: getattr(msg, f) for f in msg.__slots__}
    return type(msg)(**{**fields, "task_id": _Id(msg.task_id)})


@settings(max_examples=300, deadline=None)
@given(st.lists(odd_messages, max_size=120))
def test_inline_fold_equals_the_general_rules(msgs: list[Any]) -> None:
    fast = fold_module._Fold()
    general = fold_module._Fold()
    fast.add_all(msgs)
    general.add_all([_general(m) for m in msgs])
    assert fast.rows == general.rows
    assert list(fast.rows) == list(general.rows)
    assert fast.applied == general.applied


def test_a_writer_that_cannot_prepare_its_statements_names_sqlite_and_leaves_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where SQLite is too old for the task SQL, the run fails at once with the reason, and the
    file stays writable for the next writer."""
    db = tmp_path / "old.db"
    monkeypatch.setattr(task_sql, "_CREATE_INBOX", ("CREATE TEMP TRIGGER broken",))
    with pytest.raises(DatabaseError, match=r"old\.db: SQLite [\d.]+ cannot prepare") as info:
        run_pipeline([1, 2], db, worker_fn=lambda task, q: None, progress=False)
    assert "3.24 or newer" in str(info.value)
    monkeypatch.undo()
    assert run_pipeline([1, 2], db, worker_fn=lambda task, q: None, progress=False).ok
