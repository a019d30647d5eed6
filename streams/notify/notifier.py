"""The notifier: delivers alerts to clinicians' sinks once, takes acknowledgements, escalates.

Its own Faust app (consumer group ``<prefix>-notifier``), one agent reading ``alerts`` and
``alert-acks`` (both keyed by patient_id, so co-partitioned), and a table ``notified`` (with a
changelog) that holds, per ``alert_id``, what was delivered to which sink, the acknowledgement,
and a pending escalation.

Delivery discipline, per alert message:

1. decode and validate; bad input goes to ``dead-letters`` with a reason (never an exception);
2. if the table says the alert was delivered: count a duplicate, acknowledge, done;
3. for each routed sink not yet done: deliver (in a thread; bounded retries), then write the
   sink's outcome to the table and **wait for the broker to acknowledge the changelog record**
   before the next sink or message;
4. acknowledge the message (its offset is committed later, after that).

So the table is always ahead of the committed offsets: a redelivery, a replay or a restart after
``kill -9`` finds the alert_id and does not notify again. The one window left is between a sink
accepting a notification (HTTP 200) and the changelog record reaching the broker (one produce
round trip, milliseconds): a crash exactly there sends that notification to that sink once more
on restart. The webhook therefore carries ``Idempotency-Key: <alert_id>`` so the receiver can
drop it. Nothing closes that window completely without a transaction spanning the receiver.

A sink that still fails after its retries is marked ``failed`` (not retried on restart: a dead
receiver must not block the partition), counted in ``clsmon_notifications_total{outcome=
"failed"}``, written to the route's audit files, and dead-lettered (reason
``notification_failed``, the original alert as value) so it can be re-published.

Escalation: a ``critical`` alert delivered and not acknowledged within ``escalate_after_s`` is
sent to the route's escalation sinks (``Idempotency-Key: <alert_id>-escalation``), once. The
deadline is stored in the table, so it survives a restart; a timer checks it. An ack (from any
time, even before the alert arrives) is stored in the same record and stops the escalation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
from prometheus_client import CollectorRegistry, Counter, Gauge

from detectors.alerts import PHASES, SEVERITIES
from detectors.observation import Rejection
from streams.kafka import codec, consumer, faust_app
from streams.kafka.topics import TopicNames, bootstrap_of, ensure_topics
from streams.notify.routing import Route, Routing, load_routing
from streams.notify.sinks import Delivery, Sink

log = logging.getLogger(__name__)
TABLE_NAME = "notified"
ESCALATION_SUFFIX = "-escalation"


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    broker: str = "kafka://127.0.0.1:9092"
    topic_prefix: str = "clsmon."
    partitions: int = 3
    config: str | None = None  # TOML routing; None: console only
    #: None: from the config file, else 600 s
    escalate_after_s: float | None = None
    escalation_check_s: float = 0.5
    web_port: int = 6067  # 0 = no HTTP server
    web_host: str = "0.0.0.0"  # noqa: S104
    data_dir: str | None = None
    store: str = "memory://"
    fetch_wait_ms: int = 100
    #: re-read a partition whose fetched messages have not reached the agent for this long
    stall_after_s: float = 5.0
    session_timeout_s: float = 6.0
    producer_max_batch_size: int = 1  # Tansu needs 1 for exact recovery (faust_app)
    commit_interval_s: float = 0.5
    loglevel: str = "WARNING"

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    @property
    def app_id(self) -> str:
        return (self.topic_prefix.rstrip(".-_") or "clsmon") + "-notifier"

    def faust_settings(self, data_dir: str) -> dict[str, Any]:
        """The shared tuned settings (``streams.kafka.faust_app``), with the notifier's commit
        interval."""
        return faust_app.faust_settings(
            partitions=self.partitions, store=self.store, data_dir=data_dir,
            session_timeout_s=self.session_timeout_s,
            producer_max_batch_size=self.producer_max_batch_size,
            extra={"broker_commit_interval": self.commit_interval_s})


class NotifyMetrics:
    """The notifier's ``clsmon_`` series, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.notifications = Counter(
            "clsmon_notifications", "Notifications by sink and outcome (delivered, failed, "
            "duplicate: already delivered, escalated, escalation_failed)",
            ["sink", "outcome"], registry=r)
        self.acks = Counter(
            "clsmon_acks", "Acknowledgements by outcome (recorded, stopped_escalation, "
            "after_escalation, duplicate)", ["outcome"], registry=r)
        self.dead_letters = Counter(
            "clsmon_notify_dead_letters", "Messages of alerts/alert-acks (and failed "
            "notifications) sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.pending_escalations = Gauge(
            "clsmon_pending_escalations", "Critical alerts delivered, unacknowledged, waiting "
            "for their escalation deadline", registry=r)
        self.ready = Gauge("clsmon_ready", "1 when the notifier has started", registry=r)
        self.rereads = consumer.rereads_counter(r)


