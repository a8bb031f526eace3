"""A Dask cluster of containers: a scheduler and two workers from the image, on the host
network, running a pipeline driven from the host; one worker is killed mid-run."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests._harness import query
from tests.container import dask_driver
from tests.container._podman import Podman, free_port, port_open, wait_for

pytestmark = [
    pytest.mark.container,
    pytest.mark.timeout(900),
    pytest.mark.xdist_group("container"),
]

DRIVER = Path(dask_driver.__file__)


def held_on_w1(db: Path) -> set[int]:
    """Tasks the record shows running on w1 where they hold on (empty before the file exists)."""
    if not db.exists():
        return set()
    try:
        rows = query(
            db,
            "SELECT task_id FROM task_runs "
            "WHERE status = 'running' AND message = ? AND task_id > ?",
            f"on {dask_driver.HELD_ON}",
            dask_driver.HOLD_AFTER,
        )
    except sqlite3.OperationalError:  # the writer is still creating the schema
        return set()
    return {task_id for (task_id,) in rows}


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(
    image: str, podman: Podman, tmp_path: Path
) -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = podman.start(
        "scheduler",
        *("--network", "host", "--entrypoint", "dask", image, "scheduler"),
        *("--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"),
    )
    wait_for(lambda: port_open(port), "the Dask scheduler", explain=lambda: podman.logs(scheduler))
    workers = {
        name: podman.start(
            name,
            *("--network", "host", "--entrypoint", "dask", image, "worker", address),
            *("--name", name, "--nthreads", "2", "--host", "127.0.0.1"),
            *("--dashboard-address", "127.0.0.1:0", "--death-timeout", "60"),
        )
        for name in ("w1", "w2")
    }
    db = tmp_path / "cluster.db"
    log = tmp_path / "driver.log"

    def output() -> str:
        return "driver output:\n" + log.read_text(errors="replace")[-6000:]

    with log.open("wb") as out:
        driver = subprocess.Popen(
            [sys.executable, str(DRIVER), address, str(db)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(
            lambda: bool(held_on_w1(db)) or driver.poll() is not None,
            "w1 to hold a task that has begun",
            timeout=180,
            explain=lambda: output() + podman.logs(workers["w1"]),
        )
        assert driver.poll() is None, output()
        held = held_on_w1(db)
        (done_before,) = query(db, "SELECT COUNT(*) FROM task_runs WHERE status = 'done'")[0]

        podman("kill", workers["w1"])
        returncode = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    assert returncode == 0, output()
    assert f"{dask_driver.TASKS}/{dask_driver.TASKS}" in output()  # the driver's progress bar
    assert 0 < done_before < dask_driver.TASKS  # killed mid-run
    # Exactly one terminal row per task: 1,000 rows, all done, none twice.
    rows = query(db, "SELECT task_id, status, attempt, result FROM task_runs")
    assert sorted(r[0] for r in rows) == list(range(1, dask_driver.TASKS + 1))
    assert {r[1] for r in rows} == {"done"}
    assert query(db, "SELECT status, tasks_done, tasks_error FROM pipeline_runs") == [
        ("done", dask_driver.TASKS, 0)
    ]
    # The reruns are on record: every task w1 held was lost there and ran again on w2.
    lost = query(
        db,
        "SELECT task_id, attempt, status, error FROM task_attempts WHERE error LIKE ?",
        "%Dask worker running this attempt was lost%",
    )
    assert {r[0] for r in lost} >= held
    assert all(r[1:3] == (1, "error") for r in lost)
    by_id = {r[0]: r for r in rows}
    for task_id in held:
        assert by_id[task_id][2:] == (2, "w2"), by_id[task_id]
    assert query(db, "SELECT COUNT(*) FROM task_attempts")[0][0] >= len(held)
