"""Liveness is a lease: readers see a dead run as stale without writing; writers wait for it.

Expiry is simulated by writing ``heartbeat_at`` into the past in the test's own file, never by
sleeping through a lease.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pipeloom_observe
from pipeloom import TaskDef, TaskQueue, run_pipeline
from pipeloom.lease import DEFAULT_LEASE_S, owner_identity
from pipeloom.messages import SENTINEL, utc_now
from pipeloom.queue import MessageQueue
from pipeloom.writer import SQLiteWriter
from pipeloom_cli.app import app
from tests._harness import query
from tests.reliability._support import read_events, spawn_child, wait_for

runner = CliRunner()

HOUR_AGO = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 hour')"
NOW = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')"


def _noop(task: TaskDef, q: TaskQueue) -> None:
    """A run with no work: its writer only has to open the file."""


def _execute(db: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def _fingerprint(db: Path) -> tuple[str, str]:
    """Hashes of the database and of its WAL: all the data a reader could have changed.

    The ``-shm`` index is left out: every WAL reader maintains it, it holds no data.
    """
    wal = db.with_name(db.name + "-wal")
    logged = wal.read_bytes() if wal.exists() else b""
    return hashlib.sha256(db.read_bytes()).hexdigest(), hashlib.sha256(logged).hexdigest()


def _killed_run(tmp_path: Path) -> tuple[Path, int]:
    """A child process that started a run, committed task 5's start, and was SIGKILLed."""
    db, events = tmp_path / "dead.db", tmp_path / "dead.events"
    child = spawn_child("sigint2", db, events, 5)  # task 5 blocks for a minute
    try:
        wait_for(lambda: 5 in read_events(events)[0], "the blocking task's committed start")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    [(run_id, status)] = query(db, "SELECT id, status FROM pipeline_runs")
    assert status == "running"
    return db, run_id


def _status_json(db: Path, *args: str, code: int = 0) -> dict[str, Any]:
    result = runner.invoke(app, ["status", str(db), "--format", "json", *args])
    assert result.exit_code == code, result.output
    lines = result.stdout.strip().splitlines()
    loaded: dict[str, Any] = json.loads(lines[-1] if "--watch" in args else result.stdout)
    return loaded


@pytest.mark.timeout(60)
def test_a_killed_run_turns_stale_for_readers_without_writing_and_watch_ends(
    tmp_path: Path,
) -> None:
    db, run_id = _killed_run(tmp_path)
    [(lease_s, owner)] = query(db, "SELECT lease_s, owner FROM pipeline_runs")
    assert (lease_s, owner) == (DEFAULT_LEASE_S, owner_identity())

    # Within its lease (made long here, so the test cannot race the clock): live.
    _execute(db, f"UPDATE pipeline_runs SET heartbeat_at = {NOW}, lease_s = 3600")
    live = _status_json(db)["run"]
    assert (live["status"], live["stale"]) == ("running", False)

    # Its writer is dead, so no heartbeat comes: once the lease has passed it is stale.
    _execute(db, f"UPDATE pipeline_runs SET heartbeat_at = {HOUR_AGO}, lease_s = 15")
    before = _fingerprint(db)

    run = _status_json(db)["run"]
    assert (run["id"], run["status"], run["stale"]) == (run_id, "running", True)
    assert run["elapsed"] < 3600  # the clock stopped at the last heartbeat
    table = runner.invoke(app, ["status", str(db)])
    assert table.exit_code == 0, table.output
    assert "stale" in table.output and "no heartbeat since" in table.output
    listed = runner.invoke(app, ["status", str(db), "--runs"])
    assert "stale" in listed.output

    # --watch ends on it instead of waiting forever, and exits as a crashed run does (1)
    watched = _status_json(db, "--watch", "--interval", "0.05", code=1)["run"]
    assert watched["stale"] is True

    assert _fingerprint(db) == before, "a reader wrote to the file"
    assert query(db, "SELECT status FROM pipeline_runs") == [("running",)]


async def test_observe_shows_a_stale_run_without_writing(tmp_path: Path) -> None:
    db = tmp_path / "observed.db"
    run_pipeline([TaskDef(1, "a")], db, worker_fn=_noop, progress=False, handle_signals=False)
    _execute(
        db,
        "INSERT INTO pipeline_runs (name, status, started_at, heartbeat_at, lease_s, owner) "
        f"VALUES ('dead', 'running', {HOUR_AGO}, {HOUR_AGO}, 15, 'elsewhere')",
    )
    before = _fingerprint(db)
    ds = pipeloom_observe.build_datasette(db)
    await ds.invoke_startup()
    response = await ds.client.get("/observed/run_list.json?_shape=array")
    assert response.status_code == 200, response.text
    runs = {row["name"]: row for row in response.json()}
    assert (runs["dead"]["status"], runs["dead"]["stale"]) == ("stale", 1)  # drawn stale
    assert runs["dead"]["duration_s"] == 0  # stopped at its heartbeat, not growing
    assert (runs["pipeline"]["status"], runs["pipeline"]["stale"]) == ("done", 0)
    [latest] = (await ds.client.get("/observed/latest_run.json?_shape=array")).json()
    assert (latest["name"], latest["stale"]) == ("dead", 1)
    assert _fingerprint(db) == before


