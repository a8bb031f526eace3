"""Stop signals for the whole ``pipeloom`` command, not only while a run is going.

As PID 1 in a container (``docker run`` without ``--init``) the kernel drops any signal that
has no handler, so ``docker stop`` would wait for its SIGKILL. The command installs handlers
for SIGINT, SIGTERM and SIGHUP before it does anything: each raises `Interrupted`, which
``user_errors`` turns into the signal's exit code (130, 143, 129). While a pipeline runs, the
engine's own handlers take over (a graceful stop) and put these back afterwards.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from pipeloom.errors import Interrupted

__all__ = ["install", "received"]

_REASONS = {"SIGINT": "sigint", "SIGTERM": "sigterm", "SIGHUP": "sighup"}
_received: list[str] = []


def received() -> str | None:
    """The `pipeloom.status.StopReason` of the first stop signal this command got, if any."""
    return _received[0] if _received else None


def _handle(signum: int, frame: FrameType | None) -> None:
    reason = _REASONS.get(signal.Signals(signum).name, "sigint")
    _received.append(reason)
    raise Interrupted(reason)


def install() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into `Interrupted` (on the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in _REASONS:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, _handle)
