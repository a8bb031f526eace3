"""The demo task and worker of pipeloom 0.0.7, for scripts written against its docs.

``run_pipeline(tasks, db, worker_fn=demo_worker)`` with ``DemoTask`` (or plain ``TaskDef``)
tasks simulates work: each task sleeps a little per step and reports every step, so the live
bars move and the run database fills, without any real data.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from pipeloom._text import exc_summary, exc_text
from pipeloom.executors import TaskQueue
from pipeloom.messages import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, TaskDef, utc_now

__all__ = ["DEFAULT_DELAY", "DemoTask", "demo_worker"]

log = logging.getLogger("pipeloom.demo")

DEFAULT_DELAY = 0.05
"""Shortest sleep per step, in seconds; each step sleeps between this and twice this."""


@dataclass(frozen=True, slots=True)
class DemoTask(TaskDef):
    """A `TaskDef` with the demo's defaults: 20 steps, 0.05-0.1 s each."""

    steps: int = 20
    """Progress steps the demo task reports (0.7: 20)."""
    delay: float = DEFAULT_DELAY
    """Shortest sleep per step in seconds; 0 makes the demo instant (for tests)."""


def demo_worker(task: TaskDef, msg_q: TaskQueue) -> None:
    """Pretend to work: report each of ``task.steps`` steps, then finish ``done``.

    The result stored is ``ok:<name>``, as in 0.0.7. A task that raises (a ``steps`` that is
    not a number) finishes ``error`` with the exception's message (``TypeError: ...``), as
    0.0.7's worker did, rather than raising out of the worker.
    """
    try:
        _simulate(task, msg_q)
    except Exception as exc:  # recorded on the task's row, as 0.0.7 did
        log.debug("%s: demo task failed", task.name, exc_info=True)
        msg_q.put(
            MsgTaskFinished(
                task.task_id,
                "error",
                utc_now(),
                message=exc_summary(exc),
                error=exc_text(exc),
            )
        )


def _simulate(task: TaskDef, msg_q: TaskQueue) -> None:
    delay = float(getattr(task, "delay", DEFAULT_DELAY))
    msg_q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    for step in range(1, task.steps + 1):
        if delay > 0:
            time.sleep(delay + random.random() * delay)
        msg_q.put(MsgTaskProgress(task.task_id, step, task.steps, f"step {step}/{task.steps}"))
    log.debug("%s: demo task done", task.name)
    msg_q.put(
        MsgTaskFinished(
            task.task_id, "done", utc_now(), result=f"ok:{task.name}", message="completed"
        )
    )
