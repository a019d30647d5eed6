"""Commands for the people on call: ``clsmon ack`` and ``clsmon alerts``.

Both read the topics directly (no consumer group: nothing to join, nothing committed), so they
start at once and never move a notifier's offsets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from streams.kafka import codec
from streams.kafka.topics import TopicNames
from streams.notify.sinks import format_alert


class OnCallError(ValueError):
    """Something the user can fix (unknown alert id, missing patient)."""


def _consumer(bootstrap: str, topics: list[str]) -> Any:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic) or set()
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    if tps:
        consumer.seek_to_beginning(*tps)
    return consumer


def _records(consumer: Any, follow: bool, should_stop: Callable[[], bool],
             idle_s: float = 1.0) -> Any:
    """Yield records; without ``follow`` stop once nothing came for ``idle_s`` (end offsets
    are not trusted: Tansu reports wrong ones after batched sends)."""
    last = time.monotonic()
    while not should_stop():
        got = False
        for batch in consumer.poll(timeout_ms=200).values():
            for record in batch:
                got = True
                yield record
        if got:
            last = time.monotonic()
        elif not follow and time.monotonic() - last >= idle_s:
            return


def find_patient(bootstrap: str, names: TopicNames, alert_id: str, timeout_s: float = 10.0
                 ) -> str | None:
    """The patient of ``alert_id`` from the alerts topic (None when not found)."""
    consumer = _consumer(bootstrap, [names.alerts])
    deadline = time.monotonic() + timeout_s
    try:
        for record in _records(consumer, False, lambda: time.monotonic() > deadline):
            doc = codec.decode_object(record.value)
            if isinstance(doc, dict) and doc.get("alert_id") == alert_id:
                pid = doc.get("patient_id")
                return pid if isinstance(pid, str) else None
    finally:
        consumer.close()
    return None


def publish_ack(bootstrap: str, names: TopicNames, alert_id: str, by: str,
                note: str | None = None, patient_id: str | None = None) -> dict[str, Any]:
    """Publish ``{alert_id, by, at, note?}`` keyed by the patient; returns the ack."""
    if not by.strip():
        raise OnCallError("--by must name the person acknowledging")
    pid = patient_id or find_patient(bootstrap, names, alert_id)
    if not pid:
        raise OnCallError(f"alert {alert_id} not found on {names.alerts}; give --patient")
    ack: dict[str, Any] = {"alert_id": alert_id, "by": by, "at": codec.now_iso()}
    if note:
        ack["note"] = note
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(names.alert_acks, key=pid.encode(), value=codec.encode(ack)).get(
            timeout=10)
    finally:
        producer.close()
    return {**ack, "patient_id": pid}


def show_alerts(bootstrap: str, names: TopicNames, out: TextIO, follow: bool = False,
                patient: str | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> int:
    """Print alerts (once per alert_id) with their acknowledgements; returns how many."""
    colour = out.isatty()
    consumer = _consumer(bootstrap, [names.alerts, names.alert_acks])
    alerts: dict[str, dict[str, Any]] = {}
    acks: dict[str, dict[str, Any]] = {}
    try:
        for record in _records(consumer, follow, should_stop):
            doc = codec.decode_object(record.value)
            if not isinstance(doc, dict) or not isinstance(doc.get("alert_id"), str):
                continue  # the notifier dead-letters bad input; a reader just skips it
            if patient and codec.key_text(record.key) != patient:
                continue
            aid = doc["alert_id"]
            if record.topic == names.alert_acks:
                if aid not in acks:
                    acks[aid] = doc
                    if follow:
                        print(_ack_line(doc, codec.key_text(record.key)), file=out,
                              flush=True)
            elif aid not in alerts:
                alerts[aid] = doc
                if follow:
                    print(format_alert(doc, colour), file=out, flush=True)
    finally:
        consumer.close()
    if not follow:
        for aid, doc in alerts.items():
            ack = acks.get(aid)
            state = (f"  acknowledged by {ack.get('by')} at {ack.get('at')}" if ack else
                     ("  NOT ACKNOWLEDGED" if doc.get("severity") == "critical" else ""))
            print(format_alert(doc, colour) + state, file=out)
        print(f"{len(alerts)} alerts, {sum(1 for a in alerts if a in acks)} acknowledged",
              file=out, flush=True)
    return len(alerts)


def _ack_line(ack: dict[str, Any], patient: str | None) -> str:
    note = f" ({ack['note']})" if ack.get("note") else ""
    return (f"ACK  {ack.get('at', '?')}  {patient or '?'}  alert {ack.get('alert_id')} "
            f"acknowledged by {ack.get('by')}{note}")


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def ack_command(bootstrap: str, names: TopicNames, alert_id: str, by: str, note: str | None,
                patient: str | None) -> int:
    """``clsmon ack``: publish the acknowledgement and say so; returns the exit code."""
    ack = publish_ack(bootstrap, names, alert_id, by, note, patient)
    print(f"acknowledged alert {ack['alert_id']} (patient {ack['patient_id']}) as {ack['by']} "
          f"at {ack['at']}", flush=True)
    return 0

