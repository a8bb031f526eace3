import subprocess
import sys

import pytest
from typer.testing import CliRunner

import pipeloom
import pipeloom_observe
from pipeloom_cli import __version__
from pipeloom_cli.app import app

runner = CliRunner()


def test_version_names_all_three_packages() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        f"pipeloom-cli {__version__}",
        f"pipeloom-core {pipeloom.__version__}",
        f"pipeloom-observe {pipeloom_observe.__version__}",
    ]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "run", "status", "observe", "db"):
        assert command in result.output


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 2  # a usage error, as any command line tool says it
    assert "Usage: pipeloom" in result.output
    assert "demo" in result.output


def test_each_command_documents_its_flags() -> None:
    expected = {
        "demo": [
            "--db",
            "--num-tasks",
            "-n",
            "--workers",
            "-w",
            "--no-wal",
            "--verbose",
            "-v",
            "--log-file",
            "-l",
            "--steps",
            "--fail-rate",
            "--seed",
            "--delay",
        ],
        "run": ["TARGET", "--arg", "--db", "--workers", "--resume", "--resume-run", "-v", "-l"],
        "status": [
            "--db",
            "--run",
            "--task",
            "--runs",
            "--format",
            "--limit",
            "--watch",
            "--interval",
        ],
    }
    for command, flags in expected.items():
        result = runner.invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0
        for flag in flags:
            assert flag in result.output, (command, flag)


def test_shell_completion_script_is_available() -> None:
    result = runner.invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0
    assert "_PIPELOOM_COMPLETE=complete_bash" in result.output


def test_unknown_command_and_option_are_usage_errors() -> None:
    assert runner.invoke(app, ["explode"]).exit_code == 2
    assert runner.invoke(app, ["demo", "--explode"]).exit_code == 2


def test_click_usage_errors_end_in_one_plain_error_line() -> None:
    result = runner.invoke(app, ["demo", "-w", "0"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: Invalid value for '--workers' / '-w'")
    assert "╭" not in result.stderr


@pytest.mark.parametrize("argv", [["--version"], ["status", "--help"], ["demo", "--help"]])
def test_starting_the_cli_imports_only_what_the_command_needs(argv: list[str]) -> None:
    """Start-up time is import time: a help text or the versions need no Rich, no pipeline
    engine, no Datasette and no pydantic (which newer typer releases pull in)."""
    code = (
        "import sys\n"
        f"sys.argv = ['pipeloom', *{argv!r}]\n"
        "from pipeloom_cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ['pydantic', 'rich.live', 'pipeloom.engine', 'datasette', 'sqlite_utils']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
