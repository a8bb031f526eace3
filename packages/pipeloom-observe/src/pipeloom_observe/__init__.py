"""pipeloom-observe: the schema's migration history and a Datasette browser for run history.

`migrations` is the sqlite-utils migration set that takes any pipeloom file to the current
schema (`upgrade`, `pending`); `build_datasette` and `serve` browse a run database read-only.
The ``pipeloom observe`` and ``pipeloom db`` commands call into it. Datasette is imported only
when `build_datasette` or `serve` is first used, so upgrading a file stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeloom_observe._version import __version__
from pipeloom_observe.info import DatabaseInfo, database_info
from pipeloom_observe.migrations import applied, migrations, pending, upgrade

if TYPE_CHECKING:
    from pipeloom_observe.app import build_datasette, serve

__all__ = [
    "DatabaseInfo",
    "__version__",
    "applied",
    "build_datasette",
    "database_info",
    "migrations",
    "pending",
    "serve",
    "upgrade",
]

_LAZY = frozenset({"build_datasette", "serve"})


def __getattr__(name: str) -> Any:
    """Import the Datasette side on first use (it takes about a second)."""
    if name in _LAZY:
        from pipeloom_observe import app

        return getattr(app, name)
    raise AttributeError(f"module 'pipeloom_observe' has no attribute {name!r}")
