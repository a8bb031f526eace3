"""The bounded queue between workers and the writer, through its public methods only.

A worker's `TaskQueue` puts on the `MessageQueue`'s buffer directly (the hot path); these
tests check that it pauses and fails exactly as `MessageQueue.put` does.
"""

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeloom import MessageQueue, MsgTaskFinished, MsgTaskProgress, TaskQueue, WriterFailedError
from pipeloom.messages import utc_now
from pipeloom.queue import rows_of
from tests._harness import wait_for


def _put_in_thread(put: Any, errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            put(MsgTaskProgress(1, 1, 2))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("side", ["message_queue", "task_queue"])
def test_a_full_queue_pauses_the_worker_until_the_writer_drains(side: str) -> None:
    mq = MessageQueue(maxsize=4)
    for _ in range(3):
        mq.put(MsgTaskProgress(1, 1, 2))
    put = mq.put if side == "message_queue" else TaskQueue(mq).put
    errors: list[BaseException] = []
    worker = _put_in_thread(put, errors)  # the fourth message fills it: the worker pauses
    wait_for(lambda: mq.qsize() == 4, "the fourth message")
    assert worker.is_alive()
    while mq.qsize() > 2:  # the writer's drain: below the resume mark (half), then drained()
        mq.buffer.get_nowait()
    mq.drained()
    worker.join(10)
    assert not worker.is_alive() and not errors


@pytest.mark.parametrize("side", ["message_queue", "task_queue"])
def test_a_dead_writer_wakes_a_paused_worker_with_its_error(side: str) -> None:
    mq = MessageQueue(maxsize=2)
    mq.put(MsgTaskProgress(1, 1, 2))
    put = mq.put if side == "message_queue" else TaskQueue(mq).put
    errors: list[BaseException] = []
    worker = _put_in_thread(put, errors)
    wait_for(lambda: mq.qsize() == 2, "the second message")
    cause = OSError("disk full")
    mq.fail(cause)
    worker.join(10)
    assert not worker.is_alive()
    assert mq.failure is cause and mq.qsize() == 0
    # Woken after fail() emptied the queue, the pause ends without raising; the next put does.
    assert all(type(e) is WriterFailedError for e in errors)
    with pytest.raises(WriterFailedError, match="disk full"):
        put(MsgTaskProgress(1, 2, 2))


@given(
    outputs=st.lists(
        st.one_of(st.integers(0, 50), st.just(-1)),  # -1: a finish whose outputs are not rows
        max_size=30,
    ),
    through_task_queue=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_a_finish_weighs_its_rows_until_the_writer_applied_them(
    outputs: list[int], through_task_queue: bool
) -> None:
    """What puts add, the writer's `rows_applied` takes off: never a row lost or left over."""
    mq = MessageQueue(maxsize=100_000)
    put = TaskQueue(mq).put if through_task_queue else mq.put
    for task_id, n in enumerate(outputs, 1):
        held: Any = None if n < 0 else [MsgTaskProgress(task_id, i, n) for i in range(n)]
        put(MsgTaskFinished(task_id, "done", utc_now(), outputs=held or ()))
    expected = sum(max(n, 0) for n in outputs)
    assert mq.rows == expected
    taken = 0
    while not mq.empty():
        taken += rows_of(mq.get_nowait())
    assert taken == expected
    mq.rows_applied(taken)
    assert mq.rows == 0


def test_rows_in_a_finish_pause_the_worker_until_they_are_applied() -> None:
    """One message, 10 rows: over a bound of 8 the worker waits for the writer's apply."""
    mq = MessageQueue(maxsize=8)
    errors: list[BaseException] = []
    rows = [MsgTaskProgress(1, i, 10) for i in range(10)]

    def run() -> None:
        try:
            TaskQueue(mq).put(MsgTaskFinished(1, "done", utc_now(), outputs=rows))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    wait_for(lambda: mq.qsize() == 1, "the finish on the queue")
    taken = mq.get_nowait()  # the writer took it: its rows still weigh while it applies them
    mq.drained()
    assert worker.is_alive() and mq.rows == 10
    mq.rows_applied(rows_of(taken))
    worker.join(5)
    assert not worker.is_alive() and not errors
