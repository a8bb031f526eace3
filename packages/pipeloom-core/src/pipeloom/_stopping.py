"""Stop signals: Ctrl-C, SIGTERM and SIGHUP end a run the same way, in up to three steps.

Installed by `pipeloom.engine.run_pipeline` on the main thread for the length of a run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from pipeloom._env import env_seconds
from pipeloom.errors import (
    Interrupted,
)
from pipeloom.logs import console as shared_console
from pipeloom.status import StopReason

if TYPE_CHECKING:
    from pipeloom._admission import Run

__all__ = ["DEFAULT_STOP_GRACE", "STOP_GRACE_ENV", "InterruptHandler", "stop_grace"]

log = logging.getLogger("pipeloom.engine")

STOP_GRACE_ENV = "PIPELOOM_STOP_GRACE"
"""Environment variable: seconds SIGTERM and SIGHUP let running tasks finish (default 5)."""
DEFAULT_STOP_GRACE = 5.0
"""Within Docker's 10 s between ``docker stop``'s SIGTERM and its SIGKILL, with time left
for the summary and the final commit."""

_STOP_SIGNALS: dict[int, StopReason] = {
    signal.SIGINT: "sigint",
    signal.SIGTERM: "sigterm",
    **({signal.SIGHUP: "sighup"} if hasattr(signal, "SIGHUP") else {}),
}
"""The signals that stop a run, and the `StopReason` each records."""
_SIGNAL_NAMES: dict[str, str] = {"sigint": "Ctrl-C", "sigterm": "SIGTERM", "sighup": "SIGHUP"}


def stop_grace() -> float:
    """Seconds SIGTERM and SIGHUP let running tasks finish: `STOP_GRACE_ENV`, else 5."""
    return env_seconds(STOP_GRACE_ENV, DEFAULT_STOP_GRACE, 0)


def _detach_terminal() -> None:
    """After SIGHUP the terminal is gone: writing to it would fail, so write nowhere.

    Output that goes to a file or a pipe is kept.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError as exc:
        log.debug("cannot open %s: %s", os.devnull, exc)
        return
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):  # fd closed already: nothing to detach
                if os.isatty(fd):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class InterruptHandler:
    """Ctrl-C, SIGTERM and SIGHUP stop a run the same way, in up to three steps.

    First signal: stop admitting tasks, let the ones in flight finish (after SIGTERM or
    SIGHUP for `stop_grace` seconds at most: a process manager's SIGKILL follows). Second
    signal, or the grace period over: abandon the tasks in flight (``interrupted``). Third:
    raise `Interrupted` at once. The first signal's `StopReason` is recorded and decides the
    exit code. Installed explicitly, so it also works as PID 1 in a container, where the
    kernel drops a signal that has no handler.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.count = 0
        self.first: StopReason = "sigint"
        self.last: StopReason = "sigint"
        self.deadline: float | None = None
        self.grace = DEFAULT_STOP_GRACE
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        cause = _STOP_SIGNALS.get(signum, "sigint")
        self.last = cause
        self.run.stop("cancelled", cause)
        if self.count >= 3:
            raise Interrupted(self.first)
        if self.count > 1:
            return
        self.first = cause
        if cause == "sighup":
            _detach_terminal()
        if cause == "sigint":
            text = "Stopping: letting running tasks finish (Ctrl-C again to abandon them)"
        else:
            self.deadline = time.monotonic() + self.grace
            name = _SIGNAL_NAMES[cause]
            text = (
                f"Stopping on {name}: letting running tasks finish for up to "
                f"{self.grace:g} s ({name} again to abandon them)"
            )
        try:
            shared_console.print(f"[yellow]{text}")
        except OSError as exc:  # the terminal went away
            log.debug("cannot print the stop notice: %s", exc)

    def abandon_why(self) -> str | None:
        """Why the tasks in flight are abandoned now (a second signal, the grace over), or None."""
        if self.count >= 2:
            return f"stopped by a second {_SIGNAL_NAMES[self.last]}"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            name = _SIGNAL_NAMES[self.first]
            return f"stopped by {name}: not finished within its {self.grace:g} s grace period"
        return None

    def __enter__(self) -> InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            self.grace = stop_grace()
            for signum in _STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
