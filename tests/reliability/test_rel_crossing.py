"""What cannot cross a process boundary is that task's error; the run goes on.

Results, emitted messages (held and streamed), exceptions and the task itself, in both
directions, on real process pools and a real Dask cluster: a value that does not pickle in
the worker, one that pickles but cannot be unpickled (a class whose ``__init__`` takes two
arguments but whose pickle carries one), an item the worker cannot read back. Every other
task is recorded, the bad one is ``error`` with a one-line reason naming the task and the
type, what consumes it is ``upstream_failed``, and the run ends ``error`` (never
``interrupted``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeloom import Pipeline
from tests._harness import query
from tests.reliability import _crossing_tasks as t

MOD = "tests.reliability._crossing_tasks"
PICKLE_FIX = "send plain data: no locks, open files, connections or generators"

EXPECTED = {
    "make:2": "its result, a _thread.lock, could not be pickled in the worker",
    "make:3": f"its result, a {MOD}.TwoArgError, could not be unpickled in the worker",
    "make:4": f"a message it sent ({MOD}.TwoArgError) could not be unpickled in the driver",
    "make:5": f"a {MOD}.MsgLock message it emitted could not be pickled in the worker",
    "make:6": "LockedError: holds a lock",
    "make:7": "TwoArgError: orders row 7 is bad",
    "make:13": f"its result, a {MOD}.TwoArgValue, could not be unpickled in the worker",
    "make:14": f"a message it sent ({MOD}.TwoArgValue) could not be unpickled in the driver",
    "make:TwoArgValue": f"its task ({MOD}.TwoArgValue) could not be unpickled in the worker",
    "make:lock": "its task (its item, a _thread.lock) could not be pickled",
    "stream:8": f"a message it sent ({MOD}.TwoArgValue) could not be unpickled in the driver",
}
"""Task key -> part of its one-line error."""

DASK_CROSSES = {"make:3", "make:4"}
"""Exceptions that do cross to Dask: distributed pickles exceptions by value (tblib)."""


def _executor(name: str, request: pytest.FixtureRequest) -> Any:
    if name != "dask":
        return name
    from pipeloom.executors.dask import DaskExecutor

    return DaskExecutor(client=request.getfixturevalue("dask_client"))


@pytest.mark.parametrize(
    "executor", ["processes", pytest.param("dask", marks=pytest.mark.xdist_group("dask"))]
)
def test_what_cannot_cross_fails_only_its_own_task(
    tmp_path: Path, executor: str, request: pytest.FixtureRequest
) -> None:
    db = tmp_path / "crossing.db"
    pipe = Pipeline(
        "crossing",
        db=db,
        workers=2,
        executor=_executor(executor, request),
        handlers=t.pipe.handlers,
        schema=t.schema,
    )
    numbers = [n for n in range(1, 15) if executor != "dask" or f"make:{n}" not in DASK_CROSSES]
    items: list[Any] = [*numbers, t.TwoArgValue("items", 0), threading.Lock()]
    made = pipe.map(t.make, items, key=lambda x: x if isinstance(x, int) else type(x).__name__)
    pipe.map(t.use, made)
    pipe.map(t.stream, [1, 8])
    result = pipe.run(progress=False)

    assert result.status == "error"
    got = dict(query(db, "SELECT task_key, status FROM task_runs"))
    assert len(got) == 2 * len(items) + 2  # every task taken has its terminal row
    bad = {k for k in EXPECTED if executor != "dask" or k not in DASK_CROSSES}
    assert {k for k, s in got.items() if s == "error"} == bad
    blocked = {"use:" + k.removeprefix("make:") for k in bad if k.startswith("make:")}
    assert {k for k, s in got.items() if s == "upstream_failed"} == blocked
    assert {k for k, s in got.items() if s == "done"} == set(got) - bad - blocked
    # Only the tasks that succeeded applied their rows; the failed ones applied none.
    fine = [n for n in numbers if f"make:{n}" not in bad]
    assert sorted(n for (n,) in query(db, "SELECT n FROM ok")) == fine

    messages = dict(query(db, "SELECT task_key, message FROM task_runs WHERE status='error'"))
    for key in bad:
        text = messages[key]
        assert "\n" not in text and len(text) <= 500, (key, text)
        assert EXPECTED[key] in text, (key, text)
        if text.startswith("CrossingError: "):
            assert text.startswith(f"CrossingError: task {_id(db, key)}: "), text
            assert PICKLE_FIX in text or "super().__init__" in text, text


def _id(db: Path, key: str) -> int:
    return int(query(db, "SELECT task_id FROM task_runs WHERE task_key = ?", key)[0][0])


def test_a_copy_of_a_registered_class_is_handled_and_a_stranger_is_named(tmp_path: Path) -> None:
    """A worker may hold another copy of a script's class (cloudpickle rebuilt it by value, or
    it imported the script as ``__mp_main__``): its module and name say which type it is."""
    from pipeloom import Context
    from pipeloom.record._registry import find_handler

    copy = type("MsgOk", (), {"__module__": t.MsgOk.__module__, "__qualname__": "MsgOk"})
    script = type("MsgOk", (), {"__module__": "__mp_main__", "__qualname__": "MsgOk"})
    main = type("MsgOk", (), {"__module__": "__main__", "__qualname__": "MsgOk"})
    stranger = type("MsgOk", (), {"__module__": "elsewhere", "__qualname__": "MsgOk"})
    assert find_handler(t.pipe.handlers, copy) is t.on_ok
    assert find_handler({main: t.on_ok}, script) is t.on_ok
    assert find_handler(t.pipe.handlers, stranger) is None

    sent: list[Any] = []
    ctx = Context(
        task_id=1,
        name="n",
        key=None,
        attempt=1,
        put=sent.append,
        handled=frozenset(t.pipe.handlers),
        logger=logging.getLogger("x"),
    )
    ctx.emit(copy())
    assert len(sent) == 1
    with pytest.raises(TypeError) as caught:
        ctx.emit(stranger())
    text = str(caught.value)
    assert f"registered for a MsgOk from module {MOD}" in text
    assert "this MsgOk comes from module elsewhere" in text
