"""One attempt of a declarative task, its timeout, and the wait before the next attempt.

Python threads cannot be killed. A timeout therefore runs the task function in its own daemon
thread and stops *waiting* for it: the attempt is recorded ``timeout``, the task's context is
cancelled (so a cooperative task can stop and its late progress and messages are dropped), and
the thread is left to finish on its own.
"""

from __future__ import annotations

import faulthandler
import logging
import random
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeloom._text import exc_summary, exc_text
from pipeloom.errors import TaskTimeoutError

__all__ = ["Outcome", "TaskTimeoutError", "backoff_delay", "run_attempt"]

log = logging.getLogger("pipeloom.pipeline")

_MAX_EXPONENT = 30
"""2**30 times any sensible base is far past any cap; stops float overflow on huge retries."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended."""

    status: str
    """done, error or timeout."""
    value: Any = None
    """The task function's return value (done only)."""
    exc: BaseException | None = None
    """What went wrong (error and timeout)."""
    error_text: str | None = None
    """The traceback, or for a timeout where the abandoned thread was stuck."""
    thread: threading.Thread | None = None
    """The abandoned thread of a timed-out attempt."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after failed ``attempt`` (1-based) before the next one.

    Exponential (base, 2*base, 4*base, ...) up to ``cap``, with "equal jitter": half the delay
    fixed, half random, so tasks that failed together (a rate limit, a flapping server) do not
    retry in lockstep.
    """
    if base <= 0 or cap <= 0:
        return 0.0
    delay = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return delay / 2 + rng.uniform(0.0, delay / 2)


def run_attempt(
    fn: Callable[[], Any],
    *,
    timeout: float | None,
    on_timeout: Callable[[], None],
    thread_name: str,
) -> Outcome:
    """Call ``fn`` once, in this thread, or in a daemon thread when ``timeout`` is set.

    Args:
        fn: the attempt, with its arguments bound.
        timeout: seconds to wait; None waits as long as it takes, in the calling thread.
        on_timeout: called once the attempt is given up (cancels the task's context).
        thread_name: name of the attempt's thread, shown in stack dumps.

    Returns:
        The attempt's `Outcome`. Exceptions that are not ``Exception`` (KeyboardInterrupt,
        SystemExit) propagate, so the engine can stop the run.
    """
    if timeout is None:
        try:
            return Outcome("done", value=fn())
        except Exception as exc:
            return Outcome("error", exc=exc, error_text=exc_text(exc))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the waiting worker, never lost
            box["exc"] = exc

    thread = threading.Thread(target=target, name=thread_name, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        stack = _stack_of(thread)  # before cancelling: a cooperative task then unwinds
        on_timeout()
        timed_out = TaskTimeoutError(
            f"did not finish within {timeout:g} s; its thread was abandoned (threads cannot "
            "be killed) and keeps running until the function returns"
        )
        # The one-line error is the text's last line (as in a traceback): the stack comes
        # first, as the detail, so every reader shows the timeout, not a frame of the dump.
        text = exc_summary(timed_out) + "\n"
        if stack:
            text = f"Where the attempt's thread was when it was abandoned:\n{stack}\n{text}"
        return Outcome("timeout", exc=timed_out, error_text=text, thread=thread)
    if "exc" in box:
        caught: BaseException = box["exc"]
        if not isinstance(caught, Exception):
            raise caught
        return Outcome("error", exc=caught, error_text=exc_text(caught))
    return Outcome("done", value=box.get("value"))


def _stack_of(thread: threading.Thread) -> str | None:
    """Say where ``thread`` is now, which is what a user needs to fix a hang.

    Walking another thread's frames from Python (``sys._current_frames`` and ``traceback``)
    crashed CPython 3.11 here when that thread unwound during the walk. faulthandler reads
    every thread's frames in C without releasing the GIL, so none of them can move meanwhile.
    """
    if thread.ident is None:
        return None
    try:
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as dump:
            faulthandler.dump_traceback(dump, all_threads=True)
            dump.seek(0)
            text = dump.read()
    except (OSError, ValueError) as exc:
        log.debug("could not capture the stack of %s: %s", thread.name, exc)
        return None
    found = re.search(rf"^Thread 0x0*{thread.ident:x} .*?(?=^\S|\Z)", text, re.M | re.S)
    return found.group(0).rstrip() + "\n" if found else None
