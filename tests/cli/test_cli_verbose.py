"""``-vv`` as a user runs it: DEBUG lines and the traceback of every failed task."""

from pathlib import Path

from tests.cli._cli_support import write
from tests.e2e._cli_e2e_support import pipeloom

PIPELINE = """
    from pipeloom import Context, Pipeline

    pipe = Pipeline("vv", db="vv.db", workers=2)


    @pipe.task
    def parse(ctx: Context, name: str) -> int:
        if name == "b.csv":
            raise ValueError(f"{name}: bad header [id, amount]")
        return 1


    pipe.map(parse, ["a.csv", "b.csv"])
"""


def test_demo_vv_prints_debug_lines_and_the_traceback_of_a_failed_task(tmp_path: Path) -> None:
    demo = pipeloom(
        "demo", "--db", "demo.db", "-n", "3", "--fail-rate", "0.34", "--seed", "1",
        "--delay", "0", "-vv", cwd=tmp_path,
    )  # fmt: skip
    assert demo.returncode == 1, demo.stderr
    out = demo.stdout + demo.stderr
    assert "DEBUG" in out and "step 1/5" in out
    # Not a terminal: Rich wraps at 80 columns, anywhere in a line (the width left beside the
    # source path column), so compare without the whitespace it adds.
    flat = "".join(out.split())
    assert "Traceback(mostrecentcalllast)" in flat
    assert "DemoTaskError:task-" in flat


def test_run_vv_prints_the_traceback_of_a_failed_pipeline_task(tmp_path: Path) -> None:
    write(tmp_path / "vv.py", PIPELINE)
    run = pipeloom("run", "vv.py:pipe", "-vv", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    out = " ".join((run.stdout + run.stderr).split())  # log lines wrap at 80 columns
    assert "DEBUG" in out
    traceback = out[out.index("Traceback (most recent call last)") :]
    assert ", in parse raise ValueError(" in traceback  # the task's own frame
    assert "[id, amount]" in traceback  # text, not markup
