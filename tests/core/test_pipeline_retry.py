import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeloom import Context, Pipeline, TaskTimeoutError
from pipeloom.pipeline._retry import backoff_delay
from tests._harness import query


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Lets threads a test abandoned return once the test is over."""
    event = threading.Event()
    yield event
    event.set()


def test_fails_twice_then_succeeds_with_two_retries(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    calls: dict[int, int] = {}
    pipe = Pipeline("retry", db=db, workers=2, seed=7)

    @pipe.task(retries=2, backoff=0.001, retry_on=(OSError,))
    def fetch(ctx: Context, page: int) -> str:
        calls[page] = calls.get(page, 0) + 1
        if page == 3 and ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}: reset by peer")
        return f"page {page} on attempt {ctx.attempt}"

    pipe.map(fetch, [1, 2, 3])
    result = pipe.run(progress=False)

    assert result.ok
    assert calls == {1: 1, 2: 1, 3: 3}
    assert query(db, "SELECT status, attempt, result, error FROM task_runs WHERE task_id = 3") == [
        ("done", 3, "page 3 on attempt 3", None)
    ]
    attempts = query(
        db, "SELECT task_id, attempt, status, error FROM task_attempts ORDER BY attempt"
    )
    assert [(t, a, s) for t, a, s, _ in attempts] == [(3, 1, "error"), (3, 2, "error")]
    assert "ConnectionError: attempt 1: reset by peer" in attempts[0][3]
    assert "ConnectionError: attempt 2: reset by peer" in attempts[1][3]


def test_the_final_status_is_the_last_attempts(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    pipe = Pipeline("retry", db=db)

    @pipe.task(retries=1, backoff=0.001)
    def always(ctx: Context, n: int) -> None:
        raise ValueError(f"bad {n} on attempt {ctx.attempt}")

    pipe.map(always, [1])
    assert pipe.run(progress=False).counts == {"error": 1}
    assert query(db, "SELECT status, attempt, message FROM task_runs") == [
        ("error", 2, "ValueError: bad 1 on attempt 2")
    ]
    assert query(db, "SELECT attempt, status FROM task_attempts") == [(1, "error")]


def test_only_listed_exceptions_are_retried(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    pipe = Pipeline("retry", db=db)
    calls: list[int] = []

    @pipe.task(retries=3, backoff=0.001, retry_on=OSError)
    def parse(ctx: Context, n: int) -> None:
        calls.append(n)
        raise KeyError("not retryable")

    pipe.map(parse, [1])
    assert pipe.run(progress=False).counts == {"error": 1}
    assert calls == [1]
    assert query(db, "SELECT count(*) FROM task_attempts") == [(0,)]


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 5.0, rng) for n in range(1, 6)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert 2.0 <= delays[2] <= 4.0
    assert all(2.5 <= d <= 5.0 for d in delays[3:])
    assert backoff_delay(10_000, 1.0, 5.0, rng) <= 5.0
    assert backoff_delay(3, 0.0, 5.0, rng) == 0.0
    same = [backoff_delay(2, 1.0, 5.0, random.Random(3)) for _ in range(2)]
    assert same[0] == same[1]


@pytest.mark.timeout(60)
def test_a_task_past_its_timeout_is_recorded_timeout_and_the_run_ends(
    tmp_path: Path, release: threading.Event
) -> None:
    db = tmp_path / "t.db"
    late: list[str] = []
    pipe = Pipeline("timeouts", db=db, workers=2, grace=0.1)

    @pipe.task(timeout=0.2)
    def work(ctx: Context, n: int) -> str:
        if n == 2:
            release.wait(60)  # ignores ctx.cancelled, as a stuck network call would
            late.append("finished after the run")
            ctx.progress(1, 1, "too late")
        return f"ok {n}"

    pipe.map(work, [1, 2, 3])
    result = pipe.run(progress=False)

    assert result.counts == {"done": 2, "timeout": 1}
    assert result.status == "error"
    assert result.failed_task_ids == [2]
    assert result.extra["abandoned_threads"] == 1
    [(status, result_text, message, error)] = query(
        db, "SELECT status, result, message, error FROM task_runs WHERE task_id = 2"
    )
    assert status == "timeout"
    assert result_text is None
    assert message.startswith("TaskTimeoutError: did not finish within 0.2 s")
    # Where the abandoned thread was stuck: in the task function, waiting.
    assert "Where the attempt's thread was when it was abandoned" in error
    assert "in work" in error
    assert query(db, "SELECT status FROM pipeline_runs") == [("error",)]
    assert late == []


@pytest.mark.timeout(60)
def test_a_cooperative_task_sees_cancelled_and_a_timeout_can_be_retried(
    tmp_path: Path, release: threading.Event
) -> None:
    db = tmp_path / "t.db"
    stopped: list[int] = []
    pipe = Pipeline("timeouts", db=db, grace=30)

    @pipe.task(timeout=0.2, retries=1, backoff=0.001, retry_on=TimeoutError)
    def slow_once(ctx: Context, n: int) -> str:
        if ctx.attempt == 1:
            ctx.progress(1, 4, "first try")
            while not ctx.cancelled.wait(0.01):
                pass
            stopped.append(ctx.attempt)
            ctx.progress(4, 4, "ignored: the attempt was abandoned")
            return "ignored"
        return "second try"

    pipe.map(slow_once, [1])
    result = pipe.run(progress=False)

    assert result.ok
    assert result.extra["abandoned_threads"] == 0  # it stopped within the grace period
    assert stopped == [1]
    assert query(db, "SELECT status, attempt, result, step, total FROM task_runs") == [
        ("done", 2, "second try", 0, 4)
    ]
    [(status, error)] = query(db, "SELECT status, error FROM task_attempts")
    assert status == "timeout"
    assert TaskTimeoutError.__name__ in error


def test_timeout_without_expiry_returns_the_value(tmp_path: Path) -> None:
    pipe = Pipeline("t", db=tmp_path / "t.db")

    @pipe.task(timeout=30)
    def quick(ctx: Context, n: int) -> int:
        time.sleep(0.01)
        return n * 2

    pipe.map(quick, [1, 2])
    assert pipe.run(progress=False).ok
    assert query(tmp_path / "t.db", "SELECT result FROM task_runs ORDER BY task_id") == [
        ("2",),
        ("4",),
    ]


@pytest.mark.timeout(60)
def test_a_stopping_run_ends_a_retry_wait(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    first_failed = threading.Event()
    pipe = Pipeline("stop", db=db, workers=2, fail_fast=True)

    @pipe.task(retries=3, backoff=30)
    def flaky(ctx: Context, n: int) -> None:
        first_failed.set()
        raise ConnectionError("try again later")

    @pipe.task
    def broken(ctx: Context, n: int) -> None:
        first_failed.wait(30)
        raise ValueError("bad input")

    pipe.map(flaky, [1])
    pipe.map(broken, [1])
    result = pipe.run(progress=False)

    assert result.status == "error"
    assert query(db, "SELECT name, status, attempt, message FROM task_runs ORDER BY task_id") == [
        (
            "flaky:1",
            "error",
            1,
            "ConnectionError: try again later (not retried: the run is stopping)",
        ),
        ("broken:1", "error", 1, "ValueError: bad input"),
    ]
    assert query(db, "SELECT count(*) FROM task_attempts") == [(0,)]
