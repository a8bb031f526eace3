import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from pipeloom import (
    AppliedBatch,
    LiveDisplay,
    PlainReporter,
    TaskDef,
    TaskQueue,
    preregister_task_bars,
    run_pipeline,
)
from pipeloom._text import shorten_middle
from pipeloom.progress import make_task_progress, render_summary


def make_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100, color_system=None), out


def fake_clock() -> float:
    return 100.0


def test_only_in_flight_tasks_get_bars_up_to_the_cap() -> None:
    console, _ = make_console()
    display = LiveDisplay(20, console=console, max_visible=3, get_time=fake_clock)
    display(AppliedBatch(started=[(i, f"load-{i}") for i in range(1, 9)]))
    assert display.visible_bars == 3
    text = render(console, display)
    assert "load-1" in text and "load-3" in text and "load-4" not in text
    assert "+5 more running" in text
    assert "0/20" in text

    display(AppliedBatch(finished=[(1, "done"), (2, "error")]))
    text = render(console, display)
    assert display.visible_bars == 3  # two hidden tasks promoted into the freed slots
    assert "load-1" not in text and "load-4" in text and "load-5" in text
    assert "+3 more running" in text
    assert "2/20" in text and "1 failed" in text


def test_close_removes_task_bars_and_keeps_the_overall_bar() -> None:
    console, out = make_console()
    display = LiveDisplay(2, console=console, get_time=fake_clock)
    with display:
        display(AppliedBatch(started=[(1, "alpha"), (2, "beta")]))
        display(AppliedBatch(progress={1: (1, 2, "half way")}))
        display(AppliedBatch(finished=[(1, "done"), (2, "done")]))
    assert display.visible_bars == 0
    final = out.getvalue().rsplit("\x1b[2K", 1)[-1]
    assert "2/2" in final
    assert "alpha" not in final


def test_plain_reporter_prints_lines_without_escape_codes() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    now = [0.0]
    reporter = PlainReporter(10, console=console, interval=5.0, clock=lambda: now[0])
    reporter(AppliedBatch(finished=[(1, "done")]))
    assert out.getvalue() == ""
    now[0] = 6.0
    reporter(AppliedBatch(finished=[(2, "error")]))
    assert out.getvalue() == "pipeloom: 2/10 finished, 1 failed, 6.0s elapsed\n"
    assert "\x1b" not in out.getvalue()


def test_summary_table_lists_statuses_throughput_and_database() -> None:
    console, out = make_console()
    console.print(
        render_summary(
            {"done": 18, "error": 2},
            elapsed=2.0,
            messages=100,
            db_path="wal_demo.db",
            run_id=3,
            hint="pipeloom observe wal_demo.db",
        )
    )
    text = out.getvalue()
    for expected in ("pipeloom run 3", "done", "18", "error", "cancelled", "50", "wal_demo.db"):
        assert expected in text
    assert "pipeloom observe wal_demo.db" in text


def test_preregister_task_bars_keys_visible_bars_by_the_0_0_7_task_ids() -> None:
    progress = make_task_progress(Console(file=io.StringIO()))
    bars = preregister_task_bars(progress, 4)
    assert sorted(bars) == [1, 2, 3, 4]
    assert all(t.visible for t in progress.tasks)


def render(console: Console, display: LiveDisplay) -> str:
    with console.capture() as capture:
        console.print(display.overall)
        console.print(display.tasks)
        console.print(display._more)
    return re.sub(r"\s+", " ", capture.get())


@pytest.mark.parametrize(
    ("fail", "mark", "not_mark"), [(False, "✓", "✗"), (True, "✗", "✓")], ids=["done", "error"]
)
def test_the_final_mark_follows_the_outcome(
    tmp_path: Path, fail: bool, mark: str, not_mark: str
) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)

    def worker(task: TaskDef, q: TaskQueue) -> None:
        if fail and task.task_id == 2:
            raise ValueError("bad row")

    result = run_pipeline(
        [TaskDef(i, f"t{i}") for i in range(1, 4)],
        tmp_path / "mark.db",
        worker_fn=worker,
        progress=True,
        console=console,
        run_name="marks",
    )
    assert result.status == ("error" if fail else "done")
    last_bar = [
        line for line in Text.from_ansi(out.getvalue()).plain.splitlines() if "marks" in line
    ][-1]
    assert mark in last_bar and not_mark not in last_bar