# --- parsing ----------------------------------------------------------------------------------

def parse_alert(doc: dict[str, Any]) -> dict[str, Any] | Rejection:
    """The fields the notifier relies on; the rest of the alert is passed through as is."""
    for name in ("alert_id", "patient_id"):
        v = doc.get(name)
        if not isinstance(v, str) or not v.strip():
            return Rejection("invalid_alert", f"{name} must be a non-empty string")
    if doc.get("severity") not in SEVERITIES:
        return Rejection("invalid_alert", f"severity must be one of {SEVERITIES}")
    if doc.get("phase") not in PHASES:
        return Rejection("invalid_alert", f"phase must be one of {PHASES}")
    return doc


def parse_ack(doc: dict[str, Any]) -> dict[str, Any] | Rejection:
    """``{alert_id, by, at, note?}``: alert_id and by required, at and note strings if given."""
    for name in ("alert_id", "by"):
        v = doc.get(name)
        if not isinstance(v, str) or not v.strip():
            return Rejection("invalid_ack", f"{name} must be a non-empty string")
    for name in ("at", "note"):
        if name in doc and doc[name] is not None and not isinstance(doc[name], str):
            return Rejection("invalid_ack", f"{name} must be a string")
    ack = {"alert_id": doc["alert_id"], "by": doc["by"], "at": doc.get("at") or codec.now_iso()}
    if doc.get("note"):
        ack["note"] = doc["note"]
    return ack


# --- the table, behind a small interface ---------------------------------------------------

class Ledger(Protocol):
    """Per-alert records; ``put`` returns once the record is durable (changelog acknowledged)."""

    def get(self, alert_id: str) -> dict[str, Any] | None: ...

    async def put(self, partition: int, alert_id: str, record: dict[str, Any]) -> None: ...

    def pending(self) -> Iterable[tuple[str, dict[str, Any]]]:
        """Records that may have an escalation waiting (a superset is fine)."""
        ...


class TableLedger:
    """A Faust table of JSON bytes; each write is awaited until the broker has it."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, alert_id: str) -> dict[str, Any] | None:
        raw = self.table.data.get(alert_id.encode())
        return None if raw is None else _loads(raw)

    async def put(self, partition: int, alert_id: str, record: dict[str, Any]) -> None:
        key, value = alert_id.encode(), codec.encode(record)
        self.table.data[key] = value
        # Straight to the producer (force: not attached to the current event, not through
        # Faust's send buffer), then wait for the broker's acknowledgement.
        sent = await self.table.changelog_topic.send(
            key=key, value=value, partition=partition, key_serializer="raw",
            value_serializer="raw", callback=self.table._on_changelog_sent, force=True)
        await asyncio.wait_for(sent, timeout=60)

    def pending(self) -> Iterable[tuple[str, dict[str, Any]]]:
        # a byte search first: most records (delivered, acknowledged) are never parsed
        for key, raw in list(self.table.data.items()):
            if raw and b'"escalate_at"' in raw:
                yield key.decode() if isinstance(key, bytes) else str(key), _loads(raw)


def _loads(raw: bytes) -> dict[str, Any]:
    import json

    return json.loads(raw)


# --- what the agent does --------------------------------------------------------------------

DeadLetter = Callable[[bytes | None, bytes | None, str, int, int, str, str], None]


@dataclass(slots=True)
class Incoming:
    """One message, Faust-free: enough to process, dead-letter and acknowledge it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    ack: Callable[[], None] = lambda: None


