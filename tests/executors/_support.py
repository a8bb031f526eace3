"""Helpers the executor tests share."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests._harness import wait_for


def pipeloom_children() -> list[object]:
    """Worker processes pipeloom started and that are still alive (a Dask cluster's are not)."""
    return [c for c in multiprocessing.active_children() if c.name == "pipeloom-process"]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


_HOGGING_DRIVER = """
import itertools
import os
import sys
from pathlib import Path

from pipeloom import TaskDef, run_pipeline
from pipeloom.executors import DaskExecutor


def hog(task, q):
    mark = Path(task.payload, f"pid-{task.task_id}")
    mark.with_suffix(".new").write_text(str(os.getpid()))
    mark.with_suffix(".new").rename(mark)  # never seen half written
    sum(itertools.repeat(1, 10**13))  # holds the GIL in C: no watch thread ever runs


if __name__ == "__main__":
    folder = sys.argv[1]
    tasks = [TaskDef(i, f"t{i}", payload=folder) for i in (1, 2)]
    run_pipeline(tasks, Path(folder) / "run.db", worker_fn=hog, workers=2,
                 executor=EXECUTOR, progress=False)
"""


def left_after_kill_9(folder: Path, executor: str) -> list[int]:
    """Workers still alive 30 s after their driver was SIGKILLed mid-run (killed after).

    The driver runs two tasks on ``executor`` (Python source: ``"processes"``, or a
    ``DaskExecutor(...)``), each holding its worker's GIL in C, and is killed once both
    began: nothing of the driver's can stop them, and their own watch threads never run.
    """
    script = folder / "hogs.py"
    script.write_text(_HOGGING_DRIVER.replace("EXECUTOR", executor))
    driver = subprocess.Popen([sys.executable, str(script), str(folder)])
    pids: list[int] = []
    try:
        marks = [folder / f"pid-{i}" for i in (1, 2)]
        wait_for(lambda: all(m.exists() for m in marks), "both tasks to begin")
        pids = [int(m.read_text()) for m in marks]
        driver.kill()
        driver.wait(30)
        for _ in range(3000):  # a bound, not a pace: it ends as soon as they are gone
            if not any(map(alive, pids)):
                break
            time.sleep(0.01)
        return [pid for pid in pids if alive(pid)]
    finally:
        driver.kill()
        driver.wait()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
