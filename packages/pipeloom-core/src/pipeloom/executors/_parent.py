"""A worker process and its driver: stop signals are the driver's, its death ends the worker.

Used by the process executor's children. Ctrl-C reaches the whole foreground process group,
a closed terminal sends SIGHUP to it, and ``systemctl stop`` sends SIGTERM to every process
of the service: the children ignore all three and let the driver decide (it tells them to
stop, or kills them). When the driver itself dies (SIGKILL, a crash), they must not run on
as orphans: the pipe to the driver reaches end-of-file, which `driver_gone` turns into an
immediate, silent exit; on Linux a forkserver child also gets SIGKILL from the kernel when
the forkserver (which exits with the driver) dies, for a child too busy to read its pipe.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing import forkserver
from typing import NoReturn

__all__ = [
    "die_with",
    "die_with_parent",
    "driver_gone",
    "ignore_stop_signals",
    "importing_main_script",
]

log = logging.getLogger("pipeloom.executors")

_PR_SET_PDEATHSIG = 1
"""``prctl`` option from <linux/prctl.h>: the signal this process gets when its parent dies."""
ORPHAN_EXIT = 0
"""How a worker whose driver is gone exits: nobody is left to read its exit code."""


def ignore_stop_signals() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP here: the driver decides what a stop means."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)


def die_with_parent() -> None:
    """On Linux, ask for SIGKILL when this process's parent dies, where that is safe.

    The kernel sends it when the *thread* that forked this process ends. A forkserver child
    was forked by the forkserver's only thread, which lives exactly as long as the driver;
    a ``spawn`` child was started by whichever driver thread needed it (a replacement by
    the collector thread, which ends before its children do), so it relies on its pipe.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = multiprocessing.parent_process()
    parent_pid = os.getppid()
    if parent is None or parent.pid == parent_pid:
        return  # started by the driver itself (spawn): the pipe watch covers it
    if die_with(parent_pid):
        _release_forkserver()


def die_with(parent_pid: int) -> bool:
    """Ask the kernel for SIGKILL when the thread that started this process ends (Linux).

    The one way out for a process too busy in C to notice by itself: a watch on a pipe
    needs the GIL. Only for a process whose starting thread lives as long as it should.
    If ``parent_pid`` is gone already, the signal will never come: exit now. False when
    the kernel cannot be asked (not Linux, no ``prctl``).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:  # no libc or no prctl: the pipe watch remains
        log.debug("no parent-death signal: %s", exc)
        return False
    if os.getppid() != parent_pid:  # it died before the request: too late for the signal
        driver_gone()
    return True


def _release_forkserver() -> None:
    """Close this child's copy of the forkserver's "alive" pipe.

    ``multiprocessing`` hands every forkserver child the pipe's write end, and the server
    exits only once all of them closed it. A child too busy in C to notice that its driver
    died (its pipe watch needs the GIL) would so keep the server alive, and the server alive
    keeps this child's parent-death signal from ever coming. Without the copy, the server
    exits with the driver and the kernel kills the child. A task that starts processes with
    forkserver itself starts a server of its own: this one was never this process's to use.
    """
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is None:
        return
    setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 (private to multiprocessing)
    try:
        os.close(fd)
    except OSError as exc:  # already closed: nothing holds the server up
        log.debug("the forkserver's alive pipe was already closed: %s", exc)


def driver_gone() -> NoReturn:
    """The driver is gone (its pipe is closed): exit now, silently, whatever is running.

    Nothing this process does can be recorded any more, and a traceback or a "Logging
    error" would only land in the terminal of a run that has already ended.
    """
    os._exit(ORPHAN_EXIT)


def importing_main_script() -> str | None:
    """The script a worker process is importing right now, or None (the usual case).

    A spawned or forkserver worker process runs its driver's script again, as
    ``__mp_main__``, to find the task functions. A script that starts its run at import
    time (no ``if __name__ == "__main__":``) would start a whole run inside every worker.
    ``_inheriting`` is the flag ``multiprocessing`` itself checks before refusing to start
    processes from there.
    """
    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__":
            return str(frame.f_globals.get("__file__") or "the script")
        frame = frame.f_back  # type: ignore[assignment]
    return "the script"
