"""Where notifications go: console, webhook (HTTP POST JSON), JSON-lines audit file.

A sink is a plain object with a ``name`` and a blocking ``deliver(doc, key) -> Delivery``; a sink
that can do better offers ``async deliver_async(doc, key) -> Delivery`` too, and the notifier
awaits that one in its loop. Blocking sinks run in threads of their own (``max_in_flight`` per
sink), so a slow or dead sink never holds up another sink, the next alert or the escalation
timer. ``deliver`` never raises: every failure comes back as ``Delivery(ok=False, detail=...)``
so the notifier can count it, dead-letter it and move on. ``records_only`` marks a sink that
keeps a record and reaches nobody (the audit file): when every other sink of an alert failed,
the notifier escalates at once.

The webhook (aiohttp) is the one that can fail, and it fails loudly:

- **A total deadline per attempt** (``timeout_s``): connecting, sending and receiving the status
  line and headers together, not per socket read; a receiver trickling one byte every few
  seconds cannot hold an alert longer than that. The outcome is the status code; the response
  body is not read (nothing in it changes the outcome).
- **Redirects are not followed.** A 3xx answer is a failed attempt with its ``Location`` in the
  detail (urllib re-sent a redirected POST as a body-less GET whose 200 looked like a delivery).
  307 and 308 keep the method and body by definition (RFC 9110, 15.4.8/15.4.9); with
  ``redirects = "same-origin"`` those are re-POSTed when the target has the same scheme, host
  and port, at most ``_MAX_REDIRECTS`` times inside the same deadline.
- **Retries** on connection errors, timeouts, 5xx, 408 and 429, with exponential backoff
  (``backoff_s * 2**n``, capped at ``max_backoff_s``), at most ``retries`` times; other 4xx and
  3xx are not retried (the same request would get the same answer).
- **Signed** when ``secret`` is set: the Standard Webhooks headers ``webhook-id`` (the key),
  ``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature``
  (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, https://www.standardwebhooks.com/); the
  secret (``whsec_<base64>``) comes from the environment, never from the config file.
- Every attempt carries ``Idempotency-Key: <key>`` (the alert id, or ``<alert id>-escalation``)
  so the receiver can drop what it already has.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import urljoin, urlsplit

from streams.kafka import codec

PHASE_COLOURS = {"prodromal": "\033[33m", "leak": "\033[1;31m", "recovery": "\033[32m",
                 "none": "\033[36m"}
RESET = "\033[0m"
USER_AGENT = "clsmon-notifier/0.1"
_MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one notification to one sink."""

    ok: bool
    attempts: int = 1
    detail: str = ""


class Sink(Protocol):
    name: str

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        """Send one notification (blocking); never raises."""
        ...


