"""Broker-free tests of the notifier: routing config, sinks against a real HTTP receiver, and
the notifier's decisions (dedup, acks, escalation, dead letters) over an in-memory ledger."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from notify_support import Receiver, alert_doc

from streams.cli import main
from streams.kafka import codec
from streams.kafka.topics import TopicNames
from streams.notify.notifier import Incoming, Notifier, NotifyMetrics, parse_ack
from streams.notify.routing import Route, Routing, RoutingError, load_routing, routing_from_mapping
from streams.notify.sinks import AuditSink, ConsoleSink, Delivery, WebhookSink, format_alert

NAMES = TopicNames("u.")


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


# --- routing ------------------------------------------------------------------------------

def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "sinks": {"console": {"type": "console"},
                  "audit": {"type": "audit", "path": "audit.jsonl"},
                  "icu3": {"type": "webhook", "url": "http://127.0.0.1:1/icu3", "retries": 1},
                  "icu3-b": {"type": "webhook", "url": "http://127.0.0.1:1/b"},
                  "page": {"type": "webhook", "url": "http://127.0.0.1:1/page"}},
        "default": {"sinks": ["console"], "escalation": ["console"]},
        "route": [{"ward": "icu3", "sinks": ["icu3", "audit"], "escalation": ["page"]},
                  {"ward": "icu3-b", "prefixes": ["icu3-b-"], "sinks": ["icu3-b"]}],
    }


def test_routing_by_ward_field_then_longest_prefix_then_default(tmp_path: Path) -> None:
    r = routing_from_mapping(_config(tmp_path), tmp_path)
    assert r.route({"patient_id": "icu3-bed07"}).ward == "icu3"      # default prefix "icu3-"
    assert r.route({"patient_id": "icu3-b-12"}).ward == "icu3-b"      # longest prefix wins
    assert r.route({"patient_id": "bed9", "ward": "icu3"}).ward == "icu3"  # ward field first
    assert r.route({"patient_id": "icu3-bed1", "ward": "nowhere"}).ward == "icu3"
    assert r.route({"patient_id": "er-01"}) == r.default
    assert r.sinks["icu3"].retries == 1  # type: ignore[attr-defined]
    assert r.sinks["audit"].path == str(tmp_path / "audit.jsonl")  # type: ignore[attr-defined]
    assert [s.name for s in r.audit_sinks(r.route({"patient_id": "icu3-x"}))] == ["audit"]


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(colour="red"), "unknown keys"),
    (lambda c: c["route"][0].update(sinks=["pager"]), "unknown sinks"),
    (lambda c: c["sinks"]["icu3"].update(url="ftp://x"), "http"),
    (lambda c: c["sinks"]["icu3"].update(retry=3), "unknown keys"),
    (lambda c: c["sinks"]["icu3"].update(retries=-1), ">= 0"),
    (lambda c: c["sinks"]["console"].update(type="sms"), "type must be"),
    (lambda c: c["route"][0].pop("ward"), "ward"),
    (lambda c: c.update(escalate_after_s=0), "escalate_after_s"),
])
def test_routing_refuses_bad_config(tmp_path: Path, change: Any, message: str) -> None:
    config = _config(tmp_path)
    change(config)
    with pytest.raises(RoutingError, match=message):
        routing_from_mapping(config, tmp_path)


def test_example_config_loads_and_bad_file_is_a_one_line_error(tmp_path: Path,
                                                                capsys: Any) -> None:
    root = Path(__file__).resolve().parents[1]
    r = load_routing(root / "deploy" / "notify.example.toml")
    assert r.route({"patient_id": "icu3-bed07"}).escalation == ("icu3-senior", "audit")
    assert r.escalate_after_s == {"critical": 600, "high": 1800}
    bad = tmp_path / "bad.toml"
    bad.write_text("[sinks.x]\ntype = 'pigeon'\n")
    assert main(["notify", "--config", str(bad)]) == 2
    assert "type must be one of" in capsys.readouterr().err


# --- sinks ---------------------------------------------------------------------------------

def _recorder(sleeps: list[float]) -> Any:
    async def sleep(s: float) -> None:
        sleeps.append(s)

    return sleep


def test_webhook_posts_json_with_idempotency_key(receiver: Receiver) -> None:
    doc = alert_doc("icu3-bed01")
    result = WebhookSink(receiver.url("/hook")).deliver(doc, doc["alert_id"])
    assert result == Delivery(True, 1, "HTTP 200")
    [got] = receiver.delivered("/hook")
    assert got.key == doc["alert_id"] and got.doc == doc


def test_webhook_retries_5xx_with_exponential_backoff(receiver: Receiver) -> None:
    doc = alert_doc("icu3-bed02")
    receiver.fail_first[doc["alert_id"]] = 2
    sleeps: list[float] = []
    result = WebhookSink(receiver.url("/hook"), retries=3, backoff_s=0.2,
                         sleep=_recorder(sleeps)).deliver(doc, doc["alert_id"])
    assert result.ok and result.attempts == 3
    assert sleeps == [0.2, 0.4]
    assert [r.status for r in receiver.requests] == [500, 500, 200]
    assert {r.key for r in receiver.requests} == {doc["alert_id"]}  # same key on every retry


def test_webhook_gives_up_after_bounded_retries() -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    sink = WebhookSink(f"http://127.0.0.1:{port}/", retries=4, backoff_s=1.0, max_backoff_s=3.0,
                       sleep=_recorder(sleeps))
    result = sink.deliver(alert_doc("p1"), "k")
    assert not result.ok and result.attempts == 5
    assert sleeps == [1.0, 2.0, 3.0, 3.0]  # capped
    assert "connect" in result.detail.lower()


def test_webhook_does_not_retry_a_client_error_and_times_out(receiver: Receiver) -> None:
    receiver.hold_at = 1  # the first request gets no answer
    sink = WebhookSink(receiver.url("/slow"), timeout_s=0.3, retries=0)
    result = sink.deliver(alert_doc("p1"), "k")
    assert not result.ok and result.attempts == 1 and "deadline" in result.detail.lower()
    receiver.release.set()
    receiver.reject.add("k2")  # answered 400: the request is wrong, retrying will not help
    sleeps: list[float] = []
    result = WebhookSink(receiver.url("/x"), retries=3, sleep=_recorder(sleeps)).deliver(
        alert_doc("p2"), "k2")
    assert not result.ok and result.attempts == 1 and sleeps == [] and "400" in result.detail


def test_audit_and_console_sinks(tmp_path: Path) -> None:
    doc = alert_doc("icu3-bed03")
    audit = AuditSink(str(tmp_path / "a" / "audit.jsonl"))
    assert audit.deliver(doc, doc["alert_id"]).ok
    audit.record({"event": "ack", "alert_id": doc["alert_id"], "by": "dr x"})
    lines = [json.loads(x) for x in (tmp_path / "a" / "audit.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["alert", "ack"]
    assert lines[0]["alert"] == doc and lines[0]["recorded_at"].endswith("Z")
    out = io.StringIO()
    assert ConsoleSink(out=out).deliver(doc, doc["alert_id"]).ok
    assert doc["alert_id"] in out.getvalue() and "[CRITICAL]" in out.getvalue()
    assert format_alert(doc, colour=True).startswith("\033[1;31m")
    assert format_alert({**doc, "escalation": {}}).startswith("ESCALATION")


# --- the notifier's decisions ----------------------------------------------------------------

class MemoryLedger:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes: list[tuple[int, str, dict[str, Any]]] = []

    def get(self, alert_id: str) -> dict[str, Any] | None:
        raw = self.data.get(alert_id)
        return None if raw is None else json.loads(raw)

    async def put(self, partition: int, alert_id: str, record: dict[str, Any]) -> None:
        self.data[alert_id] = codec.encode(record)
        self.writes.append((partition, alert_id, json.loads(codec.encode(record))))

    def pending(self) -> Any:
        return [(k, json.loads(v)) for k, v in self.data.items() if b'"open":true' in v]


class RecordingSink:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.got: list[tuple[str, dict[str, Any]]] = []

    def deliver(self, doc: dict[str, Any], key: str) -> Delivery:
        self.got.append((key, doc))
        return Delivery(not self.fail, 3 if self.fail else 1, "HTTP 503" if self.fail else "")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _notifier(tmp_path: Path, fail: bool = False) -> tuple[Notifier, dict[str, Any]]:
    sinks = {"team": RecordingSink("team", fail), "page": RecordingSink("page"),
             "audit": AuditSink(str(tmp_path / "audit.jsonl"))}
    routing = Routing(sinks, Route("", (), ("team",), ("page",)),  # type: ignore[arg-type]
                      [Route("icu3", ("icu3-",), ("team", "audit"), ("page",))])
    dead: list[tuple[Any, ...]] = []
    ledger = MemoryLedger()
    clock = Clock()

    n = Notifier(routing, NAMES, ledger, NotifyMetrics(), lambda *a: dead.append(a),
                 escalate_after={"critical": 600}, clock=clock)
    return n, {"sinks": sinks, "dead": dead, "ledger": ledger, "clock": clock}


def run(n: Notifier, *steps: Any) -> None:
    """Each step (a message, or a callable returning an awaitable) in one event loop, waiting
    for the deliveries it started."""
    async def scenario() -> None:
        for step in steps:
            if isinstance(step, Incoming):
                await n.on_message(step)
            else:
                await step()
            await n.idle()

    asyncio.run(scenario())


def _msg(topic: str, doc: Any, key: str | None, partition: int = 1) -> tuple[Incoming, list[int]]:
    acked: list[int] = []
    value = doc if isinstance(doc, bytes) else codec.encode(doc)
    return Incoming(topic, partition, 7, key.encode() if key else None, value,
                    lambda: acked.append(1)), acked


def _sample(n: Notifier, name: str, **labels: str) -> float:
    return n.metrics.registry.get_sample_value(name, labels) or 0.0


def test_redelivered_alert_is_notified_once_and_recorded_before_the_ack(tmp_path: Path) -> None:
    n, w = _notifier(tmp_path)
    doc = alert_doc("icu3-bed01", severity="critical")
    acks: list[int] = []
    for _ in range(3):
        msg, acked = _msg(NAMES.alerts, doc, "icu3-bed01")
        run(n, msg)
        acks += acked
    assert acks == [1, 1, 1]
    assert [k for k, _ in w["sinks"]["team"].got] == [doc["alert_id"]]
    assert _sample(n, "clsmon_notifications_total", sink="team", outcome="delivered") == 1
    assert _sample(n, "clsmon_notifications_total", sink="team", outcome="duplicate") == 2
    # the first write (before the message was acknowledged) already named every sink
    first = w["ledger"].writes[0][2]
    assert first["sinks"] == {"team": "pending", "audit": "pending"} and first["open"]
    record = w["ledger"].get(doc["alert_id"])
    assert record["done"] and record["sinks"] == {"team": "delivered", "audit": "delivered"}
    assert "escalate_at" in record  # critical: escalated unless acknowledged


def test_a_restart_resumes_only_the_sinks_still_pending(tmp_path: Path) -> None:
    n, w = _notifier(tmp_path)
    doc = alert_doc("icu3-bed01")
    record = {"patient_id": "icu3-bed01", "severity": "critical", "partition": 1,
              "received_at": w["clock"].now, "alert": doc, "open": True,
              "sinks": {"team": "delivered", "audit": "pending"}}
    run(n, lambda: w["ledger"].put(1, doc["alert_id"], record), n.dispatch)
    assert w["sinks"]["team"].got == []  # recorded before the crash: not sent again
    assert w["ledger"].get(doc["alert_id"])["sinks"]["audit"] == "delivered"
    run(n, _msg(NAMES.alerts, doc, "icu3-bed01")[0])  # the redelivered message: a duplicate
    assert w["sinks"]["team"].got == []


def test_critical_unacknowledged_is_escalated_once_after_the_deadline(tmp_path: Path) -> None:
    n, w = _notifier(tmp_path)
    doc = alert_doc("icu3-bed01")
    run(n, _msg(NAMES.alerts, doc, "icu3-bed01")[0])
    w["clock"].now += 599
    run(n, n.dispatch, lambda: n.dispatch(owns=lambda p: p != 1))
    assert w["sinks"]["page"].got == []
    w["clock"].now += 1
    run(n, lambda: n.dispatch(owns=lambda p: p != 1))
    assert w["sinks"]["page"].got == []  # not this notifier's partition
    run(n, n.dispatch, n.dispatch)
    [(key, esc)] = w["sinks"]["page"].got
    assert key == doc["alert_id"] + "-escalation"
    assert esc["escalation"]["unacknowledged_s"] == 600 and esc["summary"] == doc["summary"]
    assert esc["escalation"]["reason"] == "unacknowledged"
    record = w["ledger"].get(doc["alert_id"])
    assert record["escalated"] and not record["open"] and "escalate_at" not in record
    # an ack after the escalation is recorded as such
    ack = {"alert_id": doc["alert_id"], "by": "dr a", "at": "2026-11-25T05:00:00Z"}
    run(n, _msg(NAMES.alert_acks, ack, "icu3-bed01")[0])
    assert _sample(n, "clsmon_acks_total", outcome="after_escalation") == 1


def test_high_alerts_escalate_when_configured(tmp_path: Path) -> None:
    n, w = _notifier(tmp_path)
    n.escalate_after = {"critical": 600, "high": 1800}
    doc = alert_doc("icu3-bed01", severity="high")
    run(n, _msg(NAMES.alerts, doc, "icu3-bed01")[0])
    w["clock"].now += 1800
    run(n, n.dispatch)
    assert [k for k, _ in w["sinks"]["page"].got] == [doc["alert_id"] + "-escalation"]


def test_an_ack_stops_escalation_even_when_it_comes_first(tmp_path: Path) -> None:
    n, w = _notifier(tmp_path)
    a, b = alert_doc("icu3-bed01"), alert_doc("icu3-bed02")
    ack_b = {"alert_id": b["alert_id"], "by": "dr b"}
    ack_a = {"alert_id": a["alert_id"], "by": "dr a", "at": "t", "note": "fluids started",
             "user": "alice"}
    second = {**ack_a, "by": "dr c", "note": "also seen"}
    run(n, _msg(NAMES.alert_acks, ack_b, "icu3-bed02")[0],  # before its alert
        _msg(NAMES.alerts, a, "icu3-bed01")[0], _msg(NAMES.alerts, b, "icu3-bed02")[0],
        _msg(NAMES.alert_acks, ack_a, "icu3-bed01")[0],
        _msg(NAMES.alert_acks, second, "icu3-bed01")[0])
    w["clock"].now += 10_000
    run(n, n.dispatch)
    assert w["sinks"]["page"].got == []
    assert _sample(n, "clsmon_acks_total", outcome="stopped_escalation") == 1
    assert _sample(n, "clsmon_acks_total", outcome="recorded") == 1
    assert _sample(n, "clsmon_acks_total", outcome="duplicate") == 1
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    acks = [x for x in audit if x["event"] == "ack"]
    # the second clinician's ack is not lost: audited, with who and the note
    assert [(x["by"], x["outcome"]) for x in acks] == [
        ("dr b", "recorded"), ("dr a", "stopped_escalation"), ("dr c", "duplicate")]
    assert acks[1]["user"] == "alice"
    assert w["ledger"].get(a["alert_id"])["ack"]["note"] == "fluids started"


def test_escalate_now_escalates_at_once_and_an_ack_refuses_it(tmp_path: Path) -> None:
    n, w = _notifier(tmp_path)
    a, b = alert_doc("icu3-bed01"), alert_doc("icu3-bed02", severity="high")
    req_a = {"alert_id": a["alert_id"], "by": "Dr Grey", "user": "grey", "action": "escalate"}
    ack_b = {"alert_id": b["alert_id"], "by": "dr b"}
    req_b = {"alert_id": b["alert_id"], "by": "dr b", "action": "escalate"}
    run(n, _msg(NAMES.alerts, a, "icu3-bed01")[0], _msg(NAMES.alerts, b, "icu3-bed02")[0],
        _msg(NAMES.alert_acks, req_a, "icu3-bed01")[0],
        _msg(NAMES.alert_acks, ack_b, "icu3-bed02")[0],
        _msg(NAMES.alert_acks, req_b, "icu3-bed02")[0])
    [(key, esc)] = w["sinks"]["page"].got  # no clock advance: at once
    assert key == a["alert_id"] + "-escalation"
    assert esc["escalation"]["reason"] == "requested"
    assert esc["escalation"]["requested_by"] == "Dr Grey"
    assert not w["ledger"].get(a["alert_id"]).get("ack")  # escalating is not acknowledging
    assert _sample(n, "clsmon_acks_total", outcome="escalate_requested") == 1
    assert _sample(n, "clsmon_acks_total", outcome="escalate_refused") == 1


def test_a_critical_shortly_after_the_high_supersedes_it_one_page(tmp_path: Path) -> None:
    n, w = _notifier(tmp_path)
    n.supersede_window_s = 15
    high = alert_doc("icu3-bed01", severity="high")
    critical = alert_doc("icu3-bed01", severity="critical")
    later_high = alert_doc("icu3-bed02", severity="high")
    run(n, _msg(NAMES.alerts, high, "icu3-bed01")[0], n.dispatch)
    assert w["sinks"]["team"].got == []  # held for the window
    w["clock"].now += 5
    run(n, _msg(NAMES.alerts, critical, "icu3-bed01")[0],
        _msg(NAMES.alerts, later_high, "icu3-bed02")[0])
    w["clock"].now += 20
    run(n, n.dispatch)
    got = [k for k, _ in w["sinks"]["team"].got]
    assert got == [critical["alert_id"], later_high["alert_id"]]  # the high of bed01: never
    record = w["ledger"].get(high["alert_id"])
    assert record["superseded_by"] == critical["alert_id"]
    assert record["sinks"] == {"team": "superseded", "audit": "superseded"}
    assert _sample(n, "clsmon_notifications_total", sink="team", outcome="superseded") == 1
    # the same high arriving again after the critical (a replay) stays superseded
    run(n, _msg(NAMES.alerts, high, "icu3-bed01")[0])
    assert len(w["sinks"]["team"].got) == 2


def test_failed_delivery_is_dead_lettered_audited_counted_and_not_retried(
        tmp_path: Path) -> None:
    n, w = _notifier(tmp_path, fail=True)
    doc = alert_doc("icu3-bed05", severity="info")
    msg, acked = _msg(NAMES.alerts, doc, "icu3-bed05")
    run(n, msg, msg)
    assert acked == [1, 1] and len(w["sinks"]["team"].got) == 1
    assert _sample(n, "clsmon_notifications_total", sink="team", outcome="failed") == 1
    [dead] = w["dead"]
    assert dead[5] == "notification_failed" and json.loads(dead[1]) == doc
    assert dead[3] == 1  # the original message's partition
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(x["event"] == "alert_failed" and x["sink"] == "team" for x in audit)


@pytest.mark.parametrize("topic, value, key, reason", [
    ("alerts", b"\xff\xfe", "p1", "malformed_json"),
    ("alerts", b"[1]", "p1", "not_an_object"),
    ("alerts", {"patient_id": "p1"}, "p1", "invalid_alert"),
    ("alerts", alert_doc("p1", severity="panic"), "p1", "invalid_alert"),
    ("alerts", alert_doc("p1"), "p2", "inconsistent"),
    ("alert-acks", {"alert_id": "x"}, "p1", "invalid_ack"),
    ("alert-acks", {"alert_id": "x", "by": "a", "note": 3}, "p1", "invalid_ack"),
    ("alert-acks", {"alert_id": "x", "by": "a"}, None, "inconsistent"),
    ("alert-acks", {"alert_id": "x", "by": "a", "action": "snooze"}, "p1", "invalid_ack"),
])
def test_bad_input_is_dead_lettered_with_a_reason(tmp_path: Path, topic: str, value: Any,
                                                   key: str | None, reason: str) -> None:
    n, w = _notifier(tmp_path)
    msg, acked = _msg(NAMES.prefix + topic, value, key)
    run(n, msg)
    assert acked == [1]
    [dead] = w["dead"]
    assert dead[5] == reason and dead[2] == NAMES.prefix + topic
    assert _sample(n, "clsmon_notify_dead_letters_total", reason=reason) == 1


def test_an_ack_for_another_patients_alert_is_refused(tmp_path: Path) -> None:
    n, w = _notifier(tmp_path)
    doc = alert_doc("icu3-bed01")
    ack = {"alert_id": doc["alert_id"], "by": "x"}
    run(n, _msg(NAMES.alerts, doc, "icu3-bed01")[0], _msg(NAMES.alert_acks, ack, "icu3-bed09")[0])
    assert w["dead"][0][5] == "inconsistent"
    assert "escalate_at" in w["ledger"].get(doc["alert_id"])


def test_parse_ack_fills_the_time() -> None:
    ack = parse_ack({"alert_id": "a", "by": "b", "extra": 1})
    assert isinstance(ack, dict) and set(ack) == {"alert_id", "by", "at", "action"}
    assert ack["action"] == "ack"
    assert parse_ack({"alert_id": "a", "by": "b", "action": "page"}).reason == "invalid_ack"


def test_cli_parses_the_on_call_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.cli import build_parser

    monkeypatch.setenv("CLSMON_NOTIFY_CONFIG", "x.toml")
    p = build_parser()
    a = p.parse_args(["notify", "--escalate-after", "2"])
    assert a.config == "x.toml" and a.escalate_after == 2.0
    a = p.parse_args(["ack", "abc", "--by", "dr who", "--note", "seen"])
    assert (a.alert_id, a.by, a.note, a.patient) == ("abc", "dr who", "seen", None)
    a = p.parse_args(["alerts", "-f", "--patient", "icu3-bed01"])
    assert a.follow and a.patient == "icu3-bed01"
