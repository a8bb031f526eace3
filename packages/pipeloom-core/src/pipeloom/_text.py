"""Turning anything users hand over (names, messages, exceptions) into text safely.

Every place that stores or prints user text goes through these, so one rule holds
everywhere: any text can be stored (what SQLite's UTF-8 cannot hold is escaped, never
refused), any text can be printed (control characters are shown, never obeyed by the
terminal), and describing a failure never fails itself (a user ``__str__`` may raise).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback

__all__ = [
    "MAX_TEXT_CHARS",
    "RESULT_MAX_CHARS",
    "exc_summary",
    "exc_text",
    "printable",
    "result_text",
    "shorten_middle",
    "storable",
]

log = logging.getLogger("pipeloom")

MAX_TEXT_CHARS = 100_000
"""Stored texts (errors, payloads) longer than this are cut, with a note."""
SUMMARY_CHARS = 500
"""A one-line error summary is cut to this many characters."""
RESULT_MAX_CHARS = 10_000
"""A task's stored result is at most this long; longer text is cut, with a note."""


def storable(value: object, limit: int = MAX_TEXT_CHARS) -> str:
    """Return ``value`` as text SQLite can store: valid UTF-8, at most ``limit`` chars.

    Lone surrogates (file names from ``os.listdir`` that are not UTF-8) are escaped as
    a backslash escape rather than refused, so a task's row never depends on its text.
    """
    text = value if type(value) is str else _str(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[:limit] + f"... [truncated, {len(text)} chars in all]"
    return text


def result_text(value: object, *, exact: bool = False) -> str | None:
    """Turn a task's return value into ``task_runs.result`` text: the one rule for results.

    Used by the declarative runner (before the value crosses a process) and by the writer
    (for whatever a hand-written ``worker_fn`` sends), so both store the same text. None
    stays None, strings are kept as they are, other values become JSON when they can and
    their ``repr`` otherwise. Text over `RESULT_MAX_CHARS` is cut with a note, and the cut
    text with its note fits the cap, so applying this twice changes nothing.

    ``exact=True`` (a task whose result other stages consume) stores strings as JSON too, so
    a resume can read every JSON-able result back as the value it was.
    """
    if value is None:
        return None
    if isinstance(value, str) and not exact:
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except Exception:  # not JSON-able (or a user __eq__/__iter__ raised): its repr
            try:
                text = repr(value)
            except Exception as exc:  # a user __repr__ may raise anything
                reason = exc_summary(exc)
                log.warning(
                    "result of type %s has a failing repr: %s", type(value).__name__, reason
                )
                text = f"<unrepresentable {type(value).__name__}: {reason}>"
    text = storable(text, sys.maxsize)  # escapes what UTF-8 cannot hold before measuring
    if len(text) > RESULT_MAX_CHARS:
        note = f"… [result truncated: {len(text)} chars in all]"
        text = text[: RESULT_MAX_CHARS - len(note)] + note
    return text


def _str(value: object) -> str:
    try:
        return str(value)
    except Exception as exc:  # a user __str__ may raise anything
        return f"<unprintable {type(value).__name__}: {_fallback(exc)}>"


def _fallback(exc: BaseException) -> str:
    try:
        return repr(exc)
    except Exception:  # even repr failed: the type is all that is left
        return type(exc).__name__


def exc_summary(exc: BaseException, limit: int = SUMMARY_CHARS) -> str:
    """One line naming the exception: ``ValueError: bad row 200``, never raising."""
    text = _str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return storable(line, limit)


def exc_text(exc: BaseException) -> str:
    """The full traceback of ``exc`` as text, never raising (a user ``__str__`` may)."""
    try:
        return storable("".join(traceback.format_exception(exc)))
    except Exception as err:  # formatting calls the user's __str__; describe it without
        log.debug("formatting %s failed: %s", type(exc).__name__, _fallback(err))
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return storable(f"Traceback (most recent call last):\n{frames}{exc_summary(exc)}\n")


# C0 controls but tab (ESC starts the sequences that retitle windows or clear screens), DEL,
# C1 controls (0x9b is a one-byte CSI on some terminals), Unicode line and paragraph
# separators, and the bidirectional overrides and isolates that reorder what is shown.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_KEEP_NEWLINES = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, newlines: bool = False) -> str:
    r"""Return ``value`` as text that is safe to show on a terminal, never raising.

    User text (task names, messages, keys, results, paths) is data: printed raw, an ESC
    in it could retitle the window or clear the screen. Control characters are replaced by
    their visible backslash escapes (``\x1b``), so the reader still sees that they were
    there; a tab stays; newlines stay only with ``newlines=True`` (multi-line cells), else
    they show as ``\n`` so one value keeps to one line. Text that cannot be encoded (lone
    surrogates) is escaped as `storable` does. Rich markup is *not* escaped here: pass the
    result to Rich as a ``Text`` (or through ``rich.markup.escape`` when building markup).
    """
    text = value if type(value) is str else _str(value)
    if not text.isprintable():
        pattern = _UNPRINTABLE_KEEP_NEWLINES if newlines else _UNPRINTABLE
        text = pattern.sub(_shown, text)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


ELLIPSIS = "…"


def shorten_middle(text: str, width: int) -> str:
    """Fit ``text`` into ``width`` terminal cells by cutting its middle.

    Keys and names are often paths (``load:/data/2024/11/…/part-0007.csv``): their start says
    which task and their end which file, so both stay and the middle gives way. Widths are
    Rich's cell widths, so a wide character (CJK, most emoji) counts as two cells and is never
    split. Text that fits is returned as it is.
    """
    if text.isascii():  # one cell per character: the common case, called once per task
        if len(text) <= width:
            return text
        if width <= 1:
            return ELLIPSIS[: max(width, 0)]
        keep = width - 1
        return text[: keep - keep // 2] + ELLIPSIS + text[len(text) - keep // 2 :]
    from rich.cells import cell_len  # here: reading history (and this module) needs no Rich

    if cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[: max(width, 0)]
    keep = width - 1
    head = _fit_cells(text, keep - keep // 2)
    tail = _fit_cells(text[::-1], keep - cell_len(head))[::-1]
    return head + ELLIPSIS + tail


def _fit_cells(text: str, width: int) -> str:
    """The longest prefix of ``text`` that takes at most ``width`` cells."""
    from rich.cells import get_character_cell_size

    used = 0
    for index, char in enumerate(text):
        used += get_character_cell_size(char)
        if used > width:
            return text[:index]
    return text
