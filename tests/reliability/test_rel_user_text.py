"""User text is data, not markup: names, messages, results and paths print as written.

Every value below would, printed raw or as Rich markup, crash the printer (``[/api]``,
``[/2024]``), be applied as styling (``[bold red]``, ``[link=...]``), vanish (``[users]``) or
drive the terminal (ESC ]0 retitles the window, ESC [2J clears the screen, BEL rings).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
from pathlib import Path

from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from pipeloom import (
    AppliedBatch,
    LiveDisplay,
    MsgTaskFinished,
    MsgTaskProgress,
    MsgTaskStarted,
    PlainReporter,
    TaskDef,
    TaskQueue,
    run_pipeline,
    utc_now,
)
from pipeloom._text import printable
from pipeloom_cli.app import app
from tests.e2e._cli_e2e_support import clean_env, pipeloom_command

MARKUP = ["[bold red]x[/]", "GET [/api/v1/items] returned 500", "[link=http://x]y[/link]"]
"""Texts Rich markup would style, crash on or swallow."""
LOST = "copy [users] table"
"""Rich reads ``[users]`` as a (style) tag and drops it."""
CONTROL = ["\x1b]0;pwned\x07", "\x1b[2J"]
"""Window title and clear screen, as an attacker's file name or an HTTP body could hold."""
TEXTS = [*MARKUP, LOST, *CONTROL]

runner = CliRunner()

FROM_DATA = ("\x1b]0;", "\x1b[2J", "\x07")
"""What must never reach the terminal (Rich's own escape codes are other sequences)."""


def shown(text: str) -> str:
    """How a value must appear on screen: markup literally, control characters visibly."""
    return printable(text)


def assert_printed_as_data(output: str, texts: list[str]) -> None:
    for sequence in FROM_DATA:
        assert sequence not in output, f"{sequence!r} from the data reached the terminal"
    for text in texts:
        assert shown(text) in output, f"{text!r} not shown as written"


def test_printable_shows_control_characters_and_keeps_markup_as_text() -> None:
    assert printable("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"
    assert printable("\x1b[2J") == "\\x1b[2J"
    assert printable("[bold red]x[/]") == "[bold red]x[/]"
    assert printable("a\nb\tc") == "a\\nb\tc"
    assert printable("a\nb", newlines=True) == "a\nb"
    assert printable("\x9b2J \u202eevil") == "\\x9b2J \\u202eevil"
    assert printable("caf\udce9") == "caf\\udce9"  # a lone surrogate (os.listdir) prints


def test_live_bars_show_names_messages_and_title_as_written() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80)
    display = LiveDisplay(10, console=console, title=LOST, get_time=lambda: 100.0)
    with display:
        display(AppliedBatch(started=[(i, text) for i, text in enumerate(TEXTS)]))
        display(AppliedBatch(started=[(10 + i, "m") for i in range(len(TEXTS))]))
        # Names take the first bars; messages go to tasks promoted once those finish.
        display(AppliedBatch(finished=[(i, "done") for i in range(len(TEXTS))]))
        display(AppliedBatch(progress={10 + i: (1, 2, t) for i, t in enumerate(TEXTS)}))
        display._live.refresh()  # raised MarkupError in the refresh thread before the fix
    names_shown = out.getvalue()
    display = LiveDisplay(10, console=console, get_time=lambda: 100.0)
    with display:
        display(AppliedBatch(started=[(i, text) for i, text in enumerate(TEXTS)]))
        display._live.refresh()
    assert_printed_as_data(out.getvalue(), TEXTS)
    assert_printed_as_data(names_shown, [LOST, *TEXTS])  # title and messages

    plain = io.StringIO()
    now = [0.0]
    reporter = PlainReporter(
        3, console=Console(file=plain, width=80), title=CONTROL[0] + LOST, clock=lambda: now[0]
    )
    now[0] = 10.0
    reporter(AppliedBatch(finished=[(1, "done")]))
    assert_printed_as_data(plain.getvalue(), [CONTROL[0] + LOST])


