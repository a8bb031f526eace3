"""Every value a person can type: CLI numbers, run_pipeline settings, observe URL ids.

A number outside what a command can use (huge, negative, NaN, an infinity, text) is one
``Error:`` line naming the option, the value and the range, exit code 2; in core one
`InvalidArgumentError`; in observe a 400 page and one log line, never a traceback.
"""

from __future__ import annotations

import html
import logging
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipeloom import Pipeline, TaskDef, run_pipeline
from pipeloom.errors import InvalidArgumentError, PipeloomError
from pipeloom_cli._options import MAX_ID, Number
from pipeloom_cli.app import app
from tests._harness import query
from tests.cli._cli_support import make_run
from tests.e2e._cli_e2e_support import clean_env, pipeloom_command
from tests.observe._observe_support import started
from tests.reliability._support import wait_for

runner = CliRunner()
COMMAND = typer.main.get_command(app)
"""The Click command `CliRunner.invoke` builds from ``app`` on every call (19 of its 20 ms)."""


def _invoke(args: list[str]) -> tuple[int, str, str]:
    """Run ``pipeloom ARGS`` as `CliRunner.invoke` does, on the command built once: the exit
    code, stderr and all output. For the property test's 150 examples (3 s of building)."""
    with runner.isolation() as (_out, err, both):
        try:
            COMMAND.main(args=args, prog_name=COMMAND.name or "root")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stderr.flush()
            sys.stdout.flush()
        return code, err.getvalue().decode(), both.getvalue().decode()


# (argv before the option, the option, its kind, low, high)
OPTIONS: list[tuple[list[str], str, type, float, float]] = [
    (["demo"], "--num-tasks", int, 0, 10_000_000),
    (["demo"], "--workers", int, 1, 10_000),
    (["demo"], "--steps", int, 1, 10_000),
    (["demo"], "--fail-rate", float, 0.0, 1.0),
    (["demo"], "--delay", float, 0.0, 3600.0),
    (["demo"], "--seed", int, 0, MAX_ID),
    (["run", "x.py:main"], "--workers", int, 1, 10_000),
    (["run", "x.py:main"], "--resume-run", int, 1, MAX_ID),
    (["status"], "--run", int, 1, MAX_ID),
    (["status"], "--limit", int, 1, MAX_ID),
    (["status"], "--interval", float, 0.05, 86_400.0),
    (["observe", "x.db"], "--port", int, 0, 65535),
    (["examples", "csv"], "--files", int, 1, 10_000),
    (["examples", "csv"], "--rows", int, 1, 10_000_000),
    (["examples", "csv"], "--workers", int, 1, 10_000),
]


def _outside(kind: type, low: float, high: float) -> st.SearchStrategy[str]:
    """Text a person might type that the option must refuse."""
    if kind is int:
        numbers = st.one_of(
            st.integers(max_value=int(low) - 1), st.integers(min_value=int(high) + 1)
        ).map(str)
        words = st.sampled_from(["nan", "inf", "-inf", "1e3", "1.5", "", " ", "ten", "0x10"])
    else:
        numbers = st.one_of(
            st.floats(max_value=low, exclude_max=True, allow_nan=False),
            st.floats(min_value=high, exclude_min=True, allow_nan=False),
        ).map(repr)
        words = st.sampled_from(["nan", "NaN", "inf", "-inf", "", "ten", "1,5"])
    return st.one_of(numbers, words)


@st.composite
def _bad_option(draw: st.DrawFn) -> tuple[list[str], str, str]:
    prefix, option, kind, low, high = draw(st.sampled_from(OPTIONS))
    return prefix, option, draw(_outside(kind, low, high))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bad_option())
def test_every_cli_number_out_of_range_is_one_error_line(case: tuple[list[str], str, str]) -> None:
    prefix, option, value = case
    code, stderr, output = _invoke([*prefix, f"{option}={value}"])
    assert code == 2, output
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert option in errors[0]
    assert "use a " in errors[0] and " from " in errors[0]  # the range
    if len(value.strip()) <= 40:
        assert value.strip() in errors[0] or repr(float(value)) in errors[0]
    assert "Traceback" not in output


@given(st.sampled_from(OPTIONS), st.data())
def test_every_value_in_range_is_accepted_as_typed(
    spec: tuple[list[str], str, type, float, float], data: st.DataObject
) -> None:
    _, _, kind, low, high = spec
    parse = Number(kind, low, high)
    if kind is int:
        value: float = data.draw(st.integers(int(low), int(high)))
    else:
        value = data.draw(st.floats(low, high, allow_nan=False))
    assert parse(str(value)) == value


def test_a_huge_number_is_quoted_cut_not_printed_whole() -> None:
    result = runner.invoke(app, ["status", "--run", "9" * 5000])
    assert result.exit_code == 2
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(line) < 200 and "(5000 chars)" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["status", "--run", "18446744073709551616"],
            "Error: Invalid value for '--run': 18446744073709551616 is out of range; use a "
            f"whole number from 1 to {MAX_ID}",
        ),
        (
            ["demo", "--fail-rate", "nan"],
            "Error: Invalid value for '--fail-rate': nan is out of range; use a number from 0 to 1",
        ),
        (
            ["status", "--watch", "--interval", "nan"],
            "Error: Invalid value for '--interval': nan is out of range; use a number from "
            "0.05 to 86400",
        ),
    ],
)
def test_the_installed_command_answers_a_bad_number_in_one_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    done = subprocess.run(
        [*pipeloom_command(), *args],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.startswith("Error:")] == [expected]
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # refused before any file was made


