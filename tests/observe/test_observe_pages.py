"""Observe v3: pipeloom's own pages (runs home, failures across runs, run, drill-down, compare).

Against histories written by real pipelines: the mixed history (run 1 all done; run 2 error
with a traceback, timeout, retried, dead letter; run 3 fail_fast; run 4 cancelled tasks; run 5
another pipeline) and a staged ETL (download -> parse -> load -> summarise) resumed once.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from pipeloom.status import STOP_TEXT
from pipeloom_observe.colors import STATUS_COLORS
from pipeloom_observe.plugin.history import error_signature
from tests.observe._observe_support import MIXED_ERROR_LINE, started


def run_rows(page: str) -> dict[int, str]:
    """The runs list's rows by run id: each row's HTML."""
    found = re.findall(r'<tr class="pl-run" data-run="(\d+)".*?</tr>', page, flags=re.S)
    rows = re.split(r'(?=<tr class="pl-run" data-run=")', page)[1:]
    return {int(run): row.split("</tr>")[0] for run, row in zip(found, rows, strict=True)}


async def get(ds: Any, path: str, status: int = 200) -> str:
    response = await ds.client.get(path)
    assert response.status_code == status, response.text[:500]
    return str(response.text)


async def json_of(ds: Any, path: str) -> dict[str, Any]:
    response = await ds.client.get(path)
    assert response.status_code == 200, response.text[:500]
    found: dict[str, Any] = response.json()
    return found


@pytest.fixture(scope="module")
def staged_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run 1: parse:3 fails (load:3, summarise blocked); run 2 resumes it and succeeds."""
    from tests.core.test_stages import etl

    db = tmp_path_factory.mktemp("observe-staged") / "etl.db"
    etl(db, {3}, []).run(progress=False)
    etl(db, set(), []).run(progress=False, resume=True)
    return db


