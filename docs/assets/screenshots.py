"""Regenerate the screenshots of ``pipeloom observe`` shown in docs/observe.md.

Run from the repository root (needs Debian's chromium at /usr/bin/chromium)::

    uv run python docs/assets/screenshots.py

It records a small mixed history with real pipelines (the same one the browser tests use:
done, error with a traceback, timeout, retried, cancelled, a dead letter, task logs), a run
left half done (live while the photographs are taken), then a 10,000-task run of three stages
and a stale run from the benchmarks' generator (benchmarks/make_history.py), serves it with
``pipeloom observe`` and photographs each page into this folder.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from pipeloom import Pipeline  # noqa: E402
from tests.observe._observe_support import make_mixed_db  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PAGES = {
    # file name: (path, a selector that is there once the page has drawn)
    "runs-list.png": ("/", "tr.pl-run"),
    "failures.png": ("/-/pipeloom/etl/failures", "tr.pl-failure-group"),
    "run-page.png": ("/-/pipeloom/etl/run/7", ".pl-lane .pl-bucket"),
    "run-live.png": ("/-/pipeloom/etl/run/6", "#pl-live.pl-following"),
    "compare.png": ("/-/pipeloom/etl/compare?a=1&b=2", "tr.pl-compare-stage"),
    "run-dashboard.png": ("/-/dashboards/run?run_id=2", "#chart-gantt svg .mark-rect path"),
    "run-history.png": ("/-/dashboards/run-history?name=etl", "#chart-grid svg .mark-rect path"),
    "task-page.png": ("/-/pipeloom/etl/task/2/4", "pre.pl-traceback"),
}


def start_live_run(db: Path, release: threading.Event) -> threading.Thread:
    """A run of ``export`` left half done (its later tasks wait for ``release``)."""
    pipe = Pipeline("export", db=db, workers=2)

    @pipe.task
    def export(ctx: Any, item: int) -> int:
        if item >= 12:
            release.wait(60)
        return item

    pipe.map(export, range(30))
    thread = threading.Thread(target=pipe.run, kwargs={"progress": False}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn = sqlite3.connect(db)
        try:
            row = conn.execute(
                "SELECT tasks_done FROM pipeline_runs WHERE name = 'export'"
            ).fetchone()
        finally:
            conn.close()
        if row and row[0] >= 12:
            return thread
        time.sleep(0.05)
    raise SystemExit("the live run did not get going")


def add_big_and_stale_runs(db: Path) -> None:
    """Run 7: 10,000 tasks in three stages, some failing; run 8: stale (its writer died)."""
    from datetime import UTC, datetime, timedelta

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_history import append_run

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        now = datetime.now(UTC)
        append_run(conn, 7, name="warehouse", start=now - timedelta(hours=5), tasks=10_000,
                   outcome="error")  # fmt: skip
        append_run(conn, 8, name="warehouse", start=now - timedelta(hours=2), tasks=200,
                   outcome="stale")  # fmt: skip
        conn.execute("COMMIT")
    finally:
        conn.close()


def main() -> None:
    """Seed, serve, photograph, stop."""
    with tempfile.TemporaryDirectory() as tmp:
        db = make_mixed_db(Path(tmp) / "etl.db")
        release = threading.Event()
        live = start_live_run(db, release)
        add_big_and_stale_runs(db)
        server = subprocess.Popen(
            [sys.executable, "-m", "pipeloom_cli", "observe", str(db), "--port", "0", "--no-open"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            match = re.search(r"at (http://[^ ]+)/ ", server.stdout.readline())
            if match is None:
                raise SystemExit("pipeloom observe did not print its address")
            base = match.group(1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                for name, (path, ready) in PAGES.items():
                    page.goto(base + path)
                    page.wait_for_selector(ready, timeout=15_000)
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=str(HERE / name))
                    size = (HERE / name).stat().st_size
                    print(f"{name}: {base}{path} ({size // 1024} KiB)")
                browser.close()
        finally:
            release.set()
            live.join(timeout=30)
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
