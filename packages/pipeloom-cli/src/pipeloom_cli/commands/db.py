"""``pipeloom db upgrade|info``: inspect and migrate a run database."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect and upgrade a run database.", no_args_is_help=True)
