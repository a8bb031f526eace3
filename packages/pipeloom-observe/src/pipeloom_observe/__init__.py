"""pipeloom-observe: the schema's migration history and a Datasette browser for run history.

`migrations` is the sqlite-utils migration set that takes any pipeloom file to the current
schema (`upgrade`, `pending`); `build_datasette` and `serve` browse a run database read-only.
The ``pipeloom observe`` and ``pipeloom db`` commands call into it. Datasette is imported only
when `build_datasette` or `serve` is first used, so upgrading a file stays quick.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from pipeloom_observe._version import __version__

if TYPE_CHECKING:
    from pipeloom_observe.app import build_datasette, serve
    from pipeloom_observe.info import DatabaseInfo, database_info
    from pipeloom_observe.migrations import applied, migrations, pending, upgrade

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

_WHERE = {
    "build_datasette": "app",
    "serve": "app",
    "DatabaseInfo": "info",
    "database_info": "info",
    "applied": "migrations",
    "migrations": "migrations",
    "pending": "migrations",
    "upgrade": "migrations",
}


def __getattr__(name: str) -> Any:
    """Import on first use: Datasette takes about a second, sqlite-utils a fifth."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'pipeloom_observe' has no attribute {name!r}")
    module = import_module(f"pipeloom_observe.{where}")
    # The submodule named "migrations" shadows the attribute of the same name once imported.
    value = getattr(module, name)
    globals()[name] = value
    return value
