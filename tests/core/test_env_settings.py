"""Settings from the environment: a usable value is taken, a bad one warned about and ignored."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from pipeloom._stopping import STOP_GRACE_ENV, stop_grace
from pipeloom.progress import PROGRESS_EVERY_ENV, plain_interval

READERS: list[tuple[str, Callable[[], float]]] = [
    (STOP_GRACE_ENV, stop_grace),
    (PROGRESS_EVERY_ENV, plain_interval),
]


@pytest.mark.parametrize(("name", "read"), READERS)
def test_a_usable_value_is_taken(
    name: str, read: Callable[[], float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, " 2.5 ")
    assert read() == 2.5


@pytest.mark.parametrize(("name", "read"), READERS)
@pytest.mark.parametrize("raw", ["abc", "-1", "nan", "inf"])
def test_a_bad_value_is_named_in_a_warning_and_the_default_used(
    name: str,
    read: Callable[[], float],
    raw: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv(name, raising=False)
    default = read()
    monkeypatch.setenv(name, raw)
    with caplog.at_level(logging.WARNING, logger="pipeloom"):
        assert read() == default
    assert any(f"{name}={raw!r}" in r.getMessage() for r in caplog.records)


def test_a_progress_interval_over_a_day_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROGRESS_EVERY_ENV, "86401")
    assert plain_interval(default=5.0) == 5.0
