"""A declarative pipeline that a reliability test runs (and resumes) in separate processes.

``pipeloom run tests/reliability/resume_child.py:pipe --db DB`` loads partitions 1..30.
Each load appends ``<partition> <pid>`` to ``$RESUME_DIR/loads`` (so a test counts loads
across processes). Partitions above 10 wait until ``$RESUME_DIR/release`` exists, so the
first run stays live for as long as the test needs; with ``RESUME_FAIL_TAIL=1`` partitions
26..30 fail before loading, leaving work for a resume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeloom import Context, Pipeline

HERE = Path(os.environ.get("RESUME_DIR", "."))
PARTITIONS = range(1, 31)

pipe = Pipeline("partitions", db=HERE / "runs.db", workers=4)


@pipe.task
def load(ctx: Context, partition: int) -> int:
    if partition > 10:
        deadline = time.monotonic() + 60
        while not (HERE / "release").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never released the first run")
            time.sleep(0.01)
    if os.environ.get("RESUME_FAIL_TAIL") == "1" and partition > 25:
        raise ValueError(f"partition {partition} is not there yet")
    fd = os.open(HERE / "loads", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{partition} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return partition


pipe.map(load, PARTITIONS)
