"""pipeloom observe in a real browser (playwright + Debian chromium): the six questions.

One server and one browser for the module (an xdist group keeps its tests on one worker, in
order), over a history written by real pipelines with every outcome
(tests/observe/_observe_support.make_mixed_db: runs 1-5), then a 10,000-task run of three
stages that failed (run 6) and a stale run (run 7), written by the benchmarks' generator
(benchmarks/make_history.append_run); the live test starts a real pipeline (run 8). Each test
answers one question a data engineer asks, by reading the pages as they would.
"""

from __future__ import annotations

import importlib.util
import re
import select
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeloom.db import connect, init_schema
from pipeloom_observe.plugin import STATUS_COLORS
from tests._harness import query
from tests.observe._observe_support import MIXED_ERROR_LINE, make_mixed_db

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.xdist_group("observe_browser"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
]


def pipeloom_command() -> list[str]:
    script = shutil.which("pipeloom")
    return [script] if script else [sys.executable, "-m", "pipeloom_cli"]


def wait_until_up(url: str, server: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            out, err = server.communicate()
            pytest.fail(f"pipeloom observe exited {server.returncode}: {out}{err}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)  # polling with a deadline, not synchronising on time
    pytest.fail(f"pipeloom observe did not answer on {url} within {timeout} s")


def announced_url(server: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """Read the address the server prints once it has bound its port (port 0: any free one)."""
    assert server.stdout is not None
    ready, _, _ = select.select([server.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"pipeloom observe printed nothing within {timeout} s")
    line = server.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
    if match is None:
        out, err = server.communicate(timeout=10)
        pytest.fail(f"unexpected first line {line!r}: {out}{err}")
    return match.group(1)


@dataclass
class Served:
    base: str
    db: Path
    server: subprocess.Popen[str]


BIG_RUN = 6
STALE_RUN = 7
BIG_TASKS = 10_000


def add_big_and_stale_runs(db: Path) -> None:
    """Run 6: 10,000 tasks in three stages, some failing; run 7: stale (its writer died)."""
    from datetime import UTC, datetime, timedelta

    # The benchmarks' generator (a script folder, not a package on the test path).
    where = Path(__file__).resolve().parents[2] / "benchmarks" / "make_history.py"
    spec = importlib.util.spec_from_file_location("make_history", where)
    assert spec is not None and spec.loader is not None
    make_history = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_history)
    append_run = make_history.append_run
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        append_run(
            conn,
            BIG_RUN,
            name="warehouse",
            start=datetime.now(UTC) - timedelta(hours=5),
            tasks=BIG_TASKS,
            outcome="error",
        )
        append_run(
            conn,
            STALE_RUN,
            name="warehouse",
            start=datetime.now(UTC) - timedelta(hours=2),
            tasks=200,
            outcome="stale",
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def browser_and_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Browser, Served]]:
    """The server boots while the history is written and Chromium starts (the slow parts).

    pipeloom observe reads the file live, so the runs written after it started show up; the
    schema is there first, so it configures its queries and dashboards.
    """
    from playwright.sync_api import sync_playwright

    db = tmp_path_factory.mktemp("observe-browser") / "etl.db"
    conn = connect(db)
    try:
        init_schema(conn, db)
    finally:
        conn.close()
    server = subprocess.Popen(
        [*pipeloom_command(), "observe", str(db), "--port", "0", "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        make_mixed_db(db)
        add_big_and_stale_runs(db)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                base = announced_url(server)
                wait_until_up(f"{base}/", server)
                yield browser, Served(base, db, server)
            finally:
                browser.close()
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


@pytest.fixture(scope="module")
def served(browser_and_server: tuple[Browser, Served]) -> Served:
    return browser_and_server[1]


@pytest.fixture(scope="module")
def browser(browser_and_server: tuple[Browser, Served]) -> Browser:
    return browser_and_server[0]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    from playwright.sync_api import expect

    # Generous bounds, never paces: each check returns as soon as it holds. Under the whole
    # suite on 2 cores, the 10,000-task run's page once took longer than the 5 s default.
    expect.set_options(timeout=30_000)
    opened = browser.new_page(viewport={"width": 1280, "height": 900})
    opened.set_default_timeout(30_000)
    try:
        yield opened
    finally:
        opened.close()


def rgb(hex_color: str) -> str:
    """``#dc2626`` as the browser reports a computed color: ``rgb(220, 38, 38)``."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def run_rows(page: Page) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll('tr.pl-run')].map(tr => ({
            run: Number(tr.dataset.run),
            status: tr.dataset.status,
            color: getComputedStyle(tr.querySelector('.col-status .pl-status')).backgroundColor,
            started: tr.querySelector('.col-started').innerText.trim(),
            duration: tr.querySelector('.col-duration').innerText.trim(),
            why: tr.querySelector('.col-why').innerText.trim(),
        }))"""
    )
    return rows


def test_q1_which_runs_failed_or_stopped_and_why(page: Page, served: Served) -> None:
    """From the home page: filter to failed or stopped runs; each says why; open one."""
    from playwright.sync_api import expect

    page.goto(f"{served.base}/")
    expect(page).to_have_title("Runs: pipeloom run history")
    expect(page.locator("body")).not_to_contain_text("Edit SQL")
    expect(page.locator(".pl-nav")).to_contain_text("Times are UTC, 24-hour.")
    page.select_option("select[name=status]", "failed_or_stopped")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**/?*status=failed_or_stopped*")
    rows = {row["run"]: row for row in run_rows(page)}
    assert set(rows) == {STALE_RUN, BIG_RUN, 4, 3, 2}
    for row in rows.values():
        assert row["color"] == rgb(STATUS_COLORS[row["status"]]), row
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row["started"]), row
    assert rows[STALE_RUN]["status"] == "stale"
    assert "its process died" in rows[STALE_RUN]["why"]
    assert "(to its last heartbeat)" in rows[STALE_RUN]["duration"]
    assert "stopped after the first failure (fail_fast)" in rows[3]["why"]
    assert "5 not started" in rows[3]["why"]
    assert "first failure: load:2" in rows[3]["why"]
    assert "first failure:" in rows[BIG_RUN]["why"] and "more)" in rows[BIG_RUN]["why"]
    # Nothing is clipped at 1280 px: the page does not scroll sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.locator("tr.pl-run[data-run='3'] .pl-first-failure a").first.click()
    expect(page.locator("pre.pl-traceback")).to_contain_text("connection reset by peer")


def test_q2_what_failed_across_runs_grouped_by_error(page: Page, served: Served) -> None:
    from playwright.sync_api import expect

    page.goto(f"{served.base}/")
    page.get_by_role("link", name="Failures across runs").click()
    groups = page.locator("tr.pl-failure-group")
    corrupt = groups.filter(has_text="ValueError: partition N has a corrupt header")
    expect(corrupt).to_have_count(1)
    # One run of the mixed history (task 4 of run 2) and the big run's (generated) ones.
    count = int(corrupt.locator(".col-count").inner_text())
    assert count >= 1
    bars = corrupt.locator(".pl-spark-bar")
    assert bars.count() >= 1
    assert {rgb(STATUS_COLORS["error"])} == set(
        bars.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    )
    expect(groups.filter(has_text="connection reset by peer")).to_have_count(1)
    corrupt.locator(".col-example a").click()
    expect(page.locator("h1")).to_contain_text("error")
    expect(page.locator("pre.pl-traceback")).to_contain_text("corrupt header")


def test_q3_a_10000_task_run_reads_as_stage_lanes_with_drill_down(
    page: Page, served: Served
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{served.base}/-/pipeloom/etl/run/{BIG_RUN}")
    lanes = page.locator(".pl-lane")
    expect(lanes).to_have_count(3)
    assert [lanes.nth(i).get_attribute("data-stage") for i in range(3)] == [
        "extract",
        "transform",
        "load",
    ]
    expect(lanes.nth(0).locator(".pl-lane-tasks")).to_have_text("4000 tasks")
    expect(page.locator("#pl-run-facts")).to_contain_text("10000 planned")
    # One page, not 10,000 slivers: it fits a few screens.
    assert page.evaluate("document.body.scrollHeight") < 4000
    fills = page.locator(".pl-bucket > span").evaluate_all(
        "els => [...new Set(els.map(e => getComputedStyle(e).backgroundColor))]"
    )
    assert set(fills) <= {rgb(color) for color in STATUS_COLORS.values()}
    expect(page.locator("#pl-retried")).to_contain_text("throttled (HTTP 429)")
    expect(page.locator("#pl-slowest tbody tr")).to_have_count(10)
    # Drill down: a slice of the transform lane lists exactly the tasks it counts.
    transform = lanes.nth(1).locator(".pl-bucket")
    totals = transform.evaluate_all("els => els.map(e => Number(e.dataset.total))")
    slice_ = next(i for i, n in enumerate(totals) if n > 0 and 0 < i < len(totals) - 1)
    transform.nth(slice_).click()
    page.wait_for_url("**/run/6/tasks?*")
    expect(page.locator("#pl-summary")).to_contain_text(f"{totals[slice_]} task")
    shown = page.locator("table.pl-task-list tbody tr")
    expect(shown).to_have_count(min(100, totals[slice_]))
    assert set(shown.locator("td:nth-child(3)").all_inner_texts()) == {"transform"}


def test_q4_how_two_runs_of_a_pipeline_differ(page: Page, served: Served) -> None:
    from playwright.sync_api import expect

    page.goto(f"{served.base}/-/pipeloom/etl/run/2")
    page.get_by_role("link", name=re.compile("Compare with the previous run")).click()
    page.wait_for_url("**/compare?a=1&b=2")
    expect(page.locator("tr.pl-compare-stage")).to_have_count(2)  # load and slow
    changed = page.locator("table.pl-changed tbody tr").filter(has_text="load:3")
    expect(changed.locator(".pl-status")).to_have_text(["done", "error"])


def test_q5_a_live_run_is_followed_without_reloading_and_a_stale_one_says_so(
    page: Page, served: Served
) -> None:
    from playwright.sync_api import expect

    from pipeloom import Pipeline

    page.goto(f"{served.base}/-/pipeloom/etl/run/{STALE_RUN}")
    expect(page.locator("#pl-live")).to_contain_text("Stale: no heartbeat since")
    expect(page.locator("#pl-run-status")).to_have_text("stale")

    release = threading.Event()
    pipe = Pipeline("live", db=served.db, workers=2)

    @pipe.task
    def export(ctx: Any, item: int) -> int:
        if item >= 3:
            release.wait(30)
        return item

    pipe.map(export, range(8))
    thread = threading.Thread(target=pipe.run, kwargs={"progress": False}, daemon=True)
    thread.start()
    try:
        run_id = wait_for(
            lambda: query(
                served.db, "SELECT id FROM pipeline_runs WHERE name = 'live' AND tasks_done >= 3"
            )
        )[0][0]
        page.goto(f"{served.base}/-/pipeloom/etl/run/{run_id}")
        expect(page.locator("#pl-live")).to_contain_text("Live: following this run")
        page.evaluate("window.plSamePage = true")
        release.set()
        expect(page.locator("#pl-run-status")).to_have_text("done", timeout=20_000)
        expect(page.locator("#pl-live")).to_contain_text("This run ended while you watched")
        expect(page.locator(".pl-lane .pl-count")).to_have_text("done 8")
        assert page.evaluate("window.plSamePage") is True  # polled, never reloaded
    finally:
        release.set()
        thread.join(30)


def wait_for(probe: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)  # polling with a deadline, not synchronising on time
    pytest.fail(f"condition not met within {timeout} s")


def test_the_run_dashboard_draws_one_gantt_bar_per_task_in_its_status_color(
    page: Page, served: Served
) -> None:
    from playwright.sync_api import expect

    bars = "#chart-gantt g.mark-rect.role-mark path"
    page.goto(f"{served.base}/-/dashboards/run?run_id=2")
    started = query(
        served.db, "SELECT status FROM task_runs WHERE run_id = 2 AND started_at IS NOT NULL"
    )
    expect(page.locator(bars)).to_have_count(len(started), timeout=15_000)
    fills = page.locator(bars).evaluate_all("paths => paths.map(p => p.getAttribute('fill'))")
    assert sorted(fills) == sorted(STATUS_COLORS[status] for (status,) in started)
    expect(page.locator("#chart-run")).to_contain_text("#2 etl")
    expect(page.locator("#chart-failures")).to_contain_text(MIXED_ERROR_LINE)
    # A stopped run's card says why in full: nothing clipped at 1280 px.
    page.goto(f"{served.base}/-/dashboards/run?run_id=3")
    card = page.locator("#chart-run p")
    expect(card).to_contain_text("stopped after the first failure (fail_fast)", timeout=15_000)
    assert card.evaluate("p => p.scrollWidth <= p.parentElement.clientWidth")


def test_q6_a_task_page_shows_traceback_attempts_logs_dead_letters_origin_params(
    page: Page, served: Served
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{served.base}/-/pipeloom/etl/task/2/4")
    traceback = page.locator("pre.pl-traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text(MIXED_ERROR_LINE)
    font = traceback.evaluate("el => getComputedStyle(el).fontFamily")
    assert "mono" in font.lower(), font
    attempts = page.locator("table.pl-attempts tbody tr")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("error")
    expect(page.locator("h1")).to_contain_text("load:3")
    logs = page.locator("table.pl-logs tr")
    expect(logs).to_have_count(4)  # two lines per attempt, from ctx.log
    expect(page.locator("table.pl-logs tr.pl-log-warning").first).to_contain_text(
        "header checksum mismatch"
    )
    log_font = logs.first.locator("td").first.evaluate("el => getComputedStyle(el).fontFamily")
    assert "mono" in log_font.lower(), log_font
    expect(page.locator("#other-runs ~ table")).to_contain_text("#1")
    # Each log line names its attempt; the run's parameters and where the result came from.
    assert logs.locator("td:nth-child(2)").all_inner_texts() == ["#1", "#1", "#2", "#2"]
    expect(page.locator(".pl-params")).to_contain_text("s3://bucket/nightly")
    expect(page.locator(".pl-origin")).to_have_text("ran in this run")
    page.goto(f"{served.base}/-/pipeloom/etl/task/2/2")  # its row was refused by the handler
    expect(page.locator("table.pl-dead-letters tbody tr")).to_have_count(1)
    expect(page.locator("table.pl-dead-letters")).to_contain_text("cannot have negative rows")


def test_a_rejected_query_is_one_line_on_the_terminal_and_loopback_no_warning(
    served: Served,
) -> None:
    """Last in the module: it stops the shared server to read everything it printed."""
    try:
        urllib.request.urlopen(f"{served.base}/etl.json?sql=DELETE+FROM+task_runs", timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        exc.close()
    else:
        pytest.fail("a DELETE through the query page was not refused")
    served.server.terminate()
    out, err = served.server.communicate(timeout=10)
    printed = [line for line in (out + err).splitlines() if line.strip()]
    assert len(printed) == 1, printed
    assert "DELETE" in printed[0] or "must be a SELECT" in printed[0]
    assert "warning: serving on" not in err
