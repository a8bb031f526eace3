"""Helpers shared by the reliability tests: the child script, event files, file checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests._harness import integrity as integrity
from tests._harness import wait_for as wait_for

CHILD = Path(__file__).with_name("rel_child.py")


def spawn_child(mode: str, db: Path, events: Path, n: int) -> subprocess.Popen[bytes]:
    """Start rel_child.py; its stdout and stderr go to EVENTS.out and EVENTS.err."""
    with events.with_suffix(".out").open("wb") as out, events.with_suffix(".err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(CHILD), mode, str(db), str(events), str(n)],
            stdout=out,
            stderr=err,
        )


def child_output(events: Path) -> tuple[str, str]:
    """What the child printed: (stdout, stderr)."""
    return (
        events.with_suffix(".out").read_text(errors="replace"),
        events.with_suffix(".err").read_text(errors="replace"),
    )


def read_events(events: Path) -> tuple[set[int], dict[int, str]]:
    """Committed starts and finishes the child reported (a torn last line is ignored)."""
    started: set[int] = set()
    finished: dict[int, str] = {}
    if not events.exists():
        return started, finished
    for line in events.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        parts = line.split()
        if parts[0] == "S":
            started.add(int(parts[1]))
        elif parts[0] == "F":
            finished.setdefault(int(parts[1]), parts[2])
    return started, finished
