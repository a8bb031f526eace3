"""Alerts: hooks fire once per final failure and once per run, in the driver, after commit;
a hook that raises or hangs never changes the record or the exit code; the webhook reaches a
real HTTP server."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeloom import Pipeline
from pipeloom.alerts import Alerts, RunSummary, TaskFailure
from pipeloom.notify import payload, webhook
from pipeloom.options import RunOptions
from tests._harness import query
from tests.cli._cli_support import PIPELINE_FILE, write
from tests.core import _unattended_tasks as tasks

EXECUTORS = ["threads", "processes"]


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]
    answer: int = 200

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.bodies.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(self.server.answer)  # type: ignore[attr-defined]
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    server.answer = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/hook"


@pytest.mark.parametrize("executor", EXECUTORS)
def test_hooks_fire_once_per_final_failure_and_once_per_run(tmp_path: Path, executor: str) -> None:
    db = tmp_path / "a.db"
    failures: list[TaskFailure] = []
    attempts: list[TaskFailure] = []
    ends: list[RunSummary] = []
    committed: list[int] = []

    def on_end(summary: RunSummary) -> None:
        # Called after the record is closed: the file already says how the run ended.
        committed.append(len(query(db, "SELECT 1 FROM pipeline_runs WHERE status = 'error'")))
        ends.append(summary)

    pipe = Pipeline("alerting", db=db, workers=3, executor=executor)
    pipe.map(tasks.every_third_fails, range(1, 10))
    pipe.on_run_end(on_end)
    pipe.on_task_failure(failures.append)
    pipe.on_task_failure(every_attempt=True)(attempts.append)
    result = pipe.run(progress=False)

    assert result.status == "error" and result.exit_code == 1
    assert sorted(f.task_id for f in failures if f.final) == sorted(result.failed_task_ids)
    assert len(failures) == 3 and all(f.final for f in failures)  # the first hook: finals only
    # every_attempt: two retried attempts and the final one, for each of the three tasks.
    assert sorted((f.task_id, f.attempt, f.final) for f in attempts) == sorted(
        (t, a, a == 3) for t in result.failed_task_ids for a in (1, 2, 3)
    )
    first = failures[0]
    assert first.error_line.startswith("ValueError: bad row ")
    assert first.status_command == f"pipeloom status {db} --run {result.run_id} --task {first.key}"
    assert len(ends) == 1 and committed == [1]
    summary = ends[0]
    assert (summary.run_id, summary.pipeline, summary.status) == (
        result.run_id,
        "alerting",
        "error",
    )
    assert summary.counts == {"done": 6, "error": 3} and summary.failed == 3 and not summary.ok
    assert [f.task_id for f in summary.failures] == sorted(result.failed_task_ids)
    assert summary.stop_reason is None and summary.exit_code == 1
    assert "pipeloom status" in summary.text() and "ValueError: bad row" in summary.text()
    assert query(db, "SELECT note FROM pipeline_runs") == [(None,)]  # no hook problem


def test_raising_and_hanging_hooks_change_nothing_and_are_noted(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    release = threading.Event()
    called: list[int] = []

    def raises(event: object) -> None:
        raise RuntimeError("receiver down")

    def hangs(event: object) -> None:
        called.append(1)
        release.wait(60)

    try:
        pipe = Pipeline("hooks", db=db, workers=2)
        pipe.map(tasks.every_third_fails, range(1, 7))
        alerts = Alerts(on_run_end=(raises, hangs), on_task_failure=(hangs, raises), timeout=0.2)
        result = pipe.run(progress=False, options=RunOptions(alerts=alerts))
    finally:
        release.set()
    # The record and the exit code are the run's own.
    assert result.status == "error" and result.exit_code == 1
    assert query(db, "SELECT status, tasks_error FROM pipeline_runs") == [("error", 2)]
    (note,) = query(db, "SELECT note FROM pipeline_runs")[0]
    assert "hook raises raised RuntimeError: receiver down" in note
    assert "hook hangs did not return within 0.2 s (not called again)" in note
    # Hung once, never called again in that run (neither for the second failure nor the end).
    assert called == [1]


def test_a_run_without_failures_fires_only_its_end(tmp_path: Path) -> None:
    db = tmp_path / "ok.db"
    seen: list[object] = []
    pipe = Pipeline("fine", db=db, workers=2)
    pipe.map(tasks.ok, range(5))
    pipe.on_task_failure(seen.append)
    pipe.on_run_end(seen.append)
    result = pipe.run(progress=False)
    assert result.ok
    assert len(seen) == 1 and isinstance(seen[0], RunSummary) and seen[0].ok


def test_webhook_reaches_a_real_http_server(tmp_path: Path, receiver: ThreadingHTTPServer) -> None:
    db = tmp_path / "w.db"
    pipe = Pipeline("posting", db=db, workers=2)
    pipe.map(tasks.every_third_fails, range(1, 5))
    pipe.on_run_end(webhook(_url(receiver)))  # on failure only (the default)
    result = pipe.run(progress=False)
    (body,) = receiver.bodies  # type: ignore[attr-defined]
    assert body["text"].startswith(f"pipeloom posting run {result.run_id}: error")
    assert body["summary"] == body["text"].splitlines()[0]
    record = body["pipeloom"]
    assert record["kind"] == "run_end" and record["run_id"] == result.run_id
    assert record["counts"] == {"done": 3, "error": 1} and record["exit_code"] == 1
    assert record["failures"][0]["error_line"] == "ValueError: bad row 3 in '/data/part-3.csv'"

    # A run that is ok sends nothing with on="failure", and its message with on="always".
    fine = Pipeline("posting-ok", db=db, workers=2)
    fine.map(tasks.ok, range(3))
    fine.on_run_end(webhook(_url(receiver)))
    fine.on_run_end(webhook(_url(receiver), on="always"))
    assert fine.run(progress=False).ok
    assert len(receiver.bodies) == 2  # type: ignore[attr-defined]
    assert receiver.bodies[-1]["pipeloom"]["ok"] is True  # type: ignore[attr-defined]


def test_webhook_refused_is_noted_not_raised(tmp_path: Path, receiver: ThreadingHTTPServer) -> None:
    receiver.answer = 500  # type: ignore[attr-defined]
    db = tmp_path / "r.db"
    pipe = Pipeline("refused", db=db, workers=2)
    pipe.map(tasks.every_third_fails, range(1, 4))
    pipe.on_run_end(webhook(_url(receiver)))
    result = pipe.run(progress=False)
    assert result.exit_code == 1 and len(receiver.bodies) == 1  # type: ignore[attr-defined]
    (note,) = query(db, "SELECT note FROM pipeline_runs")[0]
    assert "answered HTTP 500" in note and "/hook" not in note  # the URL's path may be secret


def test_task_failure_payload_is_one_line_text() -> None:
    failure = TaskFailure(
        run_id=7,
        pipeline="p",
        db_path="r.db",
        task_id=3,
        name="load",
        key="load:a.csv",
        status="error",
        attempt=2,
        final=True,
        error_line="ValueError: x",
        error="...",
        status_command="pipeloom status r.db --run 7 --task load:a.csv",
    )
    body = payload(failure)
    assert body["text"] == "pipeloom p run 7: task load:a.csv error on attempt 2: ValueError: x"
    assert body["pipeloom"]["kind"] == "task_failure"  # type: ignore[index]


def test_cli_notify_posts_the_run_summary(tmp_path: Path, receiver: ThreadingHTTPServer) -> None:
    import subprocess

    target = write(tmp_path / "pipe_file.py", PIPELINE_FILE)
    db = tmp_path / "cli.db"
    cmd = [
        sys.executable,
        "-m",
        "pipeloom_cli",
        "run",
        f"{target}:main",
        "--arg",
        "n=3",
        "--arg",
        "fail=true",
        "--db",
        str(db),
        "--notify",
        _url(receiver),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    (body,) = receiver.bodies  # type: ignore[attr-defined]
    assert body["pipeloom"]["pipeline"] == "from-file"
    assert body["pipeloom"]["status"] == "error"

    bad = subprocess.run(
        [*cmd[:-1], "ftp://nowhere"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert bad.returncode == 2 and "--notify" in bad.stderr and "http" in bad.stderr


def test_slow_failure_alerts_left_after_the_run_are_dropped_and_noted(tmp_path: Path) -> None:
    db = tmp_path / "slow.db"
    sent: list[int] = []

    def slow(failure: TaskFailure) -> None:
        # A tenth of its timeout, so a loaded machine never makes one call "hung" (with 0.08 s
        # of a 0.1 s timeout it did, and the hook was skipped, not dropped); 200 of them (10 s)
        # still outlast the run and the 1 s given after it by far.
        time.sleep(0.05)
        sent.append(failure.task_id)

    pipe = Pipeline("slow-hooks", db=db, workers=4)
    pipe.map(tasks.every_third_fails, range(1, 601))  # 200 final failures
    alerts = Alerts(on_task_failure=(slow,), timeout=0.5)
    result = pipe.run(progress=False, options=RunOptions(alerts=alerts))
    assert result.exit_code == 1 and len(result.failed_task_ids) == 200
    (note,) = query(db, "SELECT note FROM pipeline_runs")[0]
    dropped = 200 - len(sent)
    assert dropped > 0 and f"{dropped} failure alert(s) not sent" in note
    assert "did not return" not in note  # slow, never hung


HOOK_FILE = """
    from pipeloom import Pipeline

    pipe = Pipeline("hooked", db="hooked.db", workers=2)


    @pipe.task
    def work(ctx, n):
        return n


    pipe.map(work, range(3))


    @pipe.on_run_end
    def tell(summary):
        raise RuntimeError("receiver down")
"""


def test_a_failed_hook_is_noted_and_status_shows_it(tmp_path: Path) -> None:
    """A real hook that raises, in a run of the CLI (a subprocess); ``status`` (table, JSON,
    --run, --runs) shows the note the run row keeps, and the run stays ``done``, exit 0."""
    import subprocess

    from typer.testing import CliRunner

    from pipeloom_cli.app import app

    target = write(tmp_path / "hooked.py", HOOK_FILE)
    db = tmp_path / "hooked.db"
    ran = subprocess.run(
        [sys.executable, "-m", "pipeloom_cli", "run", f"{target}:pipe", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    noted = "hook tell raised RuntimeError: receiver down"

    def status(*args: str) -> str:
        shown = CliRunner().invoke(app, ["status", str(db), *args])
        assert shown.exit_code == 0, shown.output
        return shown.output

    for table in (status(), status("--run", "1"), status("--runs")):
        assert noted in " ".join(table.split()), table
    doc = json.loads(status("--format", "json"))
    assert doc["run"]["status"] == "done" and noted in doc["run"]["note"]
    runs = json.loads(status("--runs", "--format", "json"))
    assert noted in runs["runs"][0]["note"]
