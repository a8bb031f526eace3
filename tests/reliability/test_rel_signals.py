"""SIGTERM, SIGHUP and Ctrl-C on `pipeloom run`, on every executor, and its exit-code table.

Each test runs ``pipeloom run file.py:main`` in a real subprocess, with the pipeline file
written to tmp_path, and sends its signal with os.kill once a condition is seen in the SQLite
file (tasks running, tasks done), never after a sleep.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._harness import query
from tests.executors._support import alive
from tests.reliability._support import integrity, wait_for

PIPE = '''
import asyncio
import time
from pathlib import Path

from pipeloom import MsgTaskFinished, MsgTaskStarted, TaskDef, run_pipeline, utc_now

RELEASE = Path(__file__).with_name("release")


def work(task, q):
    """Blocked tasks wait for the test's release file; quick ones return at once."""
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    if task.name == "fail":
        raise ValueError("this task fails")
    if task.name == "big":  # fills a capped file fast: the writer fails
        q.put(MsgTaskFinished(task.task_id, "done", utc_now(), result="x" * 20_000))
    while task.name == "block" and not RELEASE.exists():
        time.sleep(0.01)


async def awork(task, q):
    q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    while task.name == "block" and not RELEASE.exists():
        await asyncio.sleep(0.01)


def waiting():
    """A source that blocks until work arrives (here: never, unless released)."""
    yield TaskDef(1, "quick")
    yield TaskDef(2, "quick")
    while not RELEASE.exists():
        time.sleep(0.01)
    yield TaskDef(3, "quick")


def cap(conn):
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 20}")


async def _start_worker(address):
    from distributed import Worker

    return await Worker(address, nthreads=2, dashboard=False)


def lost(db: Path, scheduler: str):
    """Dask on a scheduler the test started (and will kill), with a worker in this process."""
    from distributed import Client

    from pipeloom.executors.dask import DaskExecutor

    client = Client(scheduler_file=scheduler)
    client.sync(_start_worker, client.scheduler.address)
    result = run_pipeline(
        [TaskDef(i, "block") for i in range(1, 5)],
        db,
        worker_fn=work,
        workers=2,
        executor=DaskExecutor(client=client, chunk_size=1),
        progress=False,
    )
    RELEASE.touch()  # the run is over: let this process's worker threads end
    return result


def main(db: Path, mode: str = "block", pool: str = "threads", n: int = 20):
    extra = {}
    if mode == "waiting":
        tasks = waiting()
    elif mode == "fail":
        tasks = [TaskDef(i, "fail" if i == 2 else "quick") for i in range(1, n + 1)]
    elif mode == "full":
        tasks = [TaskDef(i, "big") for i in range(1, n + 1)]
        extra["schema"] = cap
    else:
        tasks = [TaskDef(i, mode) for i in range(1, n + 1)]
    return run_pipeline(
        tasks,
        db,
        worker_fn=awork if pool == "async" else work,
        workers=2,
        executor=pool,
        progress=False,
        **extra,
    )