def test_a_name_that_is_not_valid_utf8_prints_to_a_real_terminal_file(tmp_path: Path) -> None:
    """A file name from os.listdir may hold a lone surrogate; writing it raw raises."""
    name = "caf\udce9.csv"
    with (tmp_path / "screen").open("w", encoding="utf-8") as screen:
        console = Console(file=screen, force_terminal=True, width=80)
        display = LiveDisplay(1, console=console, get_time=lambda: 100.0)
        with display:
            display(AppliedBatch(started=[(1, name)], progress={1: (1, 2, name)}))
            display._live.refresh()
    assert "caf\\udce9.csv" in (tmp_path / "screen").read_text(encoding="utf-8")


def _noisy_worker(task: TaskDef, msg_q: TaskQueue) -> None:
    msg_q.put(MsgTaskStarted(task.task_id, task.name, utc_now()))
    text = TEXTS[task.task_id]
    msg_q.put(MsgTaskProgress(task.task_id, 1, 2, text))
    msg_q.put(
        MsgTaskFinished(task.task_id, "done", utc_now(), message=text, result=f"result {text}")
    )


def _noisy_run(db: Path, console: Console | None = None) -> None:
    result = run_pipeline(
        [TaskDef(i, text) for i, text in enumerate(TEXTS)],
        db,
        worker_fn=_noisy_worker,
        workers=2,
        progress=console is not None,
        console=console,
        run_name=f"nightly {LOST} {CONTROL[0]}",
        handle_signals=False,
    )
    assert result.counts == {"done": len(TEXTS)}


def test_a_run_whose_path_holds_markup_returns_its_result(tmp_path: Path) -> None:
    folder = tmp_path / "x[" / "2024]"  # the path reads ".../x[/2024]/runs.db"
    folder.mkdir(parents=True)
    db = folder / "runs.db"
    out = io.StringIO()
    # Before the fix the summary raised MarkupError here, after the run was recorded.
    _noisy_run(db, Console(file=out, force_terminal=True, width=250))
    assert "x[/2024]" in str(db)
    assert_printed_as_data(out.getvalue(), [str(db)])


def _pipeloom_in_parallel(cwd: Path, *commands: list[str]) -> list[tuple[int, str, str]]:
    """Run each ``pipeloom ARGS`` as its own process, all at once (each takes ~1 s to start)."""
    env = clean_env(COLUMNS="250")
    procs = [
        subprocess.Popen(
            [*pipeloom_command(), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs, strict=True)]


def test_status_prints_stored_user_text_as_written(tmp_path: Path) -> None:
    folder = tmp_path / "x[" / "2024]"
    folder.mkdir(parents=True)
    db = folder / "runs.db"
    _noisy_run(db)
    (code, table, errors), (json_code, text, _) = _pipeloom_in_parallel(
        tmp_path, ["status", str(db)], ["status", str(db), "--format", "json"]
    )
    assert code == 0 and "Traceback" not in errors, errors  # was a MarkupError traceback
    assert_printed_as_data(table, [str(db), *TEXTS, f"nightly {LOST} {CONTROL[0]}"])

    assert json_code == 0
    assert_printed_as_data(text, [])  # JSON escapes control characters itself: \u001b
    payload = json.loads(text)
    assert payload["db"] == str(db)
    assert sorted(t["name"] for t in payload["tasks"]) == sorted(TEXTS)  # the data, exactly
    assert {t["message"] for t in payload["tasks"]} == set(TEXTS)

    runs = runner.invoke(app, ["status", str(db), "--runs"])  # run names in a narrow table
    assert runs.exit_code == 0, runs.output
    assert_printed_as_data(runs.output, [])


def test_cli_errors_show_the_path_as_written(tmp_path: Path) -> None:
    missing = tmp_path / f"gone{CONTROL[0]}[/x]{CONTROL[1]}.db"
    for args in (["status", str(missing)], ["db", "info", str(missing)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
        assert_printed_as_data(result.output, [str(missing)])


def test_log_lines_show_control_characters_and_markup_as_text() -> None:
    from pipeloom.logs import _DataHandler

    out = io.StringIO()
    handler = _DataHandler(console=Console(file=out, force_terminal=True, width=200))
    record = logging.LogRecord(
        "user.etl", logging.WARNING, __file__, 1, "loading %s", ("a\x1b]0;pwned\x07[bold]b",), None
    )
    handler.emit(record)
    text = out.getvalue()
    assert "\x1b]0;" not in text and "\x07" not in text
    # What the terminal shows (Rich's own colours taken away): the characters, escaped.
    assert "\\x1b]0;pwned\\x07[bold]b" in Text.from_ansi(text).plain
