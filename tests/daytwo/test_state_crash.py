"""Exactly once under SIGKILL: an incremental load killed at random moments, then rerun.

The cursor rides the task's savepoint with its rows and its done row, so whatever moment the
process dies at, the target holds each loaded source row once and the stored cursor is the
highest id loaded: a rerun goes on from there.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
from pathlib import Path

from tests._db import query
from tests.daytwo._tasks import load_until_caught_up
from tests.reliability._support import integrity

TRIALS = 20


def _grow(source: Path, upto: int) -> None:
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE IF NOT EXISTS source (id INTEGER PRIMARY KEY)")
    (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM source").fetchone()
    conn.executemany(
        "INSERT INTO source (id) VALUES (?)", [(i,) for i in range(last + 1, upto + 1)]
    )
    conn.commit()
    conn.close()


def _check(db: Path) -> int:
    """Every loaded row once, the cursor at the highest loaded id; returns that id."""
    if not db.exists() or not query(
        db, "SELECT 1 FROM sqlite_master WHERE name = 'pipeloom_state'"
    ):
        return 0
    count, distinct, top = query(db, "SELECT count(*), count(DISTINCT id), max(id) FROM target")[0]
    assert count == distinct, "a source row was loaded twice"
    cursor = query(db, "SELECT value FROM pipeloom_state WHERE key = 'cursor'")
    stored = json.loads(cursor[0][0]) if cursor else None
    assert stored == top, f"cursor {stored} but the target's highest id is {top}"
    assert top is None or count == top, "a source row was skipped"
    return int(top or 0)


def test_sigkill_at_random_moments_loads_every_row_exactly_once(tmp_path: Path) -> None:
    db, source = tmp_path / "runs.db", tmp_path / "source.db"
    rng = random.Random(7)
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(["pipeloom.pipeline", "tests.daytwo._tasks"])
    kills = 0
    for trial in range(TRIALS):
        _grow(source, 12 * (trial + 1))  # the source keeps growing between runs
        child = forkserver.Process(target=load_until_caught_up, args=(str(db), str(source)))
        child.start()
        assert child.pid is not None
        # a random moment: after 0 to 40 polls of the file (each a few ms)
        polls = rng.randrange(40)
        for _ in range(polls):
            if not child.is_alive():
                break
            child.join(0.003)
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.join()
        _check(db)

    final = forkserver.Process(target=load_until_caught_up, args=(str(db), str(source)))
    final.start()
    final.join()
    assert final.exitcode == 0
    assert _check(db) == 12 * TRIALS
    assert integrity(db) == "ok"
    assert kills >= TRIALS // 2  # most trials really were killed mid-work