PATH_KEYS = [
    f"load_file:/home/me/projects/data/2024/11/{i:02d}/exports/customers/part-{i:04d}.csv"
    for i in range(1, 9)
]


def test_shorten_middle_keeps_both_ends_within_the_cell_width() -> None:
    key = PATH_KEYS[6]
    short = shorten_middle(key, 30)
    assert cell_len(short) == 30
    assert short.startswith("load_file:/home") and short.endswith("/part-0007.csv")
    assert "…" in short
    assert shorten_middle("fits", 30) == "fits"
    # A wide character takes two cells and is never split in half.
    wide = shorten_middle("日本語のファイル名/データ/とても長い/パス.csv", 15)
    assert cell_len(wide) <= 15 and wide.startswith("日本語") and wide.endswith("パス.csv")
    assert shorten_middle("abc", 1) == "…" and shorten_middle("abc", 0) == ""


def test_task_bars_for_path_keys_keep_their_bar_and_both_ends_at_60_columns() -> None:
    console = Console(
        file=io.StringIO(), force_terminal=True, width=60, record=True, color_system=None
    )
    display = LiveDisplay(
        100, console=console, max_visible=4, get_time=fake_clock, title="nightly-load"
    )
    display(AppliedBatch(started=list(enumerate(PATH_KEYS, start=1))))
    display(
        AppliedBatch(
            progress={
                1: (1, 5, "100 rows"),
                2: (3, 5, "a long message about what the task is doing right now"),
                3: (5, 5, "500 rows"),
                4: (2, 5, ""),
            }
        )
    )
    console.print(display.overall)
    console.print(display.tasks)
    lines = console.export_text().splitlines()
    assert all(cell_len(line) <= 60 for line in lines), lines
    assert "nightly-load" in lines[0] and "0/100" in lines[0]
    task_lines = lines[1:]
    assert len(task_lines) == 4
    percent = {1: "20%", 2: "60%", 3: "100%", 4: "40%"}
    for n, line in enumerate(task_lines, start=1):
        assert line.strip().startswith("load_file:/"), line
        assert f"/part-{n:04d}.csv" in line, line  # the file name at the key's end survives
        assert "━" in line and percent[n] in line, line
    # A finished bar is drawn whole: at least 10 cells were left to it.
    assert "━" * 10 in task_lines[2]
    assert "100 rows" in task_lines[0] and "a long" in task_lines[1]


def test_plain_reporter_prints_a_title_with_emoji_codes_as_written() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    now = [0.0]
    reporter = PlainReporter(1, console=console, title="load :warning: rows", clock=lambda: now[0])
    now[0] = 6.0
    reporter(AppliedBatch(finished=[(1, "done")]))
    assert out.getvalue().startswith("load :warning: rows: 1/1 finished")


def test_printing_the_summary_does_not_load_richs_emoji_table(tmp_path: Path) -> None:
    """Each cell is Text, never markup: the 27 ms emoji table stays out of the run's clock."""
    code = (
        "import sys\n"
        "from pipeloom import run_pipeline\n"
        f"run_pipeline(range(1, 4), {str(tmp_path / 'e.db')!r}, worker_fn=lambda task, q: None)\n"
        "print('emoji table loaded:', 'rich._emoji_codes' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pipeloom run 1" in done.stdout
    assert "emoji table loaded: False" in done.stdout


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "soon", "1e9"])
def test_a_bad_progress_interval_is_ignored_with_one_warning(
    raw: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeloom.progress import PROGRESS_EVERY_ENV, plain_interval

    monkeypatch.setenv(PROGRESS_EVERY_ENV, raw)
    with caplog.at_level("WARNING", logger="pipeloom"):
        assert plain_interval() == 5.0
    assert [r.getMessage() for r in caplog.records if PROGRESS_EVERY_ENV in r.getMessage()]
    monkeypatch.setenv(PROGRESS_EVERY_ENV, "0.5")
    assert plain_interval() == 0.5
