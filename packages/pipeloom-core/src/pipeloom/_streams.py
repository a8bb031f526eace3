"""Streams pipeloom writes to, made unable to stop a run.

A run's work and its record never depend on the terminal or a log file. `guard` wraps a text
stream so that:

- text the stream's encoding cannot hold (a ``✗`` on a cp1252 console, a Japanese file name
  on a latin-1 pipe) is written with ``?`` in its place (one per terminal cell, so tables
  stay aligned) instead of raising ``UnicodeEncodeError``;
- a stream that cannot be written any more (the reader of a pipe exited: ``| head``,
  ``| grep -m1``; a full disk; a closed terminal) stops taking output: one line says so on
  stderr, later writes are dropped, and the file descriptor is pointed at ``/dev/null`` so
  nobody else's write (nor Python's flush at exit) fails on it either.

Rich, by default, turns a broken pipe into ``SystemExit(1)`` inside whatever thread was
printing, a task's log line included: measured, 53 of 60 tasks of a run never ran.
"""

from __future__ import annotations

import codecs
import io
import os
import sys
import threading
import weakref
from typing import IO, Any, cast

from pipeloom._text import printable

__all__ = ["GuardedStream", "guard", "note_stopped"]

_REPLACE = "pipeloom.cells"
"""Codec error handler: ``?`` per terminal cell, so a table of CJK names stays aligned."""


def _replace_cells(exc: UnicodeError) -> tuple[str, int]:
    """Replace unencodable text by as many ``?`` as the cells it takes on a terminal."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    from rich.cells import cell_len  # here: the CLI's start-up imports no Rich

    return "?" * cell_len(exc.object[exc.start : exc.end]), exc.end


codecs.register_error(_REPLACE, _replace_cells)

_lock = threading.Lock()
_guards: weakref.WeakKeyDictionary[Any, GuardedStream] = weakref.WeakKeyDictionary()


def note_stopped(what: str, exc: BaseException) -> None:
    """Say once, on stderr, that output to ``what`` stopped and why; never raises.

    It is the only trace a user gets of output that went missing, so it names the stream,
    the cause and that the run itself is unaffected.
    """
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    line = (
        f"pipeloom: stopped writing to {printable(what)} ({reason}); "
        "the run goes on and is still recorded in its database\n"
    )
    err = sys.stderr
    if err is None:
        return
    try:
        err = guard(err)
        if isinstance(err, GuardedStream) and err.stopped:
            return
        err.write(line)
        err.flush()
    except Exception:  # stderr is gone too: there is nowhere left to say it
        return


class GuardedStream(io.TextIOBase):
    """A text stream that replaces what it cannot encode and stops quietly when broken.

    It forwards to ``stream``; ``isatty``, ``fileno``, ``encoding`` and ``errors`` are the
    stream's, so Rich and Click see the terminal as it is. Bytes are refused with the
    stream's own ``TypeError`` (Click probes with ``write(b"")``).
    """

    def __init__(self, stream: IO[str], name: str) -> None:
        """Wrap ``stream``; ``name`` is how the one warning line calls it (``stdout``)."""
        super().__init__()
        self.stream = stream
        self.name_shown = name
        self.stopped = False
        self._stop_lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The wrapped stream's encoding (utf-8 when it does not say)."""
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        """The wrapped stream's error handler."""
        return getattr(self.stream, "errors", None)

    def isatty(self) -> bool:
        """Whether the wrapped stream is a terminal (False once stopped)."""
        if self.stopped:
            return False
        try:
            return bool(self.stream.isatty())
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        """The wrapped stream's descriptor (``io.UnsupportedOperation`` when it has none)."""
        return self.stream.fileno()

    def writable(self) -> bool:
        """Always: writes to a stopped stream are accepted and dropped."""
        return True

    def write(self, text: str) -> int:
        """Write ``text``, with ``?`` for what the encoding cannot hold; never raises OSError."""
        if self.stopped:
            return len(text)
        try:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:
                # The encoder failed before anything was written: the whole text again,
                # with what this console cannot show replaced.
                encoding = self.encoding
                self.stream.write(text.encode(encoding, _REPLACE).decode(encoding))
        except (OSError, ValueError) as exc:  # ValueError: the file was closed
            self._stop(exc)
        return len(text)

    def flush(self) -> None:
        """Flush the wrapped stream; a broken one stops output instead of raising."""
        if self.stopped:
            return
        try:
            self.stream.flush()
        except (OSError, ValueError) as exc:
            self._stop(exc)

    def _stop(self, exc: BaseException) -> None:
        with self._stop_lock:
            if self.stopped:
                return
            self.stopped = True
        _silence(self.stream)
        if self.stream is not sys.stderr and self.stream is not sys.__stderr__:
            note_stopped(self.name_shown, exc)


def _silence(stream: IO[str]) -> None:
    """Point a broken stream's descriptor at /dev/null, so later writes to it succeed.

    Python flushes ``sys.stdout`` at exit and exits 120 when that fails; a user's ``print``
    in a task would raise. Only the standard streams are redirected: a file a program
    opened itself is its own.
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    if fd not in (1, 2):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except OSError:
        return  # no /dev/null: the writes that follow are dropped by the guard anyway


def _name(stream: Any) -> str:
    if stream is sys.__stdout__ or stream is sys.stdout:
        return "stdout"
    if stream is sys.__stderr__ or stream is sys.stderr:
        return "stderr"
    return str(getattr(stream, "name", None) or type(stream).__name__)


def guard(stream: IO[str]) -> IO[str]:
    """Return ``stream`` wrapped in a `GuardedStream` (the same wrapper every time).

    An already guarded stream is returned as it is; so is one that cannot be tracked.
    """
    if isinstance(stream, GuardedStream):
        return stream
    try:
        found = _guards.get(stream)
    except TypeError:  # not weakly referenceable: wrap it each time (no shared state)
        return cast(IO[str], GuardedStream(stream, _name(stream)))
    if found is None:
        with _lock:
            found = _guards.get(stream)
            if found is None:
                found = _guards[stream] = GuardedStream(stream, _name(stream))
    return cast(IO[str], found)