def _pid_never_alive() -> int:
    """A pid no process can have: pids are always below pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text())


def _foreign_run(db: Path, *, owner: str | None, heartbeat: str | None, host: str) -> int:
    """Record a running run with one running task, as another writer would have."""
    conn = sqlite3.connect(db)
    try:
        lease = "15" if heartbeat is not None else "NULL"
        cur = conn.execute(
            "INSERT INTO pipeline_runs (name, status, started_at, host, pid, heartbeat_at, "
            f"lease_s, owner) VALUES ('other', 'running', {NOW}, ?, ?, "
            f"{heartbeat or 'NULL'}, {lease}, ?)",
            (host, _pid_never_alive(), owner),
        )
        run_id = cur.lastrowid
        assert run_id is not None
        conn.execute(
            "INSERT INTO task_runs (run_id, task_id, name, status, started_at) "
            f"VALUES (?, 1, 'busy', 'running', {NOW})",
            (run_id,),
        )
        conn.commit()
        return run_id
    finally:
        conn.close()


def _statuses(db: Path, run_id: int) -> tuple[str, str]:
    [(run, task)] = query(
        db,
        "SELECT r.status, t.status FROM pipeline_runs r JOIN task_runs t ON t.run_id = r.id "
        "WHERE r.id = ?",
        run_id,
    )
    return str(run), str(task)


def _open_another_writer(db: Path) -> None:
    run_pipeline([], db, worker_fn=_noop, progress=False, handle_signals=False)


def test_a_live_lease_in_another_pid_namespace_is_not_interrupted_until_it_expires(
    tmp_path: Path,
) -> None:
    """Same host name, a pid that is gone here: a container sharing the host's network."""
    db = tmp_path / "shared.db"
    _open_another_writer(db)
    other_namespace = f"{socket.gethostname()} pidns=pid:[1] boot=another-boot"
    run_id = _foreign_run(db, owner=other_namespace, heartbeat=NOW, host=socket.gethostname())

    _open_another_writer(db)
    assert _statuses(db, run_id) == ("running", "running")

    _execute(db, f"UPDATE pipeline_runs SET heartbeat_at = {HOUR_AGO} WHERE id = ?", run_id)
    _open_another_writer(db)
    assert _statuses(db, run_id) == ("interrupted", "interrupted")
    [(error, total)] = query(
        db, "SELECT error, tasks_total FROM pipeline_runs WHERE id = ?", run_id
    )
    assert "no heartbeat since" in error
    assert total == 1


def test_an_expired_lease_is_interrupted_whatever_host_wrote_it(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    _open_another_writer(db)
    run_id = _foreign_run(db, owner="far-away pidns=? boot=?", heartbeat=HOUR_AGO, host="far-away")
    _open_another_writer(db)
    assert _statuses(db, run_id) == ("interrupted", "interrupted")


def test_a_dead_pid_of_this_very_namespace_is_interrupted_before_its_lease_expires(
    tmp_path: Path,
) -> None:
    db = tmp_path / "crashed.db"
    _open_another_writer(db)
    run_id = _foreign_run(db, owner=owner_identity(), heartbeat=NOW, host=socket.gethostname())
    _open_another_writer(db)
    assert _statuses(db, run_id) == ("interrupted", "interrupted")
    [(error,)] = query(db, "SELECT error FROM pipeline_runs WHERE id = ?", run_id)
    assert f"its process {_pid_never_alive()} is gone" in error


def test_rows_from_before_leases_keep_the_pid_rule(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    _open_another_writer(db)
    here = _foreign_run(db, owner=None, heartbeat=None, host=socket.gethostname())
    elsewhere = _foreign_run(db, owner=None, heartbeat=None, host="another-host")
    _open_another_writer(db)
    assert _statuses(db, here) == ("interrupted", "interrupted")
    assert _statuses(db, elsewhere) == ("running", "running")  # a pid means nothing there


@pytest.mark.timeout(30)
def test_the_heartbeat_moves_while_no_message_flows(tmp_path: Path) -> None:
    db = tmp_path / "idle.db"
    q = MessageQueue()
    writer = SQLiteWriter(db, q, lease=0.3)
    writer.start()
    try:
        assert writer.ready.wait(10)
        [(first, lease_s)] = query(db, "SELECT heartbeat_at, lease_s FROM pipeline_runs")
        assert lease_s == 0.3
        wait_for(
            lambda: query(db, "SELECT heartbeat_at FROM pipeline_runs")[0][0] > first,
            "a heartbeat from an idle writer",
        )
    finally:
        q.put(SENTINEL)
        writer.join(10)
    assert writer.error is None
    assert query(db, "SELECT status FROM pipeline_runs") == [("done",)]


@pytest.mark.parametrize("lease", [0, -1.0, float("inf"), float("nan")])
def test_a_lease_that_is_not_a_positive_number_is_refused(tmp_path: Path, lease: float) -> None:
    with pytest.raises(ValueError, match="lease="):
        SQLiteWriter(tmp_path / "x.db", MessageQueue(), lease=lease)


def test_sqlite_reads_pipelooms_timestamps() -> None:
    """If julianday() could not parse utc_now(), no run would ever look stale."""
    conn = sqlite3.connect(":memory:")
    (days,) = conn.execute("SELECT julianday(?)", (utc_now(),)).fetchone()
    conn.close()
    assert isinstance(days, float)
