"""``pipeloom observe DB``: browse run history in Datasette."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeloom_cli._errors import UsageError, user_errors
from pipeloom_cli._options import number


def observe(
    db: Annotated[Path, typer.Argument(help="The run database to browse.", show_default=False)],
    host: Annotated[
        str, typer.Option(help="Interface to listen on; anything but loopback exposes the data.")
    ] = "127.0.0.1",
    port: Annotated[
        int, number("--port", low=0, high=65535, metavar="PORT", help="Port to listen on.")
    ] = 8001,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open a browser on the run history.")
    ] = True,
    metadata: Annotated[
        Path | None,
        typer.Option(
            help="Datasette metadata (YAML or JSON) merged over pipeloom's defaults.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Browse a run database's history in Datasette (read-only, live while a run writes)."""
    # Datasette takes about a second to import: only this command should pay for it.
    from pipeloom.errors import Interrupted
    from pipeloom.status import exit_code
    from pipeloom_observe.app import serve
    from pipeloom_observe.metadata import MetadataError, load_metadata

    with user_errors():
        try:
            extra = load_metadata(metadata) if metadata is not None else None
        except MetadataError as exc:
            raise UsageError(str(exc)) from exc
        try:
            serve(db, host=host, port=port, open_browser=open_browser, metadata_extra=extra)
        except Interrupted as exc:
            # Ctrl-C or SIGTERM is how a server is meant to end: quietly, with the signal's code.
            raise typer.Exit(exit_code("interrupted", exc.stop_reason)) from None
