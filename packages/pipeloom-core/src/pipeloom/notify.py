"""Ready-made alert hooks: `webhook` POSTs a run's summary (or a task's failure) as JSON.

Standard library only (``urllib``), so ``pipeloom-core`` stays light. The body carries the
message as ``text`` (what Slack and Microsoft Teams incoming webhooks display) and ``summary``
(Teams' notification line), and the whole record under ``pipeloom`` for any other receiver::

    {"text": "pipeloom nightly run 7: error (1 error, 99 done) in 12.3 s ...",
     "summary": "pipeloom nightly run 7: error ...",
     "pipeloom": {"kind": "run_end", "run_id": 7, "status": "error", "counts": {...}, ...}}
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from pipeloom.alerts import RunSummary, TaskFailure
from pipeloom.errors import InvalidArgumentError

__all__ = ["NotifyOn", "Webhook", "WebhookError", "payload", "webhook"]

NotifyOn: TypeAlias = Literal["failure", "always"]
"""When a webhook sends a run's summary: only when the run is not ok, or after every run."""

DEFAULT_TIMEOUT: Final = 5.0


class WebhookError(RuntimeError):
    """The receiver refused the POST or could not be reached (noted on the run, not raised)."""


def payload(event: RunSummary | TaskFailure) -> dict[str, object]:
    """The JSON body for ``event``: ``text``, ``summary`` and the record under ``pipeloom``."""
    text = event.text()
    kind = "run_end" if isinstance(event, RunSummary) else "task_failure"
    return {
        "text": text,
        "summary": text.splitlines()[0],
        "pipeloom": {"kind": kind, **event.as_json()},
    }


@dataclass(frozen=True)
class Webhook:
    """A hook that POSTs JSON to ``url``; use it as ``on_run_end`` and/or ``on_task_failure``."""

    url: str
    on: NotifyOn = "failure"
    timeout: float = DEFAULT_TIMEOUT
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def hook_name(self) -> str:
        """``webhook(https://host/...)``: the hook's name in logs and notes (no secret path)."""
        scheme, _, rest = self.url.partition("://")
        return f"webhook({scheme}://{rest.split('/', 1)[0]}/...)"

    def __call__(self, event: RunSummary | TaskFailure) -> None:
        """POST ``event`` (a run summary is skipped when ``on="failure"`` and the run is ok).

        Raises:
            WebhookError: the receiver answered with an error status or could not be reached.
        """
        if isinstance(event, RunSummary) and self.on == "failure" and event.ok:
            return
        body = json.dumps(payload(event), default=str).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **self.headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # the error is also the response: its socket is closed here
            raise WebhookError(f"{self.hook_name} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise WebhookError(f"{self.hook_name} unreachable: {exc}") from exc


def webhook(
    url: str,
    *,
    on: NotifyOn = "failure",
    timeout: float = DEFAULT_TIMEOUT,
    headers: Mapping[str, str] | None = None,
) -> Webhook:
    """A hook that POSTs a JSON message to ``url`` (Slack, Teams or any receiver).

    Args:
        url: the incoming-webhook URL (http or https).
        on: ``failure`` (default) sends a run's summary only when it is not ok; ``always``
            after every run. Task failures are always sent.
        timeout: seconds to wait for the receiver.
        headers: extra HTTP headers (an ``Authorization`` for a generic receiver).

    Raises:
        InvalidArgumentError: the URL is not http(s), or ``on`` is not failure/always.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidArgumentError(f"webhook({url!r}): use an http:// or https:// URL")
    if on not in ("failure", "always"):
        raise InvalidArgumentError(f"webhook(on={on!r}): use 'failure' or 'always'")
    return Webhook(url, on, timeout, dict(headers or {}))
