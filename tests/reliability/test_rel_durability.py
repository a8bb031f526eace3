"""The durability option: synchronous=FULL is selectable, and a typo is not silently NORMAL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeloom import DatabaseError, TaskDef, TaskQueue, run_pipeline


def _noop(task: TaskDef, q: TaskQueue) -> None:
    """The engine records the task done."""


def _pragmas(seen: dict[str, object]) -> object:
    def schema(conn: sqlite3.Connection) -> None:
        seen["synchronous"] = conn.execute("PRAGMA synchronous").fetchone()[0]
        seen["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]

    return schema


@pytest.mark.parametrize(("option", "level"), [(None, 1), ("NORMAL", 1), ("FULL", 2)])
def test_synchronous_option_reaches_the_writer_connection(
    tmp_path: Path, option: str | None, level: int
) -> None:
    seen: dict[str, object] = {}
    kwargs = {} if option is None else {"synchronous": option}
    result = run_pipeline(
        [TaskDef(1, "one")],
        tmp_path / "sync.db",
        worker_fn=_noop,
        progress=False,
        schema=_pragmas(seen),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    assert result.counts == {"done": 1}
    assert seen == {"synchronous": level, "journal_mode": "wal"}


def test_a_misspelt_synchronous_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises((ValueError, DatabaseError), match="synchronous='FUL'"):
        run_pipeline(
            [TaskDef(1, "one")],
            tmp_path / "typo.db",
            worker_fn=_noop,
            progress=False,
            synchronous="FUL",  # type: ignore[arg-type]
        )