def format_alert(doc: dict[str, Any], colour: bool = False) -> str:
    """One line a person on call can read: when, who, which phase, how bad, why, which id."""
    esc = doc.get("escalation")
    head = "ESCALATION (unacknowledged) " if isinstance(esc, dict) else ""
    where = " ".join(str(doc[k]) for k in ("ward", "bed") if doc.get(k))
    line = (f"{head}{doc.get('raised_at', '?')}  {doc.get('patient_id', '?')}"
            f"{f' ({where})' if where else ''}  "
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
    records_only: bool = True  # a record, not a person: see the notifier's escalation rule
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
REDIRECT_POLICIES = ("never", "same-origin")


class WebhookSecretError(ValueError):
    """A signing secret that is not a Standard Webhooks secret."""


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after the ``whsec_`` prefix."""
    text = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise WebhookSecretError("a webhook secret is 'whsec_' followed by base64") from exc
    if len(key) < 16:
        raise WebhookSecretError("a webhook secret needs at least 16 bytes (24 base64 chars)")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


@dataclass
class WebhookSink:
    """HTTP POST of the notification as JSON: total deadline per attempt, bounded retries, no
    redirects followed (see the module docstring), optionally signed."""

    url: str
    name: str = "webhook"
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    headers: dict[str, str] = field(default_factory=dict)
    #: "never" or "same-origin" (307/308 to the same scheme, host and port are re-POSTed)
    redirects: str = "never"
    #: Standard Webhooks secret (``whsec_...``); None: unsigned
    secret: str | None = None
    max_in_flight: int = 4
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._key = secret_bytes(self.secret) if self.secret else None

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        """Blocking form (tests, scripts): runs ``deliver_async`` in a fresh event loop."""
        return asyncio.run(self.deliver_async(doc, key))

    async def deliver_async(self, doc: dict[str, Any], key: str) -> Delivery:
        import aiohttp

        body = codec.encode(doc)
        detail = ""
        attempt = 0
        # one connection per attempt, closed after it: a half-read response never lingers
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0)) as session:
            for attempt in range(1, self.retries + 2):
                retry, detail = await self._attempt(session, body, key)
                if retry is None:
                    return Delivery(True, attempt, detail)
                if not retry or attempt > self.retries:
                    break
                await self.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
        return Delivery(False, attempt, f"{self.url}: {detail}")

    def _headers(self, body: bytes, key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   **self.headers, "Idempotency-Key": key}
        if self._key is not None:
            ts = int(self.clock())
            headers.update({"webhook-id": key, "webhook-timestamp": str(ts),
                            "webhook-signature": sign(self._key, key, ts, body)})
        return headers

    async def _attempt(self, session: Any, body: bytes, key: str) -> tuple[bool | None, str]:
        """(None, detail) when delivered, else (should retry, why). One deadline for the whole
        attempt, redirects (when allowed) included."""
        import aiohttp

        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(session, self.url, body, self._headers(body, key), 0)
        except TimeoutError:
            return True, f"no answer within the {self.timeout_s:g} s deadline"
        except aiohttp.InvalidURL as exc:
            return False, f"invalid URL: {exc}"
        except (aiohttp.ClientError, OSError) as exc:  # refused, reset, DNS, bad answer
            return True, f"{type(exc).__name__}: {exc}"

    async def _post(self, session: Any, url: str, body: bytes, headers: dict[str, str],
                    hops: int) -> tuple[bool | None, str]:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            status = resp.status
            location = resp.headers.get("Location")
        if 200 <= status < 300:
            return None, f"HTTP {status}" + (f" from {url}" if hops else "")
        if 300 <= status < 400:
            target = urljoin(url, location) if location else None
            if (status in (307, 308) and target and self.redirects == "same-origin"
                    and _same_origin(url, target) and hops < _MAX_REDIRECTS):
                return await self._post(session, target, body, headers, hops + 1)
            why = ("only 307/308 to the same origin may be followed, when configured"
                   if self.redirects == "same-origin" else "redirects are not followed")
            return False, f"HTTP {status} redirect to {location or '(no Location)'} ({why})"
        return (status >= 500 or status in _RETRY_STATUS), f"HTTP {status}"


@dataclass
class Hl7AcmSink:
    """IHE PCD ACM alert manager: ORU^R40 over MLLP (``streams.interfaces.hl7.acm``), one
    message per alert and per acknowledgement (``wants_acks``); waits for each ACK and retries
    (AR/CR, silence, connection errors; AE/CE is final)."""

    sender: Any  # streams.interfaces.hl7.acm.AcmSender
    settings: Any  # streams.interfaces.hl7.acm.AcmSettings
    name: str = "hl7-acm"
    wants_acks: bool = True
    clock: Callable[[], float] = time.time
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        from streams.interfaces.hl7.acm import AcmError, report_alert

        attempts = 0
        with self._lock:  # one MLLP connection: one message and its ACK at a time
            try:
                for message in report_alert(doc, int(self.clock() * 1000), self.settings):
                    _, tries = self.sender.send(message)
                    attempts += tries
            except AcmError as exc:
                return Delivery(False, max(attempts, 1), str(exc))
        return Delivery(True, max(attempts, 1), "ACK")


@dataclass
class FhirSink:
    """A FHIR R4 server: DetectedIssue with its evidence and a Communication, as one
    transaction of conditional creates (``streams.interfaces.fhir.outbound``), POSTed to the
    base URL by the webhook's delivery (deadline, retries, no redirects followed)."""

    post: WebhookSink  # url = the FHIR base URL, Content-Type application/fhir+json
    systems: Any  # streams.interfaces.fhir.outbound.FhirSystems
    name: str = "fhir"

    def _bundle(self, doc: dict[str, Any]) -> dict[str, Any] | Delivery:
        from streams.interfaces.fhir.outbound import alert_bundle

        try:
            return alert_bundle(doc, self.systems)
        except (KeyError, ValueError) as exc:
            return Delivery(False, 1, f"the alert cannot be written as FHIR: {exc}")

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        bundle = self._bundle(doc)
        return bundle if isinstance(bundle, Delivery) else self.post.deliver(bundle, key)

    async def deliver_async(self, doc: dict[str, Any], key: str) -> Delivery:
        bundle = self._bundle(doc)
        return bundle if isinstance(bundle, Delivery) else await self.post.deliver_async(
            bundle, key)