@dataclass
class Notifier:
    routing: Routing
    names: TopicNames
    ledger: Ledger
    metrics: NotifyMetrics
    dead_letter: DeadLetter
    escalate_after_s: float = 600.0
    clock: Callable[[], float] = time.time
    #: runs a blocking delivery; the Faust app uses a thread, unit tests may call it inline
    run_blocking: Callable[..., Awaitable[Delivery]] = field(default=asyncio.to_thread)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def on_message(self, msg: Incoming) -> None:
        """Handle one message of ``alerts`` or ``alert-acks``; never raises; acks it last."""
        try:
            async with self.lock:
                if msg.topic == self.names.alert_acks:
                    await self._on_ack(msg)
                else:
                    await self._on_alert(msg)
        except Exception as exc:  # noqa: BLE001 - an escaping exception stalls the partition
            log.exception("internal error on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
            self._reject(msg, Rejection("internal_error", f"{type(exc).__name__}: {exc}"))
        msg.ack()

    # -- alerts ----------------------------------------------------------------------------
    async def _on_alert(self, msg: Incoming) -> None:
        doc = self._decode(msg, parse_alert)
        if doc is None:
            return
        alert_id = doc["alert_id"]
        route = self.routing.route(doc)
        record = self.ledger.get(alert_id) or {}
        log.debug("alert %s from %s[%s]@%s, ledger %s", alert_id, msg.topic, msg.partition,
                  msg.offset, record or "empty")
        if record.get("done"):
            for sink in route.sinks or ("-",):
                self.metrics.notifications.labels(sink, "duplicate").inc()
            return
        record.setdefault("sinks", {})
        record.update(patient_id=doc["patient_id"], severity=doc["severity"],
                      partition=msg.partition)
        todo = [s for s in self.routing.sinks_of(route.sinks) if s.name not in record["sinks"]]
        for i, target in enumerate(todo):
            result = await self._deliver(target, doc, alert_id, route, "alert",
                                         (msg.partition, msg.offset))
            record["sinks"][target.name] = "delivered" if result.ok else "failed"
            if i < len(todo) - 1:  # the last sink's outcome is written with the rest below
                await self.ledger.put(msg.partition, alert_id, record)
        record["done"] = True
        record["notified_at"] = self.clock()
        if (doc["severity"] == "critical" and not record.get("ack") and route.escalation
                and not record.get("escalated")):
            record["escalate_at"] = record["notified_at"] + self.escalate_after_s
            record["alert"] = doc  # kept until escalated or acknowledged
        await self.ledger.put(msg.partition, alert_id, record)

    async def _deliver(self, sink: Sink, doc: dict[str, Any], key: str, route: Route,
                       kind: str, where: tuple[int, int] = (-1, -1)) -> Delivery:
        try:
            result = await self.run_blocking(sink.deliver, doc, key)
        except Exception as exc:  # noqa: BLE001 - a sink bug is a failed delivery
            result = Delivery(False, 1, f"{type(exc).__name__}: {exc}")
        ok_label, failed_label = ("delivered", "failed") if kind == "alert" else (
            "escalated", "escalation_failed")
        self.metrics.notifications.labels(sink.name, ok_label if result.ok else
                                          failed_label).inc()
        if not result.ok:
            log.warning("%s %s to %s failed after %s attempts: %s", kind, key, sink.name,
                        result.attempts, result.detail)
            self._audit(route, {"event": f"{kind}_failed", "alert_id": doc.get("alert_id"),
                                "patient_id": doc.get("patient_id"), "sink": sink.name,
                                "attempts": result.attempts, "detail": result.detail})
            self.metrics.dead_letters.labels("notification_failed").inc()
            self.dead_letter(doc.get("patient_id", "").encode(), codec.encode(doc),
                             self.names.alerts, where[0], where[1], "notification_failed",
                             f"{kind} to sink {sink.name!r} failed after {result.attempts} "
                             f"attempts: {result.detail}")
        return result

    # -- acks ------------------------------------------------------------------------------
    async def _on_ack(self, msg: Incoming) -> None:
        ack = self._decode(msg, parse_ack)
        if ack is None:
            return
        alert_id = ack["alert_id"]
        record = self.ledger.get(alert_id) or {"sinks": {}, "partition": msg.partition}
        key = codec.key_text(msg.key)
        if record.get("patient_id") and key != record["patient_id"]:
            self._reject(msg, Rejection("inconsistent", f"ack key {key!r} is not the alert's "
                                        f"patient {record['patient_id']!r}"))
            return
        if record.get("ack"):
            self.metrics.acks.labels("duplicate").inc()
            return
        record["ack"] = ack
        if record.get("escalated"):
            outcome = "after_escalation"
        elif record.pop("escalate_at", None) is not None:
            outcome = "stopped_escalation"
        else:
            outcome = "recorded"
        record.pop("alert", None)
        await self.ledger.put(record.get("partition", msg.partition), alert_id, record)
        self.metrics.acks.labels(outcome).inc()
        self._audit(self.routing.route({"patient_id": key or ""}),
                    {"event": "ack", "outcome": outcome, "patient_id": key, **ack})

    # -- escalation --------------------------------------------------------------------------
    async def escalate_due(self, owns: Callable[[int], bool] = lambda p: True) -> int:
        """Send every escalation whose deadline has passed (of owned partitions); returns how
        many alerts were escalated."""
        done = 0
        async with self.lock:
            now = self.clock()
            for alert_id, record in list(self.ledger.pending()):
                at = record.get("escalate_at")
                if at is None or now < at or record.get("escalated") or record.get("ack"):
                    continue
                partition = int(record.get("partition", 0))
                if not owns(partition):
                    continue
                doc = dict(record.get("alert") or {"alert_id": alert_id,
                                                   "patient_id": record.get("patient_id")})
                doc["escalation"] = {"reason": "unacknowledged", "escalated_at": codec.now_iso(),
                                     "unacknowledged_s": round(now - record["notified_at"], 1)}
                route = self.routing.route(doc)
                record.setdefault("escalation_sinks", {})
                for sink in self.routing.sinks_of(route.escalation):
                    if sink.name in record["escalation_sinks"]:
                        continue
                    result = await self._deliver(sink, doc, alert_id + ESCALATION_SUFFIX,
                                                 route, "escalation")
                    record["escalation_sinks"][sink.name] = "delivered" if result.ok \
                        else "failed"
                    await self.ledger.put(partition, alert_id, record)
                record["escalated"] = True
                record.pop("escalate_at", None)
                record.pop("alert", None)
                await self.ledger.put(partition, alert_id, record)
                done += 1
            self._gauge()
        return done

    # -- helpers ----------------------------------------------------------------------------
    def _decode(self, msg: Incoming, parse: Callable[[dict[str, Any]], Any]
                ) -> dict[str, Any] | None:
        doc = codec.decode_object(msg.value)
        if isinstance(doc, Rejection):
            self._reject(msg, doc)
            return None
        parsed = parse(doc)
        if isinstance(parsed, Rejection):
            self._reject(msg, parsed)
            return None
        key = codec.key_text(msg.key)
        pid = parsed.get("patient_id")
        if pid is not None and key != pid:
            self._reject(msg, Rejection("inconsistent", f"message key {key!r} is not the "
                                        f"patient_id {pid!r}"))
            return None
        if key is None:
            self._reject(msg, Rejection("inconsistent", "no key (the patient_id): acks and "
                                        "alerts are routed by patient"))
            return None
        return parsed

    def _reject(self, msg: Incoming, why: Rejection) -> None:
        self.metrics.dead_letters.labels(why.reason).inc()
        self.dead_letter(msg.key, msg.value, msg.topic, msg.partition, msg.offset, why.reason,
                         why.detail)

    def _audit(self, route: Route, entry: dict[str, Any]) -> None:
        for sink in self.routing.audit_sinks(route):
            sink.record(entry)

    def _gauge(self) -> None:
        self.metrics.pending_escalations.set(sum(
            1 for _, r in self.ledger.pending()
            if r.get("escalate_at") is not None and not r.get("escalated")))


# --- the Faust app --------------------------------------------------------------------------

@dataclass
class NotifierApp:
    app: faust.App
    notifier: Notifier
    metrics: NotifyMetrics
    ready: threading.Event


def build(cfg: NotifyConfig, routing: Routing | None = None,
          metrics: NotifyMetrics | None = None) -> NotifierApp:
    routing = routing or load_routing(cfg.config)
    escalate_after = cfg.escalate_after_s or routing.escalate_after_s or 600.0
    metrics = metrics or NotifyMetrics()
    data_dir = cfg.data_dir or tempfile.mkdtemp(prefix="clsmon-notify-")
    os.makedirs(data_dir, exist_ok=True)
    app = faust_app.new_app(cfg.app_id, cfg.broker, cfg.faust_settings(data_dir),
                            cfg.fetch_wait_ms)
    names = cfg.names
    inputs = app.topic(names.alerts, names.alert_acks, **faust_app.RAW)
    dead_topic = app.topic(names.dead_letters, **faust_app.RAW)
    table = faust_app.raw_table(app, TABLE_NAME, cfg.partitions)

    def dead_letter(key: bytes | None, value: bytes | None, topic: str, partition: int,
                    offset: int, reason: str, detail: str) -> None:
        dead_topic.send_soon(key=key, value=codec.dead_letter(
            key=key, value=value, topic=topic, partition=partition, offset=offset,
            reason=reason, detail=detail))

    notifier = Notifier(routing, names, TableLedger(table), metrics, dead_letter,
                        escalate_after_s=escalate_after)
    ready = threading.Event()

    guard = consumer.watch(app, {names.alerts, names.alert_acks}, "notify", cfg.stall_after_s,
                           metrics.rereads)

    @app.agent(inputs, name="notify")
    async def notify(stream: Any) -> None:
        async for event in stream.noack().events():
            m = event.message
            guard.seen(m.tp, m.offset)
            await notifier.on_message(Incoming(m.topic, m.partition, m.offset, event.key,
                                               event.value, event.ack))

    def owns(partition: int) -> bool:
        from faust.types import TP

        return TP(names.alerts, partition) in app.consumer.assignment()

    @app.timer(cfg.escalation_check_s)
    async def escalate() -> None:
        if app.rebalancing or getattr(app, "in_recovery", False):
            return  # the table may be half recovered: an ack may not be in it yet
        try:
            await notifier.escalate_due(owns)
        except Exception:  # noqa: BLE001 - retried at the next check
            log.exception("escalation check failed")

    @app.task
    async def started() -> None:
        ready.set()
        metrics.ready.set(1)

    return NotifierApp(app, notifier, metrics, ready)


def run(cfg: NotifyConfig) -> int:
    """Create the topics, start /metrics and run the notifier until SIGTERM/SIGINT."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # thread stacks on demand, for a stuck notifier
    ensure_topics(bootstrap_of(cfg.broker), cfg.names, cfg.partitions)
    built = build(cfg)
    banner = (f"clsmon notify: broker {cfg.broker}, topics {cfg.topic_prefix}alerts/alert-acks, "
              f"escalation after {built.notifier.escalate_after_s:g} s")
    return faust_app.serve_and_run(built.app, built.metrics, built.ready, banner, cfg.web_port,
                         cfg.web_host, cfg.loglevel)
