"""Worker plugins for the LocalCluster the Dask executor starts (imports distributed)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["DieWithDriver", "IgnoreInterrupts"]


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


class DieWithDriver(WorkerPlugin):
    """The LocalCluster's worker processes end when the driver does, even one busy in C.

    distributed's own watch on the driver is a thread reading a pipe, which a task holding
    the GIL (a long NumPy call, a regular expression) never lets run: after a ``kill -9`` of
    the driver such a worker spun on forever. The kernel's parent-death signal needs no GIL.
    Its parent thread is the one distributed starts each worker process from, which lives as
    long as that process.
    """

    def __init__(self, driver_pid: int) -> None:
        self.driver_pid = driver_pid

    def setup(self, worker: Any) -> None:
        """Ask for SIGKILL when the driver goes; exit now if it went already.

        Only in a worker process the driver started itself: never in the driver (a cluster of
        threads), where the signal would tie the driver to whatever started it.
        """
        from pipeloom.executors._parent import die_with

        driver = self.driver_pid
        if os.getpid() != driver and os.getppid() == driver:
            die_with(driver)
