"""Where notifications go: console, webhook (HTTP POST JSON), JSON-lines audit file.

A sink is a plain object with a ``name`` and a blocking ``deliver(doc, key) -> Delivery``; the
notifier runs it in a thread so a slow receiver never blocks the event loop (heartbeats, timers).
``deliver`` never raises: every failure comes back as ``Delivery(ok=False, detail=...)`` so the
notifier can count it, dead-letter it and move on.

The webhook is the one that can fail. It retries connection errors, timeouts, 5xx, 408 and 429
with exponential backoff (``backoff_s * 2**n``, capped at ``max_backoff_s``), at most ``retries``
times, then gives up: a dead receiver costs at most about ``(retries + 1) * timeout_s`` plus the
backoff sum per notification, never a stalled partition. Other 4xx are not retried (the request
itself is wrong). Every attempt carries ``Idempotency-Key: <key>`` (the alert id, or
``<alert id>-escalation`` for an escalation) so the receiver can drop what it already has.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from streams.kafka import codec

PHASE_COLOURS = {"prodromal": "\033[33m", "leak": "\033[1;31m", "recovery": "\033[32m",
                 "none": "\033[36m"}
RESET = "\033[0m"
USER_AGENT = "clsmon-notifier/0.1"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one notification to one sink."""

    ok: bool
    attempts: int = 1
    detail: str = ""


class Sink(Protocol):
    name: str

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        """Send one notification; never raises."""
        ...


def format_alert(doc: dict[str, Any], colour: bool = False) -> str:
    """One line a person on call can read: when, who, which phase, how bad, why, which id."""
    esc = doc.get("escalation")
    head = "ESCALATION (unacknowledged) " if isinstance(esc, dict) else ""
    line = (f"{head}{doc.get('raised_at', '?')}  {doc.get('patient_id', '?')}  "
            f"{doc.get('previous_phase', '?')} -> {doc.get('phase', '?')}  "
            f"[{str(doc.get('severity', '?')).upper()}]  {doc.get('summary', '')}  "
            f"(alert {doc.get('alert_id', '?')})")
    if colour:
        return f"{PHASE_COLOURS.get(str(doc.get('phase')), '')}{line}{RESET}"
    return line


@dataclass
class ConsoleSink:
    """Prints one readable line per notification (coloured by phase on a terminal)."""

    name: str = "console"
    out: TextIO | None = None

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        out = self.out or sys.stdout
        try:
            print(format_alert(doc, colour=out.isatty()), file=out, flush=True)
        except (OSError, ValueError) as exc:  # closed pipe or stream
            return Delivery(False, 1, f"console: {exc}")
        return Delivery(True)


@dataclass
class AuditSink:
    """Appends one JSON object per line to ``path``: every notification sent to it, and the
    notifier's audit records (failed deliveries, acknowledgements). Flushed per line."""

    path: str
    name: str = "audit"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        kind = "escalation" if isinstance(doc.get("escalation"), dict) else "alert"
        return self.record({"event": kind, "key": key, "alert_id": doc.get("alert_id"),
                            "patient_id": doc.get("patient_id"), "alert": doc})

    def record(self, entry: dict[str, Any]) -> Delivery:
        line = json.dumps({"recorded_at": codec.now_iso(), **entry}, separators=(",", ":"))
        try:
            with self._lock:
                p = Path(self.path)
                p.parent.mkdir(parents=True, exist_ok=True)
                with p.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
        except OSError as exc:
            return Delivery(False, 1, f"audit file {self.path}: {exc}")
        return Delivery(True)


_RETRY_STATUS = frozenset({408, 429})


@dataclass
class WebhookSink:
    """HTTP POST of the notification as JSON, with retries and an ``Idempotency-Key``."""

    url: str
    name: str = "webhook"
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    headers: dict[str, str] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        body = codec.encode(doc)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   **self.headers, "Idempotency-Key": key}
        detail = ""
        attempt = 0
        for attempt in range(1, self.retries + 2):
            retry, detail = self._post(body, headers)
            if retry is None:
                return Delivery(True, attempt, detail)
            if not retry or attempt > self.retries:
                break
            self.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
        return Delivery(False, attempt, f"{self.url}: {detail}")

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[bool | None, str]:
        """(None, detail) when delivered, else (should retry, why)."""
        try:
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                resp.read()
                return None, f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            exc.close()
            return (exc.code >= 500 or exc.code in _RETRY_STATUS), f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, timeout, DNS
            reason = getattr(exc, "reason", exc)
            return True, f"{type(exc).__name__}: {reason}"
        except ValueError as exc:  # a URL urllib cannot use: retrying will not help
            return False, f"ValueError: {exc}"
