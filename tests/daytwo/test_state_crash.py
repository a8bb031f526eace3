"""Exactly once under SIGKILL: an incremental load killed at random moments, then rerun.

The cursor rides the task's savepoint with its rows and its done row, so whatever moment the
process dies at, the target holds each loaded source row once and the stored cursor is the
highest id loaded: a rerun goes on from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests._harness import query
from tests.reliability._support import integrity

TRIALS = 20
CHILD = Path(__file__).with_name("load_child.py")


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
    zygote = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), str(source)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert zygote.stdin is not None and zygote.stdout is not None

    def load(kill_after: float | None) -> int:
        assert zygote.stdin is not None and zygote.stdout is not None
        zygote.stdin.write("run\n")
        zygote.stdin.flush()
        pid = int(zygote.stdout.readline().split()[1])
        if kill_after is not None:
            time.sleep(kill_after)  # the random moment; what is checked never depends on it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return int(zygote.stdout.readline().split()[1])

    try:
        killed = 0
        for trial in range(TRIALS):
            _grow(source, 8 * (trial + 1))  # the source keeps growing between runs
            code = load(rng.uniform(0.0, 0.08))
            assert code in (0, -signal.SIGKILL)
            killed += code == -signal.SIGKILL
            _check(db)
        assert load(None) == 0  # the rerun catches up from where the cursor stands
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
        zygote.stdout.close()
    assert _check(db) == 8 * TRIALS
    assert integrity(db) == "ok"
    assert killed >= TRIALS // 2  # most trials really died mid-load
