"""Where the worker's results go: alerts to the ``alerts`` topic, each patient's current phase
to the compacted ``patient-phase`` topic (a tombstone at discharge), refusals to
``dead-letters``, each counted in the worker's metrics.

Sends are ``send_soon`` (buffered by Faust's producer, flushed before offsets are committed), so
an alert or a dead letter is on its way before the message that caused it is acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from detectors.alerts import Alert
from detectors.observation import Rejection, format_time
from detectors.state import PatientState
from detectors.wording import evidence_line
from streams.kafka import codec
from streams.worker.ingest import kind_label
from streams.worker.metrics import Metrics

log = logging.getLogger(__name__)


def phase_record(st: PatientState, last: Alert | None) -> dict[str, Any]:
    """The ``patient-phase`` value: the patient's current phase, severity, since when (event
    time), episode, ward and bed when known, and the last alert's first evidence in clinical
    words (``detectors.wording``)."""
    doc: dict[str, Any] = {"patient_id": st.patient_id, "phase": st.phase,
                           "severity": st.severity, "episode": st.episode,
                           "updated_at": codec.now_iso()}
    if st.phase_since:
        doc["since"] = format_time(st.phase_since)
    for name in ("ward", "bed"):  # carried by the ADT context (issue 15) when known
        value = getattr(st, name, None)
        if value:
            doc[name] = value
    if last is not None:
        doc["alert_id"] = last.alert_id
        if last.evidence:
            doc["last_evidence"] = evidence_line(last.evidence[0].to_dict())
    return doc


class Outputs:
    """The worker's output topics and their counters."""

    def __init__(self, alerts_topic: Any, dead_topic: Any, metrics: Metrics,
                 phase_topic: Any = None, input_topics: dict[str, Any] | None = None) -> None:
        self.alerts_topic = alerts_topic
        self.dead_topic = dead_topic
        self.phase_topic = phase_topic
        self.metrics = metrics
        #: the input topics by name, to forward a record to the partition its key belongs to
        self.input_topics = input_topics or {}

    def forward(self, event: Any, partition: int) -> None:
        """Re-publish a record, byte for byte with its timestamp and headers, on the partition
        of the same topic its key hashes to, and acknowledge it here (Faust flushes the
        producer before it commits the offset)."""
        msg = event.message
        self.input_topics[msg.topic].send_soon(
            key=event.key, value=event.value, partition=partition, timestamp=msg.timestamp,
            headers=msg.headers or None)
        self.metrics.forwarded.labels(msg.topic).inc()
        event.ack()

    def phase(self, st: PatientState, alerts: Sequence[Alert]) -> None:
        """Publish the patient's current phase (after an alert or an ADT event)."""
        if self.phase_topic is not None:
            self.phase_topic.send_soon(key=st.patient_id.encode(), value=codec.encode(
                phase_record(st, alerts[-1] if alerts else None)))

    def discharged(self, patient_id: str) -> None:
        """The patient left: a tombstone, so compaction forgets them."""
        if self.phase_topic is not None:
            self.phase_topic.send_soon(key=patient_id.encode(), value=None)

    def alerts(self, alerts: Iterable[Alert], msg_ts: float | None) -> None:
        """Publish alerts (keyed by patient); ``msg_ts`` (the deciding message's Kafka
        timestamp, s) feeds the observation-to-alert latency."""
        for alert in alerts:
            doc = alert.to_dict(emitted_at=codec.now_iso())
            self.alerts_topic.send_soon(key=alert.patient_id.encode(), value=codec.encode(doc))
            self.metrics.alerts.labels(alert.phase, alert.severity).inc()
            if msg_ts is not None:
                self.metrics.latency.observe(max(0.0, time.time() - msg_ts))

    def dead_letter(self, event: Any, why: Rejection, kind: str, ack: bool = True) -> None:
        """Dead-letter a Faust event's record with ``why``; acknowledge it unless ``ack`` is
        False (the caller acknowledges it with its batch)."""
        msg = event.message
        record = codec.dead_letter(key=event.key, value=event.value, topic=msg.topic,
                                   partition=msg.partition, offset=msg.offset,
                                   reason=why.reason, detail=why.detail)
        self.dead_topic.send_soon(key=event.key, value=record)
        self.metrics.dead_letters.labels(why.reason).inc()
        self.metrics.observations.labels(kind_label(kind), "dead_letter").inc()
        if ack:
            event.ack()

    def internal_error(self, event: Any, exc: BaseException) -> None:
        """An exception on this event: dead-letter it as ``internal_error``; never raises."""
        try:
            self.dead_letter(event, Rejection("internal_error", f"{type(exc).__name__}: {exc}"),
                             "unknown")
        except Exception:  # noqa: BLE001 - last resort: count it and move on
            log.exception("could not dead-letter after an internal error")
            self.metrics.dead_letters.labels("internal_error").inc()
            event.ack()
