from __future__ import annotations

import re
import select
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.observe._observe_support import ERROR_LINE, make_run_db

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
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium"),
]


def pipeloom_command() -> list[str]:
    script = shutil.which("pipeloom")
    return [script] if script else [sys.executable, "-m", "pipeloom_cli"]


def wait_until_up(url: str, server: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(600):
        if server.poll() is not None:
            out, err = server.communicate()
            pytest.fail(f"pipeloom observe exited {server.returncode}: {out}{err}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
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


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    db = make_run_db(tmp_path / "nightly.db")
    server = subprocess.Popen(
        [*pipeloom_command(), "observe", str(db), "--port", "0", "--no-open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = announced_url(server)
        wait_until_up(f"{base}/", server)
        yield base, server
    finally:
        server.terminate()
        try:
            server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def test_a_run_and_its_failed_task_show_in_a_real_browser(
    served: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, _server = served
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base}/nightly/pipeline_runs/2")
            expect(page.locator("h1")).to_contain_text("2")
            expect(page.locator("body")).to_contain_text("nightly")
            page.get_by_role("link", name="6 rows").click()
            page.wait_for_url("**/nightly/task_runs?run_id=2")
            expect(page.locator("body")).to_contain_text(ERROR_LINE)
            page.screenshot(path=str(tmp_path / "run-2-tasks.png"), full_page=True)

            page.goto(f"{base}/-/dashboards/run-history")
            chart = page.locator("#chart-tasks-per-minute")
            expect(chart.locator("canvas, svg").first).to_be_visible(timeout=15_000)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "run-2-tasks.png").stat().st_size > 0
    assert (tmp_path / "dashboard.png").stat().st_size > 0


def test_a_loopback_server_prints_no_exposure_warning(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    base, server = served
    assert base.startswith("http://127.0.0.1:")
    server.terminate()
    _out, err = server.communicate(timeout=10)
    assert "warning" not in err.lower()
