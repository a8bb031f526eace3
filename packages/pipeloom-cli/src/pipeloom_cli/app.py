"""The Typer application behind the ``pipeloom`` command."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pipeloom_cli._version import __version__
from pipeloom_cli.commands import db, demo, examples, init_db, observe, run, status

app = typer.Typer(
    name="pipeloom",
    help="Run many ETL tasks concurrently with one SQLite writer, and browse their history.",
    no_args_is_help=True,
    # User errors are reported as one line by each command; anything else is a bug,
    # and a plain traceback is the most useful thing to paste into an issue.
    pretty_exceptions_enable=False,
    # Plain Click errors: "Error: ..." on one line, like the commands' own, with no boxes.
    rich_markup_mode=None,
)


def _versions() -> str:
    import pipeloom
    import pipeloom_observe

    return (
        f"pipeloom-cli {__version__}\n"
        f"pipeloom-core {pipeloom.__version__}\n"
        f"pipeloom-observe {pipeloom_observe.__version__}"
    )


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(_versions())
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show versions and exit."
        ),
    ] = False,
) -> None:
    """Run many ETL tasks concurrently with one SQLite writer, and browse their history."""


app.command("demo")(demo.demo)
app.command("run")(run.run)
app.command("status")(status.status)
app.add_typer(db.app, name="db")
app.command("observe")(observe.observe)
app.command("init-db")(init_db.init_db)
app.add_typer(examples.app, name="examples")


def main() -> None:
    """Entry point of the ``pipeloom`` console script.

    stdout and stderr are guarded first (`pipeloom._streams`): every line the commands
    print, Click's included, replaces what the console cannot encode, and a closed pipe
    (``pipeloom status | head -1``) stops the output, never the command or its run.
    """
    from pipeloom._streams import guard
    from pipeloom_cli._signals import install

    install()  # SIGTERM and SIGHUP stop it like Ctrl-C, also as PID 1 in a container

    if sys.stdout is not None:
        sys.stdout = guard(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = guard(sys.stderr)
    app(prog_name="pipeloom")
