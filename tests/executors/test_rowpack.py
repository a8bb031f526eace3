"""Rows cross a process as plain tuples and arrive as the same objects (``_rowpack``).

What the encoding cannot carry exactly (a class with an instance ``__dict__``, its own
``__reduce__``, a field never set) is pickled the usual way, so the batch read back in the
driver is always equal to the batch sent, in the same order, with the same classes.
"""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from collections import namedtuple
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest

from pipeloom.executors._remote import pack, unpack
from pipeloom.executors._rowpack import compact
from pipeloom.messages import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, utc_now


@dataclass(frozen=True, slots=True)
class Frozen:
    a: int
    b: str | None
    c: tuple[int, ...] = ()


@dataclass(slots=True)
class Mutable:
    a: int
    b: float


@dataclass(frozen=True, slots=True)
class Child(Frozen):
    d: bytes = b""


@dataclass(frozen=True)
class WithDict:
    a: int


@dataclass(frozen=True, slots=True)
class OwnReduce:
    a: int

    def __reduce__(self) -> tuple[Any, ...]:
        return (OwnReduce, (self.a + 1000,))  # pickling changes it: must be respected


class Point(NamedTuple):
    x: int
    y: int


Legacy = namedtuple("Legacy", "p q")  # the collections kind, on purpose


def _cross(items: list[Any]) -> list[Any]:
    got = unpack(pack(items, 1), 1)
    assert isinstance(got, list), got
    return got


def test_runs_of_rows_come_back_equal_in_order_with_their_classes() -> None:
    shared = (1, 2)
    items: list[Any] = [MsgTaskStarted(1, "t", utc_now())]
    items += [Frozen(i, None if i % 2 else f"s{i}", shared) for i in range(20)]
    items += [MsgTaskProgress(1, 1, 2)]
    items += [Point(i, -i) for i in range(10)] + [Legacy(i, str(i)) for i in range(10)]
    items += [Mutable(i, i / 3) for i in range(10)] + [Child(i, "c", (), b"\0") for i in range(9)]
    items += [Frozen(99, "lone")]
    got = _cross(items)
    assert got == items
    assert [type(x) for x in got] == [type(x) for x in items]
    assert got[1].c is got[2].c  # shared values stay shared, as with pickle
    assert type(compact(items)).__name__ == "_Batch"  # it was sent compact


def test_a_finishs_outputs_cross_compact_and_come_back_as_a_tuple() -> None:
    outputs = tuple([Frozen(i, "x") for i in range(50)] + [Point(1, 2)] * 3)
    finish = MsgTaskFinished(7, "done", utc_now(), outputs=outputs)
    (got,) = _cross([finish])
    assert got == finish and type(got.outputs) is tuple
    assert [type(o) for o in got.outputs] == [type(o) for o in outputs]
    assert compact([finish])[0].outputs is not outputs  # the copy sent carries the runs
    as_list = MsgTaskFinished(8, "done", utc_now(), outputs=list(outputs))
    assert _cross([as_list]) == [as_list]  # a list stays a list


def test_what_the_encoding_cannot_carry_is_pickled_the_usual_way() -> None:
    with_dict = [WithDict(i) for i in range(10)]
    for row in with_dict:
        object.__setattr__(row, "extra", "kept")  # an instance attribute beyond the fields
    own = [OwnReduce(i) for i in range(10)]
    unset = [Mutable.__new__(Mutable) for _ in range(10)]  # no field ever set
    for partial in unset[:5]:
        partial.a, partial.b = 1, 2.0
    got = _cross([*with_dict, *own])
    assert [g.extra for g in got[:10]] == ["kept"] * 10
    assert [g.a for g in got[10:]] == [i + 1000 for i in range(10)]  # its own __reduce__ ran
    assert compact(with_dict) == with_dict and compact(own) == own
    crossed = _cross(unset)
    assert [getattr(g, "a", None) for g in crossed] == [1] * 5 + [None] * 5


def test_a_row_that_cannot_pickle_still_becomes_its_tasks_error_not_the_batchs() -> None:
    rows: list[Any] = [Frozen(i, "ok") for i in range(10)]
    rows[4] = Frozen(4, "bad", (lambda: 1,))  # type: ignore[arg-type]
    got = _cross(rows)
    assert [type(g).__name__ for g in got].count("Unsent") == 1
    assert "Frozen message it sent could not be pickled" in got[4].reason
    assert got[:4] == rows[:4] and got[5:] == rows[5:]


def test_the_fields_of_the_compact_form_match_the_dataclass() -> None:
    blob = pickle.dumps(compact([Frozen(i, "x") for i in range(10)]))
    assert [dataclasses.astuple(r) for r in pickle.loads(blob)] == [(i, "x", ()) for i in range(10)]


def test_a_class_rebuilt_by_value_in_another_process_still_crosses_compact() -> None:
    """Dask and notebooks send ``__main__`` classes by value; the copy has no real slots."""
    pytest.importorskip("cloudpickle")
    source = (
        "import sys, cloudpickle\n"
        "from dataclasses import dataclass\n"
        "@dataclass(frozen=True, slots=True)\n"
        "class Reading:\n"
        "    sensor: str\n"
        "    value: float\n"
        "sys.stdout.buffer.write(cloudpickle.dumps(Reading))\n"
    )
    blob = subprocess.run([sys.executable, "-c", source], capture_output=True, check=True).stdout
    reading = pickle.loads(blob)
    rows = [reading(f"s{i}", i / 2) for i in range(12)]
    assert type(compact(rows)).__name__ == "_Batch"
    got = _cross(rows)
    assert [(g.sensor, g.value) for g in got] == [(f"s{i}", i / 2) for i in range(12)]
    assert all(type(g).__qualname__ == "Reading" for g in got)


@dataclass(slots=True)
class Guarded:
    a: int

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value * 2)  # unpickling calls this: must be respected


def test_a_slots_class_with_its_own_setattr_is_pickled_the_usual_way() -> None:
    rows = [Guarded(i) for i in range(10)]  # a = 2 i
    assert compact(rows) == rows
    assert [g.a for g in _cross(rows)] == [4 * i for i in range(10)]  # set again on arrival


@pytest.mark.parametrize("enabled", [True, False])
def test_reading_a_batch_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    """`unpack` pauses the collector while it makes a batch's rows (they all live on): a
    user who turned it off keeps it off, and a batch that fails to read turns it back on."""
    import gc

    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        assert _cross([Frozen(i, "x") for i in range(20)])[19] == Frozen(19, "x")
        assert gc.isenabled() is enabled
        broken = unpack(b"\x80\x05not a pickle", 3)
        assert type(broken).__name__ == "Unsent"
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
