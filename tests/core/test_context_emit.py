"""``ctx.emit`` checks every message's type, whatever came before it.

`Context.emit` skips the checks for the type it accepted last (a task emits rows of one
type); these tests make sure that shortcut never lets through a type it would refuse.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeloom import MsgTaskProgress
from pipeloom.pipeline import Context


@dataclass(frozen=True, slots=True)
class RowA:
    n: int


@dataclass(frozen=True, slots=True)
class RowB:
    n: int


@dataclass(frozen=True, slots=True)
class Unhandled:
    n: int


KINDS: dict[str, Any] = {
    "a": RowA,
    "b": RowB,
    "unhandled": Unhandled,
    "lifecycle": lambda n: MsgTaskProgress(1, n, n + 1),
}


def _context(atomic: bool, sent: list[Any]) -> Context:
    return Context(
        task_id=1,
        name="t",
        key=None,
        attempt=1,
        put=sent.append,
        handled={RowA, RowB},
        logger=logging.getLogger("pipeloom.test"),
        atomic=atomic,
    )


@given(kinds=st.lists(st.sampled_from(sorted(KINDS)), max_size=40), atomic=st.booleans())
@settings(max_examples=80, deadline=None)
def test_every_emit_is_checked_whatever_came_before(kinds: list[str], atomic: bool) -> None:
    sent: list[Any] = []
    ctx = _context(atomic, sent)
    accepted = []
    for n, kind in enumerate(kinds):
        msg = KINDS[kind](n)
        if kind in ("unhandled", "lifecycle"):
            with pytest.raises(TypeError, match=r"ctx\.emit"):
                ctx.emit(msg)
        else:
            ctx.emit(msg)
            accepted.append(msg)
    if not atomic:  # streamed: each accepted message went to the writer, in order
        assert sent == accepted
    else:  # held until the attempt ends: nothing sent yet
        assert sent == []
