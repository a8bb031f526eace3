"""``pipeloom demo``: a simulated pipeline, to see the live display and a run database.

Each task sleeps a short, seeded random time per step, so the bars move visibly while a
default run (20 tasks) ends in a few seconds. ``--fail-rate`` makes a fixed share of the
tasks raise, to show what failures look like in the display, the summary and ``status``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import pipeloom_cli
from pipeloom.messages import MsgTaskFinished, MsgTaskProgress, MsgTaskStarted, TaskDef, utc_now
from pipeloom_cli._dbfile import observe_hint, prepare_for_write
from pipeloom_cli._errors import exit_code_for, user_errors
from pipeloom_cli._options import (
    MAX_ID,
    DaskAddress,
    ExecutorName,
    LogFile,
    Verbose,
    Workers,
    choose_executor,
    number,
    start_logging,
)

if TYPE_CHECKING:
    from pipeloom.executors import TaskQueue

__all__ = ["DemoPlan", "demo", "demo_worker"]

log = logging.getLogger("pipeloom.demo")

MAX_DEMO_TASKS = 10_000_000
"""``-n``: the failing tasks are chosen up front, a set as large as the share asks."""
MAX_DEMO_STEPS = 10_000
"""``--steps``: each task holds one delay per step."""
MAX_DEMO_DELAY = 3600.0
"""``--delay``: an hour per step is already no demo."""


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """What one demo task will do; carried as the TaskDef's payload."""

    delays: tuple[float, ...]
    """Seconds to sleep before each step is reported."""
    fail_at: int | None
    """The step at which the task raises, or None when it succeeds."""


class DemoTasks:
    """The demo's tasks, generated lazily so ``-n 1000000`` does not fill memory."""

    def __init__(self, n: int, *, steps: int, delay: float, fail_rate: float, seed: int) -> None:
        """Choose which tasks fail now; delays are drawn per task while iterating."""
        self.n = n
        self.steps = steps
        self.delay = delay
        self.seed = seed
        k = round(n * fail_rate)
        self.failing = frozenset(random.Random(seed).sample(range(1, n + 1), k))

    def __len__(self) -> int:
        """The number of tasks, so the overall bar has a total."""
        return self.n

    def __iter__(self) -> Iterator[TaskDef]:
        """Yield the tasks in order, each with its own seeded plan."""
        width = len(str(self.n))
        for task_id in range(1, self.n + 1):
            rng = random.Random(self.seed * 1_000_003 + task_id)
            delays = tuple(rng.uniform(0.3, 1.0) * self.delay for _ in range(self.steps))
            fail_at = rng.randint(1, self.steps) if task_id in self.failing else None
            yield TaskDef(
                task_id,
                f"task-{task_id:0{width}d}",
                steps=self.steps,
                payload=DemoPlan(delays, fail_at),
            )


class DemoTaskError(RuntimeError):
    """Raised by a demo task chosen to fail (``--fail-rate``)."""


def demo_worker(task: TaskDef, msg_q: TaskQueue) -> None:
    """Pretend to load a partition: report each step, then finish (or raise)."""
    plan: DemoPlan = task.payload
    msg_q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    rows = 0
    for step, delay in enumerate(plan.delays, start=1):
        time.sleep(delay)
        if step == plan.fail_at:
            log.info("%s: failing on purpose at step %d (--fail-rate)", task.name, step)
            raise DemoTaskError(f"{task.name}: simulated failure at step {step} (--fail-rate)")
        rows += 100 * step
        log.debug("%s: step %d/%d, %d rows", task.name, step, task.steps, rows)  # -vv
        msg_q.put(MsgTaskProgress(task.task_id, step, task.steps, f"{rows} rows"))
    log.info("%s done: %d rows", task.name, rows)
    msg_q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result=f'{{"rows": {rows}}}'))


def demo(
    db: Annotated[Path, typer.Option("--db", help="SQLite file to record the runs in.")] = Path(
        "./wal_demo.db"
    ),
    num_tasks: Annotated[
        int,
        number("--num-tasks", "-n", low=0, high=MAX_DEMO_TASKS, help="How many tasks to simulate."),
    ] = 20,
    workers: Workers = None,
    no_wal: Annotated[
        bool, typer.Option("--no-wal", help="Use the rollback journal instead of WAL.")
    ] = False,
    steps: Annotated[
        int, number("--steps", low=1, high=MAX_DEMO_STEPS, help="Progress steps per task.")
    ] = 5,
    fail_rate: Annotated[
        float,
        number(
            "--fail-rate",
            low=0.0,
            high=1.0,
            kind=float,
            metavar="SHARE",
            help="Share of tasks that fail, from 0 to 1.",
        ),
    ] = 0.0,
    seed: Annotated[
        int | None,
        number(
            "--seed",
            low=0,
            high=MAX_ID,
            help="Seed for durations and failures (default: random).",
        ),
    ] = None,
    delay: Annotated[
        float,
        number(
            "--delay",
            low=0.0,
            high=MAX_DEMO_DELAY,
            kind=float,
            help="Longest sleep per step, in seconds.",
        ),
    ] = 0.1,
    executor: ExecutorName = None,
    dask_address: DaskAddress = None,
    verbose: Verbose = 0,
    log_file: LogFile = None,
    store_task_status: Annotated[
        bool,
        typer.Option(
            "--store-task-status",
            "-s",
            help="Accepted for pipeloom 0.0.7 scripts; has no effect: every demo run is "
            "recorded in --db.",
        ),
    ] = True,
) -> None:
    """Simulate a pipeline with live progress.

    Every run is recorded in a SQLite file (--db).

    Exits 0 when every task is done, 1 when any failed, 130 after Ctrl-C.
    """
    with user_errors(verbose):
        start_logging(verbose, log_file)
        # 0.0.7's -s switched task rows on; here they are always kept (run history).
        del store_task_status
        if seed is None:
            seed = random.SystemRandom().randrange(1_000_000)
        prepare_for_write(db)
        tasks = DemoTasks(num_tasks, steps=steps, delay=delay, fail_rate=fail_rate, seed=seed)
        log.info(
            "demo: %d tasks, %d failing, seed %d, db %s", num_tasks, len(tasks.failing), seed, db
        )
        # Looked up on the package each time (0.0.7's tests replace it there); loaded on
        # first use, so `pipeloom --help` stays quick.
        result = pipeloom_cli.run_pipeline(
            tasks,
            db,
            worker_fn=demo_worker,
            workers=workers,
            executor=choose_executor(executor, dask_address),
            wal=not no_wal,
            run_name="demo",
            params={
                "num_tasks": num_tasks,
                "steps": steps,
                "fail_rate": fail_rate,
                "seed": seed,
                "delay": delay,
            },
            summary_hint=observe_hint(db),
        )
    raise typer.Exit(exit_code_for(result))