async def test_the_home_page_is_the_runs_with_why_each_stopped(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    page = await get(ds, "/")
    assert "<title>Runs: pipeloom run history</title>" in page  # not the SQL
    assert "Custom SQL query" not in page and "Edit SQL" not in page
    assert "Times are UTC, 24-hour." in page
    rows = run_rows(page)
    assert list(rows) == [5, 4, 3, 2, 1]
    # How long each run took, oldest first, one bar each in its status color.
    bars = re.findall(r'class="pl-duration-bar"[^>]*data-run="(\d+)".*?background:([^"]+)"', page)
    assert [int(run) for run, _ in bars] == [1, 2, 3, 4, 5]
    assert dict(bars)["2"] == STATUS_COLORS["error"]
    # fail_fast: the reason in words, and the task that failed first, linked to its page.
    assert STOP_TEXT["fail_fast"] in rows[3]
    assert "first failure:" in rows[3] and 'href="/-/pipeloom/etl/task/3/' in rows[3]
    assert "connection reset by peer" in rows[3]
    # A task failure shows its first failure (and how many more) without opening the run.
    assert "first failure:" in rows[2] and "(+2 more)" in rows[2]
    assert "first failure" not in rows[1]
    assert 'href="/-/pipeloom/etl/run/2"' in rows[2]
    assert "4 runs" not in page and "5 runs match" in page


async def test_the_runs_filter_by_pipeline_status_and_dates(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    assert list(run_rows(await get(ds, "/?status=failed"))) == [3, 2]
    assert list(run_rows(await get(ds, "/?status=failed_or_stopped"))) == [4, 3, 2]
    assert list(run_rows(await get(ds, "/?pipeline=report"))) == [5]
    assert list(run_rows(await get(ds, "/?status=done&pipeline=etl"))) == [1]
    today = sqlite3.connect(mixed_db).execute(
        "SELECT substr(MAX(started_at), 1, 10) FROM pipeline_runs"
    )
    day = today.fetchone()[0]
    assert len(run_rows(await get(ds, f"/?since={day}&until={day}"))) == 5
    assert "No run matches." in await get(ds, "/?since=2999-01-01")
    # A mistyped filter is a 400 naming it, not a 500.
    assert "use a date as YYYY-MM-DD" in await get(ds, "/?since=yesterday", status=400)
    assert "use one of" in await get(ds, "/?status=broken", status=400)
    assert list(run_rows(await get(ds, "/-/pipeloom/etl/runs?before=3"))) == [2, 1]


async def test_stopped_and_stale_runs_read_as_such(tmp_path: Path, mixed_db: Path) -> None:
    path = tmp_path / "etl.db"
    shutil.copy(mixed_db, path)
    conn = sqlite3.connect(path)
    # Run 5 still 'running' in the file, its writer silent for an hour (lease 15 s).
    conn.execute(
        "UPDATE pipeline_runs SET status = 'running', finished_at = NULL, tasks_total = 4, "
        "started_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-90 minutes'), "
        "heartbeat_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-60 minutes'), "
        "lease_s = 15 WHERE id = 5"
    )
    conn.execute("UPDATE pipeline_runs SET stop_reason = 'sigint' WHERE id = 4")
    conn.commit()
    conn.close()
    ds = await started(path)
    rows = run_rows(await get(ds, "/?status=stopped"))
    assert list(rows) == [5, 4, 3]
    assert 'data-status="stale"' in rows[5] and STOP_TEXT["crashed"] in rows[5]
    assert "(to its last heartbeat)" in rows[5]
    assert STOP_TEXT["sigint"] in rows[4]
    assert list(run_rows(await get(ds, "/?status=stale"))) == [5]
    live = await json_of(ds, "/-/pipeloom/etl/run/5.json")
    assert (live["run"]["shown_status"], live["live"]) == ("stale", False)  # stops polling
    assert live["run"]["duration_s"] == pytest.approx(1800, abs=1)


def test_errors_group_by_their_last_line_with_numbers_as_n() -> None:
    assert error_signature("Traceback ...\n  File x\nValueError: partition 3 is bad\n") == (
        "ValueError: partition N is bad"
    )
    assert error_signature("part-12.parquet took 30 s") == "part-N.parquet took N s"
    assert error_signature("sqlite3.IntegrityError: id 0xff") == "sqlite3.IntegrityError: id 0xN"


async def test_failures_across_runs_group_by_error_with_an_example_each(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    page = await get(ds, "/-/pipeloom/etl/failures")
    groups = re.findall(r'<tr class="pl-failure-group">(.*?)</tr>', page, flags=re.S)
    by_error = {re.search(r'<span class="pl-mono"[^>]*>([^<]+)</span>', g)[1]: g for g in groups}  # type: ignore[index]
    corrupt = error_signature(MIXED_ERROR_LINE)
    assert corrupt in by_error
    assert 'href="/-/pipeloom/etl/task/2/4"' in by_error[corrupt]  # its example task
    assert "connection reset by peer" in " ".join(by_error)  # run 3's failure
    assert "failed tasks in 2 runs (of the 5 looked at)" in page
    only = await get(ds, "/-/pipeloom/etl/failures?pipeline=report")
    assert "No failed task in these runs." in only


async def test_the_run_json_has_stage_lanes_and_what_the_page_shows(staged_db: Path) -> None:
    ds = await started(staged_db)
    first = await json_of(ds, "/-/pipeloom/etl/run/1.json")
    lanes = {lane["stage"]: lane for lane in first["lanes"]}
    assert list(lanes) == ["download", "parse", "load", "summarise"]
    assert lanes["parse"]["counts"] == {"done": 4, "error": 1}
    assert lanes["load"]["counts"] == {"done": 4, "upstream_failed": 1}
    assert lanes["load"]["consumes"] == "parse"
    for lane in lanes.values():
        assert len(lane["buckets"]) == first["buckets"]
        assert sum(sum(b.values()) for b in lane["buckets"]) == lane["tasks"]
    assert [f["task_key"] for f in first["failures"]] == ["parse:3"]
    assert first["live"] is False and first["run"]["status"] == "error"
    page = await get(ds, "/-/pipeloom/etl/run/1")
    assert 'id="pl-run-data"' in page and "Edit SQL" not in page
    assert 'href="/-/pipeloom/etl/compare?a=' not in page  # run 1 has no previous run
    assert "/-/pipeloom/etl/compare?a=1&amp;b=2" in await get(ds, "/-/pipeloom/etl/run/2")


async def test_a_run_shows_its_retried_and_slowest_tasks(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    run = await json_of(ds, "/-/pipeloom/etl/run/2.json")
    retried = {t["task_key"]: t for t in run["retried"]}
    assert (retried["load:6"]["status"], retried["load:6"]["attempt"]) == ("done", 2)
    assert "throttled, try again" in retried["load:6"]["first_error"]
    assert retried["load:3"]["status"] == "error"  # failed on both attempts
    assert run["retried_tasks"] >= 1
    assert len(run["slowest"]) <= 10
    seconds = [t["seconds"] for t in run["slowest"]]
    assert seconds == sorted(seconds, reverse=True)
    assert {f["status"] for f in run["failures"]} == {"error", "timeout"}


async def test_a_stage_drills_down_to_its_tasks_in_a_time_window(staged_db: Path) -> None:
    ds = await started(staged_db)
    run = await json_of(ds, "/-/pipeloom/etl/run/1.json")
    page = await get(ds, "/-/pipeloom/etl/run/1/tasks?stage=parse")
    assert "5 tasks" in page and page.count('href="/-/pipeloom/etl/task/1/') == 5
    failed = await get(ds, "/-/pipeloom/etl/run/1/tasks?stage=parse&status=error")
    assert "1 task " in failed and "page 3 is malformed" in failed
    # The window of the run: everything; a window after its end: nothing.
    everything = await get(ds, "/-/pipeloom/etl/run/1/tasks?" + urlencode({"from": run["start"]}))
    assert "16 tasks" in everything
    after = await get(ds, "/-/pipeloom/etl/run/1/tasks?from=2999-01-01T00:00:00Z")
    assert "0 tasks" in after
    assert "use a whole number" in await get(ds, "/-/pipeloom/etl/run/1/tasks?page=x", status=400)


async def test_two_runs_compare_by_stage_and_by_task(staged_db: Path) -> None:
    ds = await started(staged_db)
    page = await get(ds, "/-/pipeloom/etl/compare")  # newest with the one before
    assert "#1 etl" in page and "#2 etl" in page
    stages = re.findall(r'<tr class="pl-compare-stage" data-stage="([^"]+)">', page)
    assert stages == ["download", "parse", "load", "summarise"]
    changed = re.findall(r"<tr><td>([^<]+)</td>", page.split('id="changed"')[1])
    # Resumed: the done tasks are skipped now; the failed and blocked ones ran and are done.
    assert {"parse:3", "load:3", "summarise:all load"} <= set(changed)
    assert "4 runs" not in page
    assert "has no run 99" in await get(ds, "/-/pipeloom/etl/compare?a=1&b=99", status=404)


async def test_a_task_page_says_where_its_result_came_from_and_the_run_params(
    staged_db: Path, mixed_db: Path
) -> None:
    ds = await started(staged_db)
    run = await json_of(ds, "/-/pipeloom/etl/run/2.json")
    assert run["lanes"][0]["counts"].get("skipped", 0) >= 1
    page = await get(ds, "/-/pipeloom/etl/run/2/tasks?stage=download")
    task_id = re.search(r'href="/-/pipeloom/etl/task/2/(\d+)"', page)[1]  # type: ignore[index]
    task = await get(ds, f"/-/pipeloom/etl/task/2/{task_id}")
    assert "its result is from" in task and 'href="/-/pipeloom/etl/run/1"' in task
    mixed = await started(mixed_db)
    task = await get(mixed, "/-/pipeloom/etl/task/2/4")
    assert "Run parameters" in task and "s3://bucket/nightly" in task
    assert "ran in this run" in task


async def test_a_plain_sqlite_file_keeps_datasettes_home(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    ds = await started(path)
    home = await get(ds, "/")
    assert "plain" in home and "pl-runs" not in home
    assert "not a run database" in await get(ds, "/-/pipeloom/plain/runs", status=404)


async def test_the_run_json_carries_the_run_note(mixed_db: Path, tmp_path: Path) -> None:
    """The run page shows the run row's note (a stop's unstarted tasks, a failed alert hook)."""
    db = tmp_path / "etl.db"
    shutil.copy(mixed_db, db)  # the shared file is read-only for tests
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE pipeline_runs SET note = 'hook tell raised RuntimeError: down' WHERE id = 1"
    )
    notes = dict(conn.execute("SELECT id, note FROM pipeline_runs").fetchall())
    conn.commit()
    conn.close()
    ds = await started(db)
    for run_id, note in notes.items():
        shown = await json_of(ds, f"/-/pipeloom/etl/run/{run_id}.json")
        assert shown["run"]["note"] == note
    page = await get(ds, "/-/pipeloom/etl/run/1")
    script = await get(ds, re.findall(r'src="([^"]*pipeloom_run\.js)"', page)[0])
    assert 'rows.push(["Note", esc(r.note)])' in script
