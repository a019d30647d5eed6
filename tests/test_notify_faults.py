"""Notifications that cannot silently fail: each failure kind of issue 16 against a real local
HTTP receiver (127.0.0.1). Each of these fails on the notifier before issue 16: a 302 counted as
delivered after a body-less GET, a trickling receiver holding an alert for as long as it
trickles, one dead webhook delaying every other sink and the escalation timer."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from notify_support import FaultyReceiver, alert_doc, refused_url

from streams.kafka import codec
from streams.kafka.topics import TopicNames
from streams.notify.notifier import Incoming, Notifier, NotifyMetrics
from streams.notify.routing import Route, Routing, routing_from_mapping
from streams.notify.sinks import AuditSink, Delivery, WebhookSink

NAMES = TopicNames("f.")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example


@pytest.fixture
def receiver() -> Any:
    r = FaultyReceiver(trickle_s=0.5)
    yield r
    r.stop()


async def _no_sleep(s: float) -> None:
    return None


# --- one webhook, one failure kind each -------------------------------------------------------

@pytest.mark.parametrize("code", [301, 302])
def test_a_redirect_is_a_failed_attempt_with_its_location_never_a_get(receiver: FaultyReceiver,
                                                                      code: int) -> None:
    sink = WebhookSink(receiver.url(f"/hook{code}"), retries=2, sleep=_no_sleep)
    result = sink.deliver(alert_doc("icu3-bed01"), "k")
    assert not result.ok
    assert f"HTTP {code} redirect to /moved" in result.detail
    assert result.attempts == 1  # the same POST would get the same redirect
    assert receiver.paths() == [("POST", f"/hook{code}")]  # no GET, no re-POST


def test_307_is_followed_only_when_configured_and_only_to_the_same_origin(
        receiver: FaultyReceiver) -> None:
    doc = alert_doc("icu3-bed02")
    refused = WebhookSink(receiver.url("/hook307"), retries=0).deliver(doc, "a")
    assert not refused.ok and "HTTP 307 redirect to /moved" in refused.detail
    followed = WebhookSink(receiver.url("/hook308"), retries=0,
                           redirects="same-origin").deliver(doc, "b")
    assert followed.ok, followed.detail
    away = WebhookSink(receiver.url("/hook307-away"), retries=0,
                       redirects="same-origin").deliver(doc, "c")
    assert not away.ok and "same origin" in away.detail
    hits = receiver.hits
    assert [(h.method, h.path) for h in hits] == [
        ("POST", "/hook307"), ("POST", "/hook308"), ("POST", "/moved"), ("POST", "/hook307-away")]
    assert json.loads(hits[2].body) == doc  # re-POSTed with its body


def test_a_receiver_trickling_its_answer_cannot_hold_an_alert_past_the_deadline(
        receiver: FaultyReceiver) -> None:
    sink = WebhookSink(receiver.url("/slow-head"), timeout_s=1.0, retries=1, backoff_s=0.1)
    started = time.monotonic()
    result = sink.deliver(alert_doc("icu3-bed03"), "k")
    took = time.monotonic() - started
    assert not result.ok and result.attempts == 2 and "deadline" in result.detail
    assert took < 2 * 1.0 + 0.1 + 2.0, took  # two attempts of 1 s each, not ~40 bytes x 0.5 s


def test_a_status_answered_at_once_is_the_outcome_whatever_the_body_does(
        receiver: FaultyReceiver) -> None:
    started = time.monotonic()
    result = WebhookSink(receiver.url("/slow-body"), timeout_s=5.0).deliver(
        alert_doc("icu3-bed04"), "k")
    assert result.ok and result.attempts == 1
    assert time.monotonic() - started < 5.0  # not 30 bytes x 0.5 s


def test_connection_refused_is_retried_then_failed() -> None:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    result = WebhookSink(refused_url(), retries=2, backoff_s=0.2, sleep=sleep).deliver(
        alert_doc("p1"), "k")
    assert not result.ok and result.attempts == 3 and sleeps == [0.2, 0.4]
    assert "connect" in result.detail.lower()


def test_signed_webhooks_verify_with_the_standard_webhooks_reference_library(
        receiver: FaultyReceiver) -> None:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    doc = alert_doc("icu3-bed05")
    assert WebhookSink(receiver.url("/ok"), secret=SECRET).deliver(doc, "id-1").ok
    [hit] = receiver.hits
    headers = {k.lower(): v for k, v in hit.headers.items()}
    assert headers["webhook-id"] == "id-1" == headers["idempotency-key"]
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert Webhook(SECRET).verify(hit.body, headers) == doc
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 32).verify(hit.body, headers)


def test_the_signing_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    from streams.notify.routing import RoutingError

    config = {"sinks": {"hook": {"type": "webhook", "url": "http://127.0.0.1:1/",
                                 "secret_env": "CLSMON_TEST_SECRET"}}}
    monkeypatch.delenv("CLSMON_TEST_SECRET", raising=False)
    with pytest.raises(RoutingError, match="CLSMON_TEST_SECRET .* is not set"):
        routing_from_mapping(config, tmp_path)
    monkeypatch.setenv("CLSMON_TEST_SECRET", "not base64!")
    with pytest.raises(RoutingError, match="whsec_"):
        routing_from_mapping(config, tmp_path)
    monkeypatch.setenv("CLSMON_TEST_SECRET", SECRET)
    sink = routing_from_mapping(config, tmp_path).sinks["hook"]
    assert isinstance(sink, WebhookSink) and sink.secret == SECRET


# --- the notifier: sinks independent, the timer never waiting --------------------------------

class MemoryLedger:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, alert_id: str) -> dict[str, Any] | None:
        raw = self.data.get(alert_id)
        return None if raw is None else json.loads(raw)

    async def put(self, partition: int, alert_id: str, record: dict[str, Any]) -> None:
        self.data[alert_id] = codec.encode(record)

    def pending(self) -> Any:
        return [(k, json.loads(v)) for k, v in self.data.items() if b'"open":true' in v]


class TimedSink:
    """Records when each notification arrived (a sink that is always quick)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[tuple[str, float]] = []

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        self.got.append((key, time.monotonic()))
        return Delivery(True)


