"""pipeloom observe in a real browser (playwright + Debian chromium): the pages people read.

One server and one browser for the module (an xdist group keeps its tests on one worker, in
order), over a history written by real pipelines with every outcome
(tests/observe/_observe_support.make_mixed_db).
"""

from __future__ import annotations

import re
import select
import shutil
import sqlite3
import subprocess
import sys
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

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, params).fetchall()
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
    opened = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        yield opened
    finally:
        opened.close()


def rgb(hex_color: str) -> str:
    """``#dc2626`` as the browser reports a computed color: ``rgb(220, 38, 38)``."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_the_runs_list_shows_durations_and_colored_statuses(page: Page, served: Served) -> None:
    from playwright.sync_api import expect

    page.goto(f"{served.base}/etl/run_list")
    rows = page.locator("table.rows-and-columns tbody tr")
    expect(rows).to_have_count(5)
    cells = page.evaluate(
        """() => [...document.querySelectorAll('table.rows-and-columns tbody tr')].map(tr => ({
            run: tr.querySelector('td.col-run_id').innerText.trim(),
            status: tr.querySelector('td.col-status .pl-status').innerText.trim(),
            color: getComputedStyle(tr.querySelector('td.col-status .pl-status')).backgroundColor,
            duration: tr.querySelector('td.col-duration_s').innerText.trim(),
            started: tr.querySelector('td.col-started_at').innerText.trim(),
            height: tr.getBoundingClientRect().height,
        }))"""
    )
    statuses = dict(served.query("SELECT '#' || id, status FROM pipeline_runs"))
    assert [c["run"] for c in cells] == ["#5", "#4", "#3", "#2", "#1"]
    for cell in cells:
        assert cell["status"] == statuses[cell["run"]]
        assert cell["color"] == rgb(STATUS_COLORS[cell["status"]])
        assert re.fullmatch(r"\d+\.\d\d? s|\d+ m \d\d s", cell["duration"]), cell
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", cell["started"]), cell
        # One line per run: timestamps do not wrap, params stay folded.
        assert cell["height"] < 45, cell
    page.get_by_role("link", name="#2", exact=True).click()
    page.wait_for_url("**/-/dashboards/run?run_id=2")


def test_the_run_dashboard_draws_one_gantt_bar_per_task_in_its_status_color(
    page: Page, served: Served
) -> None:
    from playwright.sync_api import expect

    bars = "#chart-gantt g.mark-rect.role-mark path"
    page.goto(f"{served.base}/-/dashboards/run?run_id=2")
    started = served.query(
        "SELECT status FROM task_runs WHERE run_id = 2 AND started_at IS NOT NULL"
    )
    expect(page.locator(bars)).to_have_count(len(started), timeout=15_000)
    fills = page.locator(bars).evaluate_all("paths => paths.map(p => p.getAttribute('fill'))")
    assert sorted(fills) == sorted(STATUS_COLORS[status] for (status,) in started)
    assert {"error", "timeout", "done"} <= {status for (status,) in started}
    expect(page.locator("#chart-run")).to_contain_text("#2 etl")
    failures = page.locator("#chart-failures tbody tr")
    expect(failures).to_have_count(3)
    expect(page.locator("#chart-failures")).to_contain_text(MIXED_ERROR_LINE)
    expect(page.locator("#chart-failures a").first).to_have_attribute(
        "href", re.compile(r"/-/pipeloom/etl/task/2/\d+$")
    )

    page.goto(f"{served.base}/-/dashboards/run")  # no run chosen: the newest, run 5
    expect(page.locator("#chart-run")).to_contain_text("#5 report", timeout=15_000)
    expect(page.locator(bars)).to_have_count(1, timeout=15_000)


def test_a_task_page_shows_its_traceback_in_monospace_attempts_and_logs(
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
