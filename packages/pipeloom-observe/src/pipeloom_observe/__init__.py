"""pipeloom-observe: the schema's migration history and a Datasette browser for run history.

Built on sqlite-utils migrations and Datasette; the ``pipeloom observe`` and ``pipeloom db``
commands call into it.
"""

from pipeloom_observe._version import __version__

__all__ = ["__version__"]