def _notifier(tmp_path: Path, dead_url: str, escalate_after: float = 600.0
              ) -> tuple[Notifier, TimedSink, TimedSink, list[Any]]:
    quick, page = TimedSink("ward-screen"), TimedSink("page")
    # each alert costs the dead pager 2 x 2 s: one after the other, a quick sink waiting behind
    # it would see the third alert after 8 s
    dead = WebhookSink(dead_url, name="pager", timeout_s=2.0, retries=1, backoff_s=0.1)
    sinks = {"pager": dead, "ward-screen": quick, "page": page,
             "audit": AuditSink(str(tmp_path / "audit.jsonl"))}
    route = Route("icu3", ("icu3-",), ("pager", "ward-screen", "audit"), ("page",))
    dead_letters: list[Any] = []
    n = Notifier(Routing(sinks, route, [route]),  # type: ignore[arg-type]
                 NAMES, MemoryLedger(), NotifyMetrics(), lambda *a: dead_letters.append(a),
                 escalate_after={"critical": escalate_after})
    return n, quick, page, dead_letters


def _message(doc: dict[str, Any], offset: int) -> Incoming:
    return Incoming(NAMES.alerts, 0, offset, doc["patient_id"].encode(), codec.encode(doc))


def test_a_dead_webhook_delays_neither_the_other_sinks_nor_the_next_alert(
        receiver: FaultyReceiver, tmp_path: Path) -> None:
    n, quick, _, dead_letters = _notifier(tmp_path, receiver.url("/slow-head"))
    docs = [alert_doc(f"icu3-bed{i:02d}", severity="critical") for i in range(3)]

    async def scenario() -> float:
        started = time.monotonic()
        for i, doc in enumerate(docs):
            await n.on_message(_message(doc, i))
        handled = time.monotonic() - started
        deadline = time.monotonic() + 3
        while len(quick.got) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [k for k, _ in quick.got] == [d["alert_id"] for d in docs]
        assert all(at - started < 1.5 for _, at in quick.got), quick.got
        await n.idle()
        return handled

    assert asyncio.run(scenario()) < 1.5  # the messages were acknowledged at once
    for doc in docs:
        record = n.ledger.get(doc["alert_id"])
        assert record is not None
        assert record["sinks"] == {"pager": "failed", "ward-screen": "delivered",
                                   "audit": "delivered"}
    assert [d[5] for d in dead_letters] == ["notification_failed"] * 3
    metrics = n.metrics.registry
    assert metrics.get_sample_value("clsmon_notifications_total",
                                    {"sink": "pager", "outcome": "failed"}) == 3
    assert metrics.get_sample_value("clsmon_notification_delivery_seconds_count",
                                    {"sink": "pager", "kind": "alert"}) == 3


def test_the_escalation_timer_never_waits_for_a_delivery(receiver: FaultyReceiver,
                                                        tmp_path: Path) -> None:
    n, quick, page, _ = _notifier(tmp_path, receiver.url("/slow-head"), escalate_after=0.3)
    doc = alert_doc("icu3-bed07", severity="critical")

    async def scenario() -> float:
        started = time.monotonic()
        await n.on_message(_message(doc, 0))
        while not page.got and time.monotonic() - started < 5:
            await n.dispatch()
            await asyncio.sleep(0.05)
        await n.idle()
        return page.got[0][1] - started if page.got else float("inf")

    waited = asyncio.run(scenario())
    assert 0.3 <= waited < 2.0, waited  # the pager was still trickling (2 x 2 s)
    assert page.got[0][0] == doc["alert_id"] + "-escalation"


def test_nobody_reached_is_escalated_at_once(tmp_path: Path) -> None:
    n, quick, page, _ = _notifier(tmp_path, refused_url())
    n.routing.default = n.routing.routes[0] = Route(
        "icu3", ("icu3-",), ("pager", "audit"), ("page",))
    doc = alert_doc("icu3-bed08", severity="critical")

    async def scenario() -> None:
        await n.on_message(_message(doc, 0))
        await n.idle()
        await n.idle()

    asyncio.run(scenario())
    [(key, _)] = page.got
    assert key == doc["alert_id"] + "-escalation"
    record = n.ledger.get(doc["alert_id"])
    assert record is not None and record["escalation"]["reason"] == "delivery_failed"
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [a["event"] for a in audit if a["event"].endswith("_failed")] == ["alert_failed"]
