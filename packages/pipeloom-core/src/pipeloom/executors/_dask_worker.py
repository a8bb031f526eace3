"""Worker plugins for the LocalCluster the Dask executor starts (imports distributed)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["IgnoreInterrupts"]


class IgnoreInterrupts(WorkerPlugin):
    """The LocalCluster's worker processes ignore the terminal's Ctrl-C.

    They share the driver's terminal, so Ctrl-C reaches them too; it is the driver's to
    handle (stop admitting, let running tasks finish), not a crash of every worker. As a
    plugin it also reaches the workers a nanny restarts after a crash.
    """

    def setup(self, worker: Any) -> None:
        """Ignore SIGINT in this worker process (only its main thread may change that)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