def test_workers_beyond_the_tasks_are_never_started(tmp_path: Path) -> None:
    """`demo -n 5 -w 10000` runs its 5 tasks on 5 workers, not 10,000 threads."""
    db = tmp_path / "capped.db"
    done = subprocess.run(
        [*pipeloom_command(), "demo", "-n", "5", "-w", "10000", "--delay", "0", "--db", str(db)],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert query(db, "SELECT workers, status FROM pipeline_runs") == [(5, "done")]


def _noop(task: TaskDef, q: object) -> None:
    return None


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("workers", 0),
        ("workers", -1),
        ("workers", 10**6),
        ("workers", 2.5),
        ("workers", True),
        ("batch_size", 0),
        ("batch_size", 2**70),
        ("commit_interval", math.nan),
        ("commit_interval", math.inf),
        ("commit_interval", -0.1),
        ("queue_size", 1),
        ("lease", math.nan),
        ("lease", -1.0),
        ("task_log_limit", -1),
    ],
)
def test_run_pipeline_refuses_a_setting_no_run_could_use(
    tmp_path: Path, setting: str, value: object
) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(InvalidArgumentError, match=rf"run_pipeline\({setting}={value!r}\): use "):
        keywords: dict[str, Any] = {setting: value}
        run_pipeline([TaskDef(1, "one")], db, worker_fn=_noop, progress=False, **keywords)
    assert not db.exists()  # refused before the file was made
    assert issubclass(InvalidArgumentError, PipeloomError | ValueError)


@pytest.mark.parametrize(
    ("keywords", "named"),
    [
        ({"timeout": math.nan}, "timeout=nan"),
        ({"timeout": math.inf}, "timeout=inf"),
        ({"timeout": -1.0}, "timeout=-1.0"),
        ({"timeout": 1e300}, "timeout=1e+300"),
        ({"backoff": math.nan}, "backoff=nan"),
        ({"max_backoff": math.inf}, "max_backoff=inf"),
    ],
)
def test_a_task_refuses_seconds_no_wait_can_take(keywords: dict[str, float], named: str) -> None:
    pipe = Pipeline("typed")
    with pytest.raises(PipeloomError, match=re.escape(named)):
        pipe.task(**keywords)(lambda ctx, item: item)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("keywords", "named"),
    [({"workers": 0}, "workers=0"), ({"workers": 10**9}, "workers="), ({"grace": math.nan}, "nan")],
)
def test_a_pipeline_refuses_workers_and_grace_no_run_can_use(
    keywords: dict[str, float], named: str
) -> None:
    with pytest.raises(PipeloomError, match=named):
        Pipeline("typed", **keywords)  # type: ignore[arg-type]


BAD_IDS = ["99999999999999999999999", "-99999999999999999999999", "nan", "abc", "", "1e400"]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("where", ["run", "task"])
async def test_an_observe_url_id_out_of_range_is_a_400_and_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str, where: str
) -> None:
    db = tmp_path / "runs.db"
    make_run(db, n=2)
    ds = await started(db)
    path = f"/-/pipeloom/runs/task/{bad}/1" if where == "run" else f"/-/pipeloom/runs/task/1/{bad}"
    with caplog.at_level(logging.WARNING):
        page = await ds.client.get(path)
    assert page.status_code == 400
    name = f"{where}_id"
    assert f"{name} {bad!r}: use a whole number from" in html.unescape(page.text)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and name in lines[0] and "answered 400" in lines[0]
    assert not any(r.exc_info for r in caplog.records)


def test_a_real_observe_server_answers_a_huge_id_without_a_traceback(tmp_path: Path) -> None:
    """`pipeloom observe`: the 400 is one line on the server's terminal, not ~300."""
    import urllib.error
    import urllib.request

    db = tmp_path / "runs.db"
    make_run(db, n=2)
    server = subprocess.Popen(
        [*pipeloom_command(), "observe", str(db), "--port", "0", "--no-open"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stderr is not None
    try:
        line = server.stdout.readline()  # "pipeloom observe: browsing ... at URL (Ctrl-C ...)"
        url = line.split(" at ", 1)[1].split()[0]
        bad = f"{url}-/pipeloom/runs/task/99999999999999999999999/1"
        codes: list[int] = []

        def answered() -> bool:  # the address is printed before the server listens
            try:
                urllib.request.urlopen(bad, timeout=10).close()
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
                exc.close()
                return True
            except urllib.error.URLError:
                return False
            return True

        wait_for(answered, "the observe server to answer")
        assert codes == [400]
    finally:
        server.terminate()
        server.wait(timeout=30)
        with server.stdout, server.stderr:
            err = server.stderr.read()
    assert "Traceback" not in err
    assert [x for x in err.splitlines() if "99999999999999999999999" in x] == [
        "pipeloom observe: GET /-/pipeloom/runs/task/99999999999999999999999/1 answered 400: "
        f"run_id '99999999999999999999999': use a whole number from 1 to {MAX_ID}"
    ]
