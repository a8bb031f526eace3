"""Every document ``pipeloom status`` prints is one snapshot, even beside a live writer.

A run in another process commits short tasks all the time while ``status --format json``
and ``status --watch --format json`` read the file: in every document (and every ``--watch``
frame, applied to the ones before it) the run's counts equal the tasks it lists. Read in
separate statements, the counts lagged the rows by whatever committed in between.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from pipeloom.history import HistoryReader
from tests._harness import query
from tests.e2e._cli_e2e_support import clean_env, pipeloom, pipeloom_command
from tests.reliability._support import child_output, read_events, spawn_child, wait_for


def _agrees(counts: dict[str, int], statuses: list[str], where: str) -> None:
    assert Counter(statuses) == Counter(counts), f"{where}: counts {counts}"


def test_status_documents_agree_with_themselves_beside_a_live_writer(tmp_path: Path) -> None:
    db, events = tmp_path / "live.db", tmp_path / "live.events"
    child = spawn_child("steady", db, events, 0)
    watch_out = tmp_path / "watch.jsonl"
    watch: subprocess.Popen[bytes] | None = None
    try:
        wait_for(
            lambda: len(read_events(events)[1]) >= 200 or child.poll() is not None,
            "the live run to commit 200 finishes",
        )
        assert child.poll() is None, child_output(events)
        with watch_out.open("wb") as out:
            watch = subprocess.Popen(
                [
                    *pipeloom_command(),
                    "status",
                    str(db),
                    "--watch",
                    "-f",
                    "json",
                    "--interval",
                    "0.05",
                ],
                env=clean_env(),
                stdout=out,
                stderr=subprocess.PIPE,
            )
        # The library's reader: many snapshots, each one document.
        with HistoryReader(db) as reader:
            for i in range(40):
                with reader.snapshot() as snap:
                    run = snap.run()
                    assert run is not None
                    tasks = snap.tasks(run.id)
                    stages = snap.stages(run.id)
                _agrees(run.counts, [t.status for t in tasks], f"snapshot {i}")
                assert stages == {}  # a low-level run records no stages
        # The command, two documents while the run goes on.
        seen_running = 0
        for i in range(2):
            result = pipeloom("status", str(db), "--format", "json", cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            doc = json.loads(result.stdout)
            _agrees(doc["run"]["counts"], [t["status"] for t in doc["tasks"]], f"status {i}")
            assert doc["tasks_not_shown"] == 0
            seen_running += doc["run"]["status"] == "running"
        assert seen_running >= 1, "the run ended before status read it live"
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
        child.wait(timeout=60)
        if watch is not None:
            try:
                _, err = watch.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                watch.kill()
                watch.communicate()
                raise
    assert child.returncode == 130, child_output(events)
    assert watch.returncode == 130, err  # it exits with the watched run's outcome: Ctrl-C

    frames = [json.loads(line) for line in watch_out.read_text().splitlines()]
    assert [f["type"] for f in frames[:1] + frames[-1:]] == ["snapshot", "end"]
    assert len(frames) >= 4, "the watch saw too few changes to tell"
    state: dict[int, str] = {}
    for i, frame in enumerate(frames):
        state.update((t["task_id"], t["status"]) for t in frame.get("tasks", []))
        _agrees(frame["run"]["counts"], list(state.values()), f"--watch frame {i}")
    _agrees(_final_counts(db), list(state.values()), "the file after the run")


def _final_counts(db: Path) -> dict[str, Any]:
    return dict(query(db, "SELECT status, count(*) FROM task_runs GROUP BY status"))
