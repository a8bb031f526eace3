"""Observe v2: the runs list, the run dashboards, canned queries per run, the task page.

Against a history written by real pipelines (tests/observe/_observe_support.make_mixed_db):
run 1 all done; run 2 error (traceback), timeout, retried, dead letter; run 3 fail_fast;
run 4 cancelled tasks; run 5 another pipeline.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeloom.status import FAILED
from pipeloom_observe.metadata import QUERIES, default_metadata
from pipeloom_observe.plugin import (
    HISTORY_DASHBOARD,
    RUN_DASHBOARD,
    STATUS_COLORS,
    format_duration,
    format_time,
)
from tests._harness import query
from tests.observe._observe_support import (
    MIXED_CHATTY_ITEM,
    MIXED_ERROR_LINE,
    MIXED_LOG_LIMIT,
    rows,
    started,
)

if TYPE_CHECKING:
    pass


async def test_the_runs_list_answers_in_one_glance(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    runs = await rows(ds, "/etl/run_list.json?_shape=array")
    assert [r["run_id"] for r in runs] == [5, 4, 3, 2, 1]
    by_id = {r["run_id"]: r for r in runs}
    assert (by_id[2]["status"], by_id[2]["done"], by_id[2]["failed"], by_id[2]["total"]) == (
        "error",
        5,
        3,
        8,
    )
    assert by_id[4]["status"] == "cancelled"
    assert all(r["duration_s"] > 0 and r["stale"] == 0 for r in runs)
    page = (await ds.client.get("/etl/run_list")).text
    # Colored statuses, the run id linked to its dashboard, params folded, SQL folded.
    assert f'style="background:{STATUS_COLORS["error"]}">error</span>' in page
    assert 'href="/-/pipeloom/etl/run/2"' in page
    assert "<details" in page and "3 params</summary>" in page
    assert "_show_sql=1" in page and "<textarea" not in page
    # Readable times: no "T", no fraction, no "+00:00" in the cell text.
    times = re.findall(r'<time class="pl-time" datetime="([^"]+)"[^>]*>([^<]+)</time>', page)
    assert times and all(shown == format_time(iso) and "T" not in shown for iso, shown in times)


async def test_canned_queries_take_a_run_and_default_to_the_newest(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    failed = await rows(ds, "/etl/failures.json?_shape=array&run_id=2")
    assert {(f["task_id"], f["status"]) for f in failed} == {
        (2, "error"),
        (4, "error"),
        (8, "timeout"),
    }
    assert all(f["status"] in FAILED for f in failed)
    [newest] = await rows(ds, "/etl/latest_run.json?_shape=array")
    assert (newest["run_id"], newest["name"]) == (5, "report")
    [chosen] = await rows(ds, "/etl/latest_run.json?_shape=array&run_id=4")
    assert (chosen["run_id"], chosen["done"], chosen["tasks"]) == (4, 5, 8)
    assert await rows(ds, "/etl/failures.json?_shape=array") == []  # run 5 failed nothing
    for name, canned in QUERIES.items():
        assert canned.get("hide_sql") is True, name


async def test_canned_queries_link_run_and_task_ids(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    page = (await ds.client.get("/etl/failures?run_id=2")).text
    assert 'href="/-/pipeloom/etl/task/2/4"' in page
    assert 'href="/-/pipeloom/etl/run/2"' in page
    # The error is folded: its last line as the summary, the traceback in monospace inside.
    assert f"<summary>{MIXED_ERROR_LINE}</summary>" in page
    assert '<pre class="pl-mono">Traceback' in page


async def test_slowest_tasks_leave_out_tasks_whose_end_is_not_their_work(
    tmp_path: Path, mixed_db: Path
) -> None:
    path = tmp_path / "etl.db"
    shutil.copy(mixed_db, path)
    conn = sqlite3.connect(path)
    # An interrupted task's finish is when its death was noticed: hours later, say.
    conn.execute(
        "UPDATE task_runs SET status = 'interrupted', finished_at = '2099-01-01T00:00:00+00:00' "
        "WHERE run_id = 2 AND task_id = 1"
    )
    conn.commit()
    conn.close()
    ds = await started(path)
    slowest = await rows(ds, "/etl/slowest_tasks.json?_shape=array&run_id=2")
    assert slowest and {s["run_id"] for s in slowest} == {2}
    assert 1 not in {s["task_id"] for s in slowest}
    assert {s["status"] for s in slowest} <= {"done", "error", "timeout"}
    seconds = [s["seconds"] for s in slowest]
    assert seconds == sorted(seconds, reverse=True)
    cancelled = await rows(ds, "/etl/slowest_tasks.json?_shape=array&run_id=4")
    assert {s["status"] for s in cancelled} == {"done"}


async def test_the_task_run_facet_names_runs_by_id(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    tasks = (await ds.client.get("/etl/task_runs.json?_facet=run_id")).json()
    labels = {str(f["label"]) for f in tasks["facet_results"]["run_id"]["results"]}
    assert labels == {"1", "2", "3", "4", "5"}


async def test_the_run_dashboard_shows_the_newest_run_or_the_chosen_one(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    default = await ds.client.get(f"/-/dashboards/{RUN_DASHBOARD}")
    assert default.status_code == 200
    chosen = (await ds.client.get(f"/-/dashboards/{RUN_DASHBOARD}?run_id=2")).text
    assert '<option value="2" selected>' in chosen
    charts = default_metadata("etl")["plugins"]["datasette-dashboards"][RUN_DASHBOARD]["charts"]
    for slug in ("run", "gantt", "failures", "slowest", "finished"):
        assert f'id="chart-{slug}"' in chosen
    gantt = charts["gantt"]
    for run_id, expected in ((2, 8), ("", 1)):
        bars = await rows(
            ds, "/etl.json?" + _qs({"sql": gantt["query"], "run_id": run_id, "_shape": "array"})
        )
        assert len(bars) == expected
    started_tasks = query(
        mixed_db,
        "SELECT task_id, status FROM task_runs WHERE run_id = 4 AND started_at IS NOT NULL",
    )
    bars = await rows(
        ds, "/etl.json?" + _qs({"sql": gantt["query"], "run_id": 4, "_shape": "array"})
    )
    assert sorted((b["task_id"], b["status"]) for b in bars) == sorted(started_tasks)


def test_every_status_has_its_own_color() -> None:
    from pipeloom.status import RUN_STATUSES, TASK_STATUSES

    assert set(TASK_STATUSES) | set(RUN_STATUSES) | {"stale"} == set(STATUS_COLORS)
    assert len(set(STATUS_COLORS.values())) == len(STATUS_COLORS)


def test_every_chart_colors_statuses_with_the_one_fixed_scale() -> None:
    dashboards = default_metadata("etl")["plugins"]["datasette-dashboards"]
    scales = []
    for dashboard in (dashboards[RUN_DASHBOARD], dashboards[HISTORY_DASHBOARD]):
        for chart in dashboard["charts"].values():
            text = json.dumps(chart.get("display", {}))
            for match in re.finditer(
                r'"scale": (\{"domain": \[[^]]*\], "range": \[[^]]*\]\})', text
            ):
                scales.append(json.loads(match.group(1)))
    assert len(scales) >= 4
    for scale in scales:
        assert scale == {"domain": list(STATUS_COLORS), "range": list(STATUS_COLORS.values())}


async def test_the_history_dashboard_shows_each_run_and_the_task_grid(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    page = await ds.client.get(f"/-/dashboards/{HISTORY_DASHBOARD}?name=etl")
    assert page.status_code == 200
    charts = default_metadata("etl")["plugins"]["datasette-dashboards"][HISTORY_DASHBOARD]["charts"]
    durations = await rows(
        ds,
        "/etl.json?" + _qs({"sql": charts["durations"]["query"], "name": "etl", "_shape": "array"}),
    )
    assert sorted(d["run_id"] for d in durations) == [1, 2, 3, 4]
    grid = await rows(
        ds, "/etl.json?" + _qs({"sql": charts["grid"]["query"], "name": "etl", "_shape": "array"})
    )
    cells = {(g["task_key"], g["run_id"]): g["status"] for g in grid}
    # load:3 failed in run 2 and succeeded in runs 1 and 3; load:0 always succeeded.
    assert (cells[("load:3", 1)], cells[("load:3", 2)]) == ("done", "error")
    assert cells[("slow:5", 2)] == "timeout"
    assert not any(key == "load:0" for key, _ in cells)
    flaky = {f["task_key"]: f for f in await rows(ds, "/etl/flaky_tasks.json?_shape=array")}
    assert (flaky["load:3"]["failed"], flaky["load:3"]["succeeded"]) == (1, 2)  # runs 1, 4
    assert (flaky["load:3"]["run_id"], flaky["load:3"]["task_id"]) == (2, 4)  # its failure
    assert (flaky["load:2"]["run_id"], flaky["load:2"]["task_id"]) == (3, 3)
    assert "load:0" not in flaky


async def test_the_task_page_shows_error_attempts_and_dead_letters(mixed_db: Path) -> None:
    ds = await started(mixed_db)
    page = await ds.client.get("/-/pipeloom/etl/task/2/4")
    assert page.status_code == 200
    html = page.text
    traceback = re.search(r'<pre class="pl-mono pl-traceback"[^>]*>(.*?)</pre>', html, re.S)
    assert traceback is not None
    assert traceback.group(1).startswith("Traceback (most recent call last):")
    assert MIXED_ERROR_LINE in traceback.group(1)
    attempts = re.search(r'<table class="rows-and-columns pl-attempts">(.*?)</table>', html, re.S)
    assert attempts is not None
    body = attempts.group(1).split("<tbody>", 1)[1]
    assert len(re.findall(r"<tr>", body)) == 2  # attempt 1 (retried) and 2
    assert 'href="/-/pipeloom/etl/task/1/4"' in html  # the same key in run 1
    logs = re.findall(r'<tr class="pl-log-(\w+)[^"]*">(.*?)</tr>', html, re.S)
    assert [(level, "#1" in row or "#2" in row) for level, row in logs] == [
        ("info", True),
        ("warning", True),
        ("info", True),
        ("warning", True),
    ]
    assert all("header checksum mismatch" in row for level, row in logs if level == "warning")
    [(chatty_id,)] = query(
        mixed_db,
        "SELECT task_id FROM task_runs WHERE run_id = 2 AND task_key = ?",
        f"load:{MIXED_CHATTY_ITEM}",
    )
    chatty = (await ds.client.get(f"/-/pipeloom/etl/task/2/{chatty_id}")).text
    kept = re.findall(r'<tr class="pl-log-info">', chatty)
    assert len(kept) == MIXED_LOG_LIMIT
    assert "more log record(s) of this task were dropped" in chatty
    rejected = (await ds.client.get("/-/pipeloom/etl/task/2/2")).text
    assert "LoadedRow" in rejected and "negative rows" in rejected
    assert (await ds.client.get("/-/pipeloom/etl/task/2/99")).status_code == 404
    # Dead letters link to their task.
    letters = (await ds.client.get("/etl/dead_letters")).text
    assert 'href="/-/pipeloom/etl/task/2/2"' in letters


@pytest.mark.parametrize(
    "path",
    [
        "/etl.json?sql=DELETE+FROM+task_runs",
        "/etl?sql=DELETE+FROM+task_runs",
        "/etl/task_runs?_where=no_such_column",
        "/etl/task_runs.json?_sort=no_such_column",
        "/etl/no_such_table",
    ],
)
async def test_a_rejected_query_logs_one_line(
    mixed_db: Path,
    path: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = await started(mixed_db)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        response = await ds.client.get(path)
    assert response.status_code in (400, 404, 500)
    out, err = capfd.readouterr()
    printed = [line for line in (out + err).splitlines() if line.strip()]
    logged = [r for r in caplog.records if r.name.startswith("pipeloom")]
    assert len(printed) + len(logged) == 1, (printed, [r.getMessage() for r in logged])
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.123, "0.12 s"), (12.34, "12.3 s"), (245, "4 m 05 s"), (7380, "2 h 03 m")],
)
def test_durations_read_as_people_read_them(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def _qs(params: dict[str, object]) -> str:
    from urllib.parse import urlencode

    return urlencode({key: str(value) for key, value in params.items()})


async def test_a_stale_run_is_flagged_and_a_live_run_shows_its_progress(
    tmp_path: Path, mixed_db: Path
) -> None:
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
    conn.commit()
    conn.close()
    ds = await started(path)
    runs = {r["run_id"]: r for r in await rows(ds, "/etl/run_list.json?_shape=array")}
    assert (runs[5]["status"], runs[5]["stale"]) == ("stale", 1)  # shown stale, not running
    # Its clock stopped at its last heartbeat (30 minutes in), as in `pipeloom status`.
    assert runs[5]["duration_s"] == pytest.approx(1800, abs=1)
    assert runs[5]["progress"] == pytest.approx(0.25)
    assert runs[4]["progress"] is None  # finished runs need no bar
    page = (await ds.client.get("/etl/run_list")).text
    assert f'style="background:{STATUS_COLORS["stale"]}">stale</span>' in page
    assert 'class="pl-progress"><span style="width:25%">' in page


async def test_observe_works_when_the_file_has_its_own_object_named_runs(
    tmp_path: Path, mixed_db: Path
) -> None:
    path = tmp_path / "etl.db"
    shutil.copy(mixed_db, path)
    conn = sqlite3.connect(path)
    conn.execute("DROP VIEW IF EXISTS runs")
    conn.execute("CREATE TABLE runs (sku TEXT)")  # the application's own, not pipeloom's
    conn.commit()
    conn.close()
    ds = await started(path)
    assert len(await rows(ds, "/etl/run_list.json?_shape=array")) == 5
    for page in (f"/-/dashboards/{RUN_DASHBOARD}", "/-/pipeloom/etl/task/2/4", "/etl/runs"):
        assert (await ds.client.get(page)).status_code == 200, page


async def test_throughput_has_at_most_120_bars_however_long_the_run(
    tmp_path: Path, mixed_db: Path
) -> None:
    path = tmp_path / "etl.db"
    shutil.copy(mixed_db, path)
    conn = sqlite3.connect(path)
    # Spread run 1's tasks over a 10-hour run: one task finishing every 75 minutes.
    conn.execute(
        "UPDATE pipeline_runs SET started_at = '2026-01-01T00:00:00+00:00', "
        "finished_at = '2026-01-01T10:00:00+00:00' WHERE id = 1"
    )
    conn.execute(
        "UPDATE task_runs SET finished_at = strftime('%Y-%m-%dT%H:%M:%S+00:00', "
        "'2026-01-01T00:00:00', '+' || (task_id * 75) || ' minutes') WHERE run_id = 1"
    )
    conn.commit()
    conn.close()
    ds = await started(path)
    chart = default_metadata("etl")["plugins"]["datasette-dashboards"][RUN_DASHBOARD]["charts"]
    sql = chart["finished"]["query"]
    bars = await rows(ds, "/etl.json?" + _qs({"sql": sql, "run_id": 1, "_shape": "array"}))
    assert sum(b["tasks"] for b in bars) == 8
    [width] = {b["to_s"] - b["from_s"] for b in bars}
    assert width in (300, 301)  # 36,000 s / 120 bars in whole seconds
    assert max(b["from_s"] for b in bars) // width <= 120
    short = await rows(ds, "/etl.json?" + _qs({"sql": sql, "run_id": 2, "_shape": "array"}))
    assert sum(b["tasks"] for b in short) == 8


async def test_a_task_page_of_a_file_in_the_old_layout_is_a_clear_404(tmp_path: Path) -> None:
    from tests.observe._observe_support import make_seed_db

    path = tmp_path / "seed.db"
    make_seed_db(path, rows=3)
    ds = await started(path)
    response = await ds.client.get("/-/pipeloom/seed/task/1/1")
    assert response.status_code == 404
    assert "pipeloom db upgrade" in response.text


async def test_the_run_dashboard_shows_a_pipelines_stages(tmp_path: Path) -> None:
    from tests.core.test_stages import etl

    db = tmp_path / "etl.db"
    etl(db, {3}, []).run(progress=False)  # parse:3 fails: load:3 and the summary are blocked
    ds = await started(db)
    charts = default_metadata("etl")["plugins"]["datasette-dashboards"][RUN_DASHBOARD]["charts"]
    page = (await ds.client.get(f"/-/dashboards/{RUN_DASHBOARD}")).text
    assert 'id="chart-stages"' in page
    stages = await rows(
        ds, "/etl.json?" + _qs({"sql": charts["stages"]["query"], "run_id": "", "_shape": "array"})
    )
    assert [
        (s["stage"], s["consumes"], s["done"], s["failed"], s["upstream_failed"], s["tasks"])
        for s in stages
    ] == [
        ("download", "", 5, 0, 0, 5),
        ("parse", "download", 4, 1, 0, 5),
        ("load", "parse", 4, 0, 1, 5),
        ("summarise", "load", 0, 0, 1, 1),
    ]
    bars = await rows(
        ds, "/etl.json?" + _qs({"sql": charts["gantt"]["query"], "run_id": "", "_shape": "array"})
    )
    # One band per stage, in the order the stages began; each bar names its stage and key.
    order = [b["stage"] for b in bars]
    assert order == sorted(order, key=["download", "parse", "load"].index)
    assert {b["task"] for b in bars if b["stage"] == "load"} >= {"load · load:1", "load · load:5"}
