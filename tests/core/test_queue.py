"""The bounded queue between workers and the writer, through its public methods only.

A worker's `TaskQueue` puts on the `MessageQueue`'s buffer directly (the hot path); these
tests check that it pauses and fails exactly as `MessageQueue.put` does.
"""

import threading
from typing import Any

import pytest

from pipeloom import MessageQueue, MsgTaskProgress, TaskQueue, WriterFailedError
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
