"""The notifier's decisions: deliver each alert once to its sinks, take acknowledgements and
escalation requests, escalate, supersede. Faust-free (``streams.notify.app`` runs it), so it is
tested with plain objects.

Delivery discipline (an outbox in the ``notified`` table, ``streams.notify.ledger``):

1. an alert message is decoded and validated (bad input goes to ``dead-letters`` with a reason);
2. a redelivered alert (its record exists) is counted as a duplicate and nothing else happens;
3. a new alert's record is written with every routed sink ``pending``, and the message is
   acknowledged once the broker has that record: the stream moves on at once;
4. deliveries run as tasks, each sink on its own (``streams.notify.delivery``); each outcome is
   written to the record as it comes. ``dispatch`` (after each message and on a timer) starts
   what is due and not running: new alerts, held ones whose window passed, escalations, and
   after a restart whatever a crash left ``pending``.

A crash between a sink accepting a notification and its outcome reaching the broker (one
produce round trip) sends that notification to that sink once more after the restart; the
webhook's ``Idempotency-Key`` lets the receiver drop it.

- **Failures are loud.** A sink that still fails after its retries is marked ``failed``
  (not retried on restart), counted (``clsmon_notifications_total{outcome="failed"}``), written
  to the route's audit files, published on ``notifications`` (the board shows it) and
  dead-lettered (``notification_failed``, the alert as value). When every sink that reaches a
  person failed, the alert is escalated at once (reason ``delivery_failed``).
- **Escalation per severity** (``escalate_after``: severity -> seconds; critical 600 s by
  default): delivered and not acknowledged by then, the alert goes to the route's escalation
  sinks, once (``Idempotency-Key: <alert_id>-escalation``). An ``escalate`` request on
  ``alert-acks`` (the board's "Escalate now") escalates at once. The deadline lives in the
  record, so it survives a restart; an acknowledgement (even one that arrives before its alert)
  stops it. The timer only starts deliveries: it never waits for one.
- **One page per clinical event.** A ``warning`` or ``high`` alert is held ``supersede_window_s``
  before delivery; a more severe alert of the same patient, episode and phase arriving in that
  window supersedes it (outcome ``superseded``, audited, never delivered). Alert ids are
  deterministic (``detectors.alerts.alert_id``), so the other severities' ids are computed,
  not searched for.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from detectors.alerts import PHASES, SEVERITIES, SEVERITY_RANK, alert_id
from detectors.observation import Rejection
from streams.kafka import codec
from streams.kafka.topics import TopicNames
from streams.notify.delivery import Deliverer
from streams.notify.ledger import Ledger
from streams.notify.metrics import NotifyMetrics
from streams.notify.routing import DEFAULT_ESCALATE_AFTER, Route, Routing
from streams.notify.sinks import Delivery, Sink

log = logging.getLogger(__name__)
ESCALATION_SUFFIX = "-escalation"
ACK_SUFFIX = "-ack"  # the key of an acknowledgement's report to a sink (hl7-acm)
ACK_ACTIONS = ("ack", "escalate")
#: severities a more severe alert of the same event may supersede
SUPERSEDABLE = ("warning", "high")


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
    """``{alert_id, by, at?, note?, user?, action?}``: alert_id and by required; ``action`` is
    ``ack`` (default) or ``escalate``; ``user`` is the board's signed-in login."""
    for name in ("alert_id", "by"):
        v = doc.get(name)
        if not isinstance(v, str) or not v.strip():
            return Rejection("invalid_ack", f"{name} must be a non-empty string")
    for name in ("at", "note", "user", "action"):
        if name in doc and doc[name] is not None and not isinstance(doc[name], str):
            return Rejection("invalid_ack", f"{name} must be a string")
    action = doc.get("action") or "ack"
    if action not in ACK_ACTIONS:
        return Rejection("invalid_ack", f"action must be one of {ACK_ACTIONS}")
    ack = {"alert_id": doc["alert_id"], "by": doc["by"], "at": doc.get("at") or codec.now_iso(),
           "action": action}
    for name in ("note", "user"):
        if doc.get(name):
            ack[name] = doc[name]
    return ack


# --- what the agent does --------------------------------------------------------------------

