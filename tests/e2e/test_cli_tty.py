"""``pipeloom demo`` in a real terminal: tmux runs it in a pane and we read the screen."""

import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeloom.progress import DEFAULT_VISIBLE_BARS
from tests.e2e._cli_e2e_support import clean_env, pipeloom_command

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="needs tmux for a real terminal")

TASK_BAR = re.compile(r"^\s+task-\d+\s")
OVERALL_BAR = re.compile(r"demo .*\b\d+/30\b.*failed")
MORE = re.compile(r"\+(\d+) more running")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    """A private tmux server (its own socket), killed afterwards."""
    assert TMUX is not None
    base = [TMUX, "-L", f"pipeloom-test-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, check=False, timeout=30)


def screen(tmux: list[str], target: str = "demo:0") -> str:
    return subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", target],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip


def test_demo_in_a_terminal_caps_task_bars_and_leaves_the_summary(
    tmux: list[str], tmp_path: Path
) -> None:
    command = [
        *pipeloom_command(), "demo", "--db", "tty.db", "-n", "30", "-w", "12",
        "--seed", "5", "--delay", "0.3", "-v",
    ]  # fmt: skip
    shell = f"cd {shlex.quote(str(tmp_path))} && {shlex.join(command)}; echo EXIT=$?; sleep 600"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "demo", "-x", "100", "-y", "50", shell],
        env=clean_env(), check=True, timeout=30,
    )  # fmt: skip
    watch = [
        *pipeloom_command(),
        "status",
        "tty.db",
        "--watch",
        "--interval",
        "0.2",
        "--limit",
        "3",
    ]
    watch_shell = (
        f"cd {shlex.quote(str(tmp_path))} && {shlex.join(watch)}; echo WATCHED=$?; sleep 600"
    )
    frames: list[str] = []
    watching = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        frame = screen(tmux)
        frames.append(frame)
        if "EXIT=" in frame:
            break
        if not watching and any(TASK_BAR.match(line) for line in frame.splitlines()):
            # The run is live (its tables exist): follow it from a second window.
            subprocess.run(
                [*tmux, "new-window", "-d", "-t", "demo:1", watch_shell], check=True, timeout=30
            )
            watching = True
        time.sleep(0.05)
    final = frames[-1]
    assert "EXIT=0" in final, final

    live = [f for f in frames if OVERALL_BAR.search(f) and "EXIT=" not in f]
    assert live, "never saw the overall bar while the demo ran"
    bars_per_frame = [sum(bool(TASK_BAR.match(line)) for line in f.splitlines()) for f in live]
    assert max(bars_per_frame) > 0, "never saw a per-task bar"
    assert max(bars_per_frame) <= DEFAULT_VISIBLE_BARS
    # 12 workers and 6 bars: the rest are counted, not drawn.
    assert any(MORE.search(f) for f in live)
    # -v log lines scroll above the display and never land inside it.
    assert any(" INFO " in f for f in live)
    for f in [*live, final]:
        lines = f.splitlines()
        (bar,) = [i for i, line in enumerate(lines) if OVERALL_BAR.search(line)]
        assert all(i < bar for i, line in enumerate(lines) if " INFO " in line), f

    assert re.search(r"✓ demo .*30/30 0 failed", final)
    assert not any(TASK_BAR.match(line) for line in final.splitlines())
    assert "more running" not in final
    assert "pipeloom run 1" in final
    assert re.search(r"done\s+│\s+30", final)
    assert "pipeloom observe tty.db" in final

    assert watching
    while time.monotonic() < deadline and "WATCHED=" not in (watched := screen(tmux, "demo:1")):
        time.sleep(0.1)
    assert "WATCHED=0" in watched, watched
    assert re.search(r"status\s+done", watched)
    assert "30/30 finished: done 30" in watched
