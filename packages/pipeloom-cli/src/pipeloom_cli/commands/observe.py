"""``pipeloom observe DB``: browse run history in Datasette."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def observe(
    db: Annotated[Path, typer.Argument(help="The run database to browse.")],
) -> None:
    """Browse a run database's history in Datasette."""
    typer.echo(f"pipeloom observe {db}: not built yet", err=True)
    raise typer.Exit(2)
