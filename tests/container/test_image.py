"""The image: the demo records on a /data volume, observe serves on a published port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeloom import run_pipeline
from pipeloom.demo import DemoTask, demo_worker
from tests._harness import query
from tests.container._podman import Podman, free_port, http_get, wait_for

pytestmark = [
    pytest.mark.container,
    pytest.mark.timeout(900),  # the first test may build the image from scratch
    pytest.mark.xdist_group("container"),
]

IMAGE_UID = 10001
"""The image's non-root user (Containerfile)."""


def data_volume(tmp_path: Path) -> Path:
    """A host directory for /data that the image's user may write to."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    return data


def test_demo_records_its_run_on_the_data_volume(
    image: str, podman: Podman, tmp_path: Path
) -> None:
    data = data_volume(tmp_path)

    out = podman.run(
        "demo",
        *("-v", f"{data}:/data", image),
        *("demo", "--db", "/data/wal_demo.db", "-n", "10", "-vv"),
    )

    db = data / "wal_demo.db"
    assert query(db, "SELECT status, COUNT(*) FROM task_runs GROUP BY status") == [("done", 10)]
    assert query(db, "SELECT status, tasks_done FROM pipeline_runs") == [("done", 10)]
    assert "INFO" in out  # -vv reached the logging set up in the container
    assert "pipeloom observe /data/wal_demo.db" in out  # the summary names the file
    assert db.stat().st_uid == IMAGE_UID  # written by the image's user, not root


def test_observe_serves_the_run_history_on_a_published_port(
    image: str, podman: Podman, tmp_path: Path
) -> None:
    data = data_volume(tmp_path)
    tasks = [DemoTask(i, f"load-{i}", steps=2, delay=0) for i in range(1, 6)]
    run_pipeline(tasks, data / "runs.db", worker_fn=demo_worker, progress=False)
    port = free_port()

    name = podman.start(
        "observe",
        *("-p", f"127.0.0.1:{port}:8001", "-v", f"{data}:/data", image),
        *("observe", "/data/runs.db", "--host", "0.0.0.0"),
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: http_get(f"{base}/")[0] == 200,
        f"Datasette on {base}",
        explain=lambda: podman.logs(name),
    )

    status, body = http_get(f"{base}/runs/task_runs.json?_shape=array&_sort=task_id")
    assert status == 200
    rows = json.loads(body)
    assert [(r["name"], r["status"]) for r in rows] == [(f"load-{i}", "done") for i in range(1, 6)]
    status, page = http_get(f"{base}/runs/pipeline_runs")
    assert status == 200
    assert b"pipeline_runs" in page