'''

N = 20
"""Tasks per blocked run: two run, the rest are never started once the signal comes."""


class Run:
    """One ``pipeloom run`` subprocess over the pipeline file, its output in files."""

    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        grace: float | None = None,
        prefix: tuple[str, ...] = (),
        entry: str = "main",
        env: dict[str, str] | None = None,
    ) -> None:
        (tmp_path / "pipe.py").write_text(PIPE)
        self.db = tmp_path / "runs.db"
        self.out, self.err = tmp_path / "out.txt", tmp_path / "err.txt"
        self.release = tmp_path / "release"
        env = {**os.environ, **(env or {})}
        if grace is not None:
            env["PIPELOOM_STOP_GRACE"] = str(grace)
        target = f"{tmp_path / 'pipe.py'}:{entry}"
        cmd = [sys.executable, "-m", "pipeloom_cli", "run", target]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [*prefix, *cmd, "--db", str(self.db), *args], stdout=out, stderr=err, env=env
            )

    def count(self, status: str) -> int:
        """Tasks in ``status`` so far; 0 while the file or its tables do not exist yet."""
        if not self.db.exists():
            return 0
        try:
            sql = "SELECT count(*) FROM task_runs WHERE status = ?"
            return int(query(self.db, sql, status)[0][0])
        except sqlite3.OperationalError:
            return 0

    def wait_running(self, k: int = 2) -> None:
        wait_for(lambda: self.count("running") >= k, f"{k} running tasks")

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait_output(self, text: str) -> None:
        wait_for(lambda: text in self.output(), repr(text))

    def finish(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def run_row(self) -> tuple[object, ...]:
        sql = "SELECT status, stop_reason, tasks_not_started FROM pipeline_runs"
        (row,) = query(self.db, sql)
        return row

    def statuses(self) -> dict[str, int]:
        sql = "SELECT status, count(*) FROM task_runs GROUP BY status"
        return {str(s): int(n) for s, n in query(self.db, sql)}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start a `Run`; whatever a test left running is killed at teardown."""
    started: list[Run] = []

    def make(*args: str, **kwargs: Any) -> Run:
        run = Run(tmp_path, *args, **kwargs)
        started.append(run)
        return run

    yield make
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from the ppid chains in /proc/*/stat.

    (psutil comes only with the Dask extra; /proc is all this needs.)
    """
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it exited while we looked
            continue
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


SIGNALS = {"sigterm": (signal.SIGTERM, 143, "SIGTERM"), "sighup": (signal.SIGHUP, 129, "SIGHUP")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", ["threads", "processes", "async"])
@pytest.mark.parametrize("reason", ["sigterm", "sighup"])
def test_sigterm_and_sighup_stop_like_a_first_ctrl_c(
    start: Callable[..., Run], pool: str, reason: str
) -> None:
    sig, code, name = SIGNALS[reason]
    run = start("--arg", f"pool={pool}", "--arg", f"n={N}")
    run.wait_running()
    os.kill(run.proc.pid, sig)
    run.wait_output(f"Stopping on {name}")
    run.release.touch()  # the tasks in flight may finish: they are not abandoned
    assert run.finish() == code, run.output()
    assert "Traceback" not in run.output()
    assert run.run_row() == ("cancelled", reason, N - 2)
    assert run.statuses() == {"done": 2}
    assert integrity(run.db) == "ok"


@pytest.mark.timeout(60)
def test_the_grace_period_abandons_and_no_child_process_outlives_the_run(
    start: Callable[..., Run],
) -> None:
    run = start("--arg", "pool=processes", "--arg", f"n={N}", grace=0.2)
    run.wait_running()
    children = _descendants(run.proc.pid)
    assert len(children) >= 3  # the forkserver and two workers (and a resource tracker)
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.finish() == 143, run.output()
    assert run.run_row() == ("interrupted", "sigterm", N - 2)
    assert run.statuses() == {"interrupted": 2}
    wait_for(lambda: not any(alive(p) for p in children), "every child process to exit")
    assert "Traceback" not in run.output() and "Logging error" not in run.output()


@pytest.mark.timeout(60)
def test_a_killed_driver_takes_its_worker_processes_with_it(start: Callable[..., Run]) -> None:
    """SIGKILL leaves no handler to run: the children notice their pipe closed and exit."""
    run = start("--arg", "pool=processes", "--arg", f"n={N}")
    run.wait_running()
    children = _descendants(run.proc.pid)
    os.kill(run.proc.pid, signal.SIGKILL)
    run.finish()
    wait_for(lambda: not any(alive(p) for p in children), "every orphan to exit")
    assert "Traceback" not in run.output() and "Logging error" not in run.output()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", ["threads", "async"])
def test_a_second_signal_abandons_at_once(start: Callable[..., Run], pool: str) -> None:
    run = start("--arg", f"pool={pool}", "--arg", f"n={N}", grace=600)
    run.wait_running()
    os.kill(run.proc.pid, signal.SIGHUP)
    run.wait_output("Stopping on SIGHUP")
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.finish() == 129, run.output()  # the first signal decides
    assert run.run_row() == ("interrupted", "sighup", N - 2)
    assert run.statuses() == {"interrupted": 2}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_one_ctrl_c_stops_a_run_whose_source_waits_for_work(
    start: Callable[..., Run], pool: str
) -> None:
    run = start("--arg", "mode=waiting", "--arg", f"pool={pool}")
    wait_for(lambda: run.count("done") == 2, "both tasks the source had done")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.finish() == 130, run.output()
    # Nothing was in flight: the run is cancelled, not interrupted, and how many tasks the
    # source still held is unknown (a generator has no length).
    assert run.run_row() == ("cancelled", "sigint", None)
    assert run.statuses() == {"done": 2}


def _unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.timeout(60)
def test_as_pid_1_sigterm_still_stops_the_run(start: Callable[..., Run]) -> None:
    """In a container without an init, pipeloom is PID 1: a signal without a handler is
    dropped there, so the handlers are installed explicitly."""
    if not _unshare_works():
        pytest.skip("unshare --pid --fork --mount-proc is not permitted here")
    run = start("--arg", f"n={N}", prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    run.wait_running()
    (pid1,) = query(run.db, "SELECT pid FROM pipeline_runs")[0]
    assert pid1 == 1  # as the run row records it, from inside its namespace
    (python,) = _descendants(run.proc.pid)  # unshare's one child: the pipeloom process
    os.kill(python, signal.SIGTERM)
    run.wait_output("Stopping on SIGTERM")
    run.release.touch()
    assert run.finish() == 143, run.output()
    assert run.run_row() == ("cancelled", "sigterm", N - 2)


EXIT_ROWS = [
    pytest.param("0", ["--arg", "mode=quick"], None, 0, ("done", None), id="0-done"),
    pytest.param("1", ["--arg", "mode=fail"], None, 1, ("error", None), id="1-task-failed"),
    pytest.param("2", ["--arg", "nope=1"], None, 2, None, id="2-usage"),
    pytest.param("3", ["--arg", "mode=full", "--arg", "n=400"], None, 3, None, id="3-writer-lost"),
    pytest.param("129", [], signal.SIGHUP, 129, ("cancelled", "sighup"), id="129-sighup"),
    pytest.param("130", [], signal.SIGINT, 130, ("cancelled", "sigint"), id="130-ctrl-c"),
    pytest.param("143", [], signal.SIGTERM, 143, ("cancelled", "sigterm"), id="143-sigterm"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("row", "args", "sig", "code", "recorded"), EXIT_ROWS)
def test_exit_code_table_row_by_row(
    start: Callable[..., Run],
    row: str,
    args: list[str],
    sig: signal.Signals | None,
    code: int,
    recorded: tuple[str, str | None] | None,
) -> None:
    """docs/cli.md's exit-code table, each row from a real run (3: the cluster, below)."""
    table = Path(__file__).parents[2].joinpath("docs", "cli.md").read_text()
    assert f"\n| {row} |" in table, f"docs/cli.md has no row for exit code {row}"
    run = start(*args)
    if sig is not None:
        run.wait_running()
        os.kill(run.proc.pid, sig)
        run.wait_output("Stopping")
        run.release.touch()
    assert run.finish() == code, run.output()
    if recorded is not None:
        assert run.run_row()[:2] == recorded
    if sig is not None:
        assert run.statuses() == {"done": 2}
    # `status --watch` exits with the same code, from the run row alone (a writer that
    # failed could not close its row: a reader sees it stale only when its lease ends).
    if code not in (2, 3):
        watch = subprocess.run(
            [sys.executable, "-m", "pipeloom_cli", "status", str(run.db), "--watch"],
            capture_output=True,
            timeout=30,
        )
        assert watch.returncode == code, watch.stderr


def test_a_third_signal_names_the_first_in_its_exit_code() -> None:
    """`Interrupted` (raised by a third signal) carries the first signal's reason."""
    from pipeloom.errors import Interrupted
    from pipeloom.status import exit_code

    assert isinstance(Interrupted("sigterm"), KeyboardInterrupt)
    assert exit_code("interrupted", Interrupted("sigterm").stop_reason) == 143


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_lost_dask_scheduler_exits_3_not_130(start: Callable[..., Run], tmp_path: Path) -> None:
    """The scheduler dies mid-run: `cluster_lost`, tasks in flight `interrupted`, exit 3."""
    pytest.importorskip("distributed")
    info = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            *("--port", "0"),
            "--no-dashboard",
            "--scheduler-file",
            str(info),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: info.exists() and info.stat().st_size > 0, "the scheduler's file")
        # Short connect timeouts: the client's reconnect attempts end soon after the run.
        quick = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
        run = start("--arg", f"scheduler={info}", entry="lost", env=quick)
        run.wait_running()
        os.kill(scheduler.pid, signal.SIGKILL)
        code = run.finish()
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
        scheduler.wait()
    assert code == 3, run.output()
    assert run.run_row()[:2] == ("interrupted", "cluster_lost")
    assert set(run.statuses()) <= {"interrupted", "cancelled"}
    assert "scheduler" in run.output() and "lost" in run.output()