DeadLetter = Callable[[bytes | None, bytes | None, str, int, int, str, str], None]
Publish = Callable[[bytes, bytes], object]


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
    #: severity -> seconds before an unacknowledged alert is escalated
    escalate_after: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_ESCALATE_AFTER))
    supersede_window_s: float = 0.0
    clock: Callable[[], float] = time.time
    #: ``(key, value)`` of a delivery outcome for the ``notifications`` topic
    publish: Publish = lambda key, value: None
    deliverer: Deliverer = field(default_factory=Deliverer)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _running: set[tuple[str, str, str]] = field(default_factory=set)
    #: ``(topic, partition, offset) -> UndecodableBatch | None`` (``streams.kafka.records``)
    undecodable: Callable[[str, int, int], Any] | None = None

    async def on_message(self, msg: Incoming) -> None:
        """Handle one message of ``alerts`` or ``alert-acks``; never raises; acks it once its
        record is durable, then starts what became due."""
        touched: str | None = None
        try:
            batch = None if msg.value is not None or self.undecodable is None else \
                self.undecodable(msg.topic, msg.partition, msg.offset)
            if batch is not None:  # a record batch the consumer could not decode
                self._reject(msg, Rejection("undecodable_batch", batch.reason()))
                msg.ack()
                return
            async with self.lock:
                if msg.topic == self.names.alert_acks:
                    touched = await self._on_ack(msg)
                else:
                    touched = await self._on_alert(msg)
        except Exception as exc:  # noqa: BLE001 - an escaping exception stalls the partition
            log.exception("internal error on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
            self._reject(msg, Rejection("internal_error", f"{type(exc).__name__}: {exc}"))
        msg.ack()
        if touched is not None:
            record = self.ledger.get(touched)
            if record is not None:
                await self._dispatch_record(touched, record, self.clock())

    # -- alerts ----------------------------------------------------------------------------
    async def _on_alert(self, msg: Incoming) -> str | None:
        doc = self._decode(msg, parse_alert)
        if doc is None:
            return None
        aid = doc["alert_id"]
        route = self.routing.route(doc)
        record = self.ledger.get(aid) or {}
        if "received_at" in record:
            for sink in route.sinks or ("-",):
                self.metrics.notifications.labels(sink, "duplicate").inc()
            return None
        now = self.clock()
        record.update(patient_id=doc["patient_id"], severity=doc["severity"], phase=doc["phase"],
                      partition=msg.partition, received_at=now, alert=doc, open=True,
                      sinks=dict.fromkeys(route.sinks, "pending"))
        higher = self._more_severe_seen(doc)
        if higher is not None:
            self._supersede(record, aid, higher, route)
        else:
            window = self.supersede_window_s if doc["severity"] in SUPERSEDABLE else 0.0
            record["deliver_at"] = now + window
            after = self.escalate_after.get(doc["severity"])
            if after and route.escalation and not record.get("ack"):
                record["escalate_at"] = now + after
            request = record.pop("escalate_request", None)
            if request and not record.get("ack"):
                record.update(escalate_at=now, escalation_reason="requested",
                              escalation_requested_by=request.get("by"))
            for lower in self._lower_held(doc, now):
                await self._update(lower, functools.partial(self._supersede_by, lower, aid))
        _settle(record)
        await self.ledger.put(msg.partition, aid, record)
        return aid

    def _event_ids(self, doc: dict[str, Any], severities: Iterable[str]) -> list[str]:
        episode = doc.get("episode")
        if not isinstance(episode, int) or isinstance(episode, bool):
            return []
        return [alert_id(doc["patient_id"], episode, doc["phase"], s) for s in severities]

    def _more_severe_seen(self, doc: dict[str, Any]) -> str | None:
        if doc["severity"] not in SUPERSEDABLE:
            return None
        rank = SEVERITY_RANK[doc["severity"]]
        for other in self._event_ids(doc, [s for s in SEVERITIES if SEVERITY_RANK[s] > rank]):
            if "received_at" in (self.ledger.get(other) or {}):
                return other
        return None

    def _lower_held(self, doc: dict[str, Any], now: float) -> list[str]:
        rank = SEVERITY_RANK[doc["severity"]]
        held = []
        for other in self._event_ids(doc, [s for s in SUPERSEDABLE if SEVERITY_RANK[s] < rank]):
            r = self.ledger.get(other) or {}
            if now < r.get("deliver_at", 0.0) and "pending" in r.get("sinks", {}).values():
                held.append(other)
        return held

    def _supersede_by(self, aid: str, by: str, record: dict[str, Any]) -> None:
        self._supersede(record, aid, by, self.routing.route(record.get("alert") or record))

    def _supersede(self, record: dict[str, Any], aid: str, by: str, route: Route) -> None:
        """Mark a held alert's pending sinks ``superseded`` by the more severe ``by``."""
        for name, outcome in record.get("sinks", {}).items():
            if outcome == "pending":
                record["sinks"][name] = "superseded"
                self.metrics.notifications.labels(name, "superseded").inc()
        record["superseded_by"] = by
        record.pop("escalate_at", None)
        record.pop("alert", None)
        self._audit(route, {"event": "superseded", "alert_id": aid, "superseded_by": by,
                            "patient_id": record.get("patient_id")})
        self._publish_outcome(record, aid, "alert", "-", "superseded", 0, f"by alert {by}", 0.0)

    # -- acks and escalation requests ----------------------------------------------------------
    async def _on_ack(self, msg: Incoming) -> str | None:
        ack = self._decode(msg, parse_ack)
        if ack is None:
            return None
        aid = ack["alert_id"]
        record = self.ledger.get(aid) or {"partition": msg.partition}
        key = codec.key_text(msg.key)
        if record.get("patient_id") and key != record["patient_id"]:
            self._reject(msg, Rejection("inconsistent", f"ack key {key!r} is not the alert's "
                                        f"patient {record['patient_id']!r}"))
            return None
        outcome = (self._escalate_request if ack["action"] == "escalate" else self._ack)(
            record, ack)
        self.metrics.acks.labels(outcome).inc()
        self._audit(self.routing.route({"patient_id": key or ""}),
                    {"event": ack["action"], "outcome": outcome, "patient_id": key, **ack})
        if outcome in ("duplicate", "escalate_refused"):
            return None
        if ack["action"] != "escalate" and record.get("alert"):
            # sinks that report acknowledgements too (hl7-acm: the alarm's inactivation state)
            route = self.routing.route(record["alert"])
            wants = [n for n in route.sinks
                     if getattr(self.routing.sinks.get(n), "wants_acks", False)]
            if wants:
                record["ack_sinks"] = dict.fromkeys(wants, "pending")
        _settle(record)
        await self.ledger.put(record.get("partition", msg.partition), aid, record)
        return aid

    @staticmethod
    def _ack(record: dict[str, Any], ack: dict[str, Any]) -> str:
        if record.get("ack"):
            return "duplicate"  # audited with who and when: a second ack is never lost
        record["ack"] = ack
        record.pop("escalate_request", None)
        if record.get("escalated"):
            return "after_escalation"
        if record.pop("escalate_at", None) is not None:
            return "stopped_escalation"
        return "recorded"

    @staticmethod
    def _escalate_request(record: dict[str, Any], req: dict[str, Any]) -> str:
        if (record.get("ack") or record.get("escalated") or record.get("superseded_by")
                or ("received_at" in record and "alert" not in record)):
            return "escalate_refused"  # acknowledged, escalated, superseded, or not escalatable
        if "received_at" not in record:
            record["escalate_request"] = req  # applied when the alert arrives
        else:
            record.update(escalate_at=0.0, escalation_reason="requested",
                          escalation_requested_by=req["by"])
        return "escalate_requested"

    # -- the scheduler -------------------------------------------------------------------------
    async def dispatch(self, owns: Callable[[int], bool] = lambda p: True) -> None:
        """Start every delivery and escalation that is due and not running (of the owned
        partitions). Waits for ledger writes (milliseconds), never for a delivery."""
        now = self.clock()
        for aid, record in list(self.ledger.pending()):
            if owns(int(record.get("partition", 0))):
                await self._dispatch_record(aid, record, now)
        self.metrics.pending_escalations.set(sum(
            1 for _, r in self.ledger.pending()
            if r.get("escalate_at") is not None and not r.get("escalated")))

    async def _dispatch_record(self, aid: str, record: dict[str, Any], now: float) -> None:
        if not record.get("open"):
            return
        doc = record.get("alert")
        if doc is None:
            return
        partition = int(record.get("partition", 0))
        if now >= record.get("deliver_at", 0.0):
            for name, outcome in record.get("sinks", {}).items():
                if outcome == "pending" and name in self.routing.sinks:
                    self._start(aid, "alert", self.routing.sinks[name], doc, aid, partition)
        at = record.get("escalate_at")
        if at is not None and now >= at and not record.get("escalated") and not record.get("ack"):
            async with self.lock:
                record = await self._update(aid, self._mark_escalated)
        for name, outcome in record.get("ack_sinks", {}).items():
            if outcome == "pending" and name in self.routing.sinks:
                self._start(aid, "ack", self.routing.sinks[name],
                            {**doc, "ack": record.get("ack", {})}, aid + ACK_SUFFIX, partition)
        if record.get("escalated"):
            esc = {**doc, "escalation": record.get("escalation", {})}
            for name, outcome in record.get("escalation_sinks", {}).items():
                if outcome == "pending" and name in self.routing.sinks:
                    self._start(aid, "escalation", self.routing.sinks[name], esc,
                                aid + ESCALATION_SUFFIX, partition)

    def _mark_escalated(self, record: dict[str, Any]) -> None:
        if record.get("escalated") or record.get("ack") or record.get("escalate_at") is None:
            return
        doc = record.get("alert") or {}
        route = self.routing.route(doc)
        now = self.clock()
        record["escalated"] = True
        record["escalation"] = {
            "reason": record.pop("escalation_reason", "unacknowledged"),
            "escalated_at": codec.now_iso(),
            "unacknowledged_s": round(now - record.get("received_at", now), 1)}
        if record.get("escalation_requested_by"):
            record["escalation"]["requested_by"] = record.pop("escalation_requested_by")
        record.pop("escalate_at", None)
        record["escalation_sinks"] = dict.fromkeys(route.escalation, "pending")
        if not route.escalation:
            self.metrics.notifications.labels("-", "escalation_failed").inc()
            self._audit(route, {"event": "escalation_failed", "alert_id": doc.get("alert_id"),
                                "patient_id": doc.get("patient_id"), "sink": None,
                                "detail": "the route has no escalation sinks"})
        _settle(record)

    def _start(self, aid: str, kind: str, sink: Sink, doc: dict[str, Any], key: str,
               partition: int) -> None:
        job = (aid, kind, sink.name)
        if job in self._running:
            return
        self._running.add(job)
        task = asyncio.get_running_loop().create_task(
            self._deliver(aid, kind, sink, doc, key, partition), name=f"deliver-{key}-{sink.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, aid: str, kind: str, sink: Sink, doc: dict[str, Any], key: str,
                       partition: int) -> None:
        started = time.monotonic()
        record: dict[str, Any] = {}
        self.metrics.in_flight.labels(sink.name).inc()
        try:
            result = await self.deliverer.run(sink, doc, key)
        finally:
            self.metrics.in_flight.labels(sink.name).dec()
        seconds = time.monotonic() - started
        outcome = "delivered" if result.ok else "failed"
        try:
            route = self.routing.route(doc)
            async with self.lock:
                record = await self._update(aid, lambda r: self._outcome(
                    r, kind, sink.name, outcome, route))
            # counted once durable: a scrape never shows a delivery a restart would repeat
            self.metrics.delivery_seconds.labels(sink.name, kind).observe(seconds)
            ok, bad = _OUTCOME_LABELS[kind]
            self.metrics.notifications.labels(sink.name, ok if result.ok else bad).inc()
            if not result.ok:
                self._failed(doc, kind, sink.name, key, result, route, partition)
            self._publish_outcome(record, aid, kind, sink.name, outcome, result.attempts,
                                  result.detail, seconds)
        except Exception:  # noqa: BLE001 - a task's error must not vanish
            log.exception("recording the %s of %s to %s failed", kind, aid, sink.name)
        finally:
            self._running.discard((aid, kind, sink.name))
        due = record.get("escalate_at")
        if due is not None and due <= self.clock():  # e.g. nobody reached: escalate now
            await self._dispatch_record(aid, record, self.clock())

    def _outcome(self, record: dict[str, Any], kind: str, sink: str, outcome: str,
                 route: Route) -> None:
        table = record.setdefault(_TABLES[kind], {})
        if table.get(sink) == "pending":
            table[sink] = outcome
        if kind == "alert" and self._nobody_reached(record, route):
            record.update(escalate_at=0.0, escalation_reason="delivery_failed")
        _settle(record)

    def _nobody_reached(self, record: dict[str, Any], route: Route) -> bool:
        """Every sink that reaches a person (not an audit file) failed, and the route can
        escalate: escalate now rather than wait for a deadline nobody was told about."""
        if record.get("escalated") or record.get("ack") or not route.escalation:
            return False
        people = [n for n in record.get("sinks", {})
                  if not getattr(self.routing.sinks.get(n), "records_only", False)]
        return bool(people) and all(record["sinks"][n] == "failed" for n in people)

    def _failed(self, doc: dict[str, Any], kind: str, sink: str, key: str, result: Delivery,
                route: Route, partition: int) -> None:
        log.warning("%s %s to %s failed after %s attempts: %s", kind, key, sink,
                    result.attempts, result.detail)
        self._audit(route, {"event": f"{kind}_failed", "alert_id": doc.get("alert_id"),
                            "patient_id": doc.get("patient_id"), "sink": sink,
                            "attempts": result.attempts, "detail": result.detail})
        self.metrics.dead_letters.labels("notification_failed").inc()
        self.dead_letter(str(doc.get("patient_id", "")).encode(), codec.encode(doc),
                         self.names.alerts, partition, -1, "notification_failed",
                         f"{kind} to sink {sink!r} failed after {result.attempts} attempts: "
                         f"{result.detail}")

    async def idle(self) -> None:
        """Wait until no delivery is running (tests, a clean stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- helpers ----------------------------------------------------------------------------
    async def _update(self, aid: str, change: Callable[[dict[str, Any]], None]
                      ) -> dict[str, Any]:
        """Read, change and write one record (no await between the read and the write)."""
        record = self.ledger.get(aid) or {}
        change(record)
        await self.ledger.put(int(record.get("partition", 0)), aid, record)
        return record

    def _publish_outcome(self, record: dict[str, Any], aid: str, kind: str, sink: str,
                         outcome: str, attempts: int, detail: str, seconds: float) -> None:
        pid = str(record.get("patient_id") or "")
        event = {"alert_id": aid, "patient_id": pid, "kind": kind, "sink": sink,
                 "outcome": outcome, "attempts": attempts, "detail": detail,
                 "seconds": round(seconds, 3), "at": codec.now_iso()}
        if kind == "escalation":
            event["escalation"] = record.get("escalation", {})
        try:
            self.publish(pid.encode(), codec.encode(event))
        except Exception:  # noqa: BLE001 - the board's view, not the delivery itself
            log.exception("notification outcome not published")

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


#: what each delivery kind is recorded in, and its outcome labels (delivered, failed)
_TABLES = {"alert": "sinks", "escalation": "escalation_sinks", "ack": "ack_sinks"}
_OUTCOME_LABELS = {"alert": ("delivered", "failed"),
                   "escalation": ("escalated", "escalation_failed"),
                   "ack": ("ack_reported", "ack_report_failed")}


def _settle(record: dict[str, Any]) -> None:
    """Set ``done`` (every routed sink has an outcome) and ``open`` (work left); drop the
    alert once nothing can need it (delivered and acknowledged, escalated, or superseded)."""
    sinks = record.get("sinks", {})
    record["done"] = "received_at" in record and "pending" not in sinks.values()
    waiting = record.get("escalate_at") is not None and not record.get("ack")
    escalating = "pending" in record.get("escalation_sinks", {}).values()
    reporting = "pending" in record.get("ack_sinks", {}).values()
    record["open"] = ((not record["done"] and "received_at" in record) or waiting or escalating
                      or reporting)
    if not record["open"] and "alert" in record:
        finished = record.get("ack") or record.get("escalated") or record.get("superseded_by")
        if finished or record.get("severity") not in ("warning", "high", "critical"):
            record.pop("alert")
