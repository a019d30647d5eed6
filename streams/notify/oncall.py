"""Commands for the people on call: ``clsmon ack`` and ``clsmon alerts``.

Both read the topics directly (no consumer group: nothing to join, nothing committed), so they
start at once and never move a notifier's offsets.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from streams.kafka import codec
from streams.kafka.connection import Connectable, connect
from streams.kafka.topics import TopicNames
from streams.notify.sinks import format_alert


class OnCallError(ValueError):
    """Something the user can fix (unknown alert id, missing patient)."""


def _consumer(target: Connectable, topics: list[str]) -> Any:
    from kafka import TopicPartition

    connection = connect(target)
    consumer = connection.consumer(enable_auto_commit=False)
    tps = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            consumer.close()
            raise connection.failure(LookupError(f"{topic} does not exist or this user may "
                                                 "not DESCRIBE it"), f"reading {topic}")
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer


@contextlib.contextmanager
def _kafka_errors(target: Connectable, doing: str) -> Iterator[None]:
    """A Kafka error (e.g. a missing ACL) as one ``BrokerError`` line, not a traceback."""
    from kafka.errors import KafkaError

    try:
        yield
    except KafkaError as exc:
        raise connect(target).failure(exc, doing) from exc


def _records(target: Connectable, consumer: Any, follow: bool,
             should_stop: Callable[[], bool], idle_s: float = 5.0) -> Any:
    """Yield records; without ``follow`` stop at the end offsets taken at the start (or once
    nothing came for ``idle_s`` while short of them: a guard, never expected). A Kafka error
    (e.g. no READ ACL) is a one-line ``BrokerError``."""
    topics = ", ".join(sorted({tp.topic for tp in consumer.assignment()}))
    with _kafka_errors(target, f"reading {topics}"):
        ends = {} if follow else {tp: end for tp, end in consumer.end_offsets(
            list(consumer.assignment())).items() if end}
        last = time.monotonic()
        polled = False
        while not should_stop():
            # one fetch at least: a reader without READ rights learns it even on an empty topic
            if polled and not follow and all(consumer.position(tp) >= end
                                             for tp, end in ends.items()):
                return
            polled = True
            got = False
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    got = True
                    yield record
            if got:
                last = time.monotonic()
            elif not follow and time.monotonic() - last >= idle_s:
                return


@dataclass(frozen=True, slots=True)
class AlertStatus:
    """What the topics say about one alert: its patient and its first acknowledgement."""

    patient_id: str | None
    ack: dict[str, Any] | None


def find_alert(target: Connectable, names: TopicNames, alert_id: str, patient: str | None = None,
               timeout_s: float = 10.0) -> AlertStatus:
    """Read ``alerts`` and ``alert-acks`` for ``alert_id`` (of ``patient`` only, if given)."""
    consumer = _consumer(target, [names.alerts, names.alert_acks])
    deadline = time.monotonic() + timeout_s
    pid: str | None = None
    ack: dict[str, Any] | None = None
    try:
        for record in _records(target, consumer, False,
                               lambda: time.monotonic() > deadline):
            if patient and codec.key_text(record.key) != patient:
                continue
            doc = codec.decode_object(record.value)
            if not isinstance(doc, dict) or doc.get("alert_id") != alert_id:
                continue
            if record.topic == names.alerts:
                found = doc.get("patient_id")
                pid = found if isinstance(found, str) else pid
            elif ack is None and (doc.get("action") or "ack") == "ack":
                ack = doc
    finally:
        consumer.close()
    return AlertStatus(pid, ack)


class AlreadyDone(Exception):
    """The acknowledgement was not published: no such alert, or acknowledged already."""


def publish_ack(target: Connectable, names: TopicNames, alert_id: str, by: str,
                note: str | None = None, patient_id: str | None = None) -> dict[str, Any]:
    """Publish ``{alert_id, by, at, note?, action: "ack"}`` keyed by the alert's patient;
    returns the ack. Raises ``AlreadyDone`` for an unknown or acknowledged alert."""
    if not by.strip():
        raise OnCallError("--by must name the person acknowledging")
    status = find_alert(target, names, alert_id, patient_id)
    if status.patient_id is None:
        where = f" for patient {patient_id}" if patient_id else ""
        raise AlreadyDone(f"no alert {alert_id}{where} on {names.alerts}: nothing acknowledged")
    if status.ack is not None:
        raise AlreadyDone(f"alert {alert_id} was already acknowledged by "
                          f"{status.ack.get('by')} at {status.ack.get('at')}")
    ack: dict[str, Any] = {"alert_id": alert_id, "by": by, "at": codec.now_iso(),
                           "action": "ack"}
    if note:
        ack["note"] = note
    producer = connect(target).producer(acks="all")
    try:
        with _kafka_errors(target, f"publishing to {names.alert_acks}"):
            producer.send(names.alert_acks, key=status.patient_id.encode(),
                          value=codec.encode(ack)).get(timeout=10)
    finally:
        producer.close()
    return {**ack, "patient_id": status.patient_id}


def show_alerts(target: Connectable, names: TopicNames, out: TextIO, follow: bool = False,
                patient: str | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> int:
    """Print alerts (once per alert_id) with their acknowledgements; returns how many."""
    colour = out.isatty()
    consumer = _consumer(target, [names.alerts, names.alert_acks])
    alerts: dict[str, dict[str, Any]] = {}
    acks: dict[str, dict[str, Any]] = {}
    try:
        for record in _records(target, consumer, follow, should_stop):
            doc = codec.decode_object(record.value)
            if not isinstance(doc, dict) or not isinstance(doc.get("alert_id"), str):
                continue  # the notifier dead-letters bad input; a reader just skips it
            if patient and codec.key_text(record.key) != patient:
                continue
            aid = doc["alert_id"]
            if record.topic == names.alert_acks:
                if (doc.get("action") or "ack") == "ack" and aid not in acks:
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


def ack_command(target: Connectable, names: TopicNames, alert_id: str, by: str,
                note: str | None, patient: str | None) -> int:
    """``clsmon ack``: publish the acknowledgement and say so; returns the exit code (1: not
    published, the alert is unknown or acknowledged already)."""
    try:
        ack = publish_ack(target, names, alert_id, by, note, patient)
    except AlreadyDone as exc:
        print(f"clsmon ack: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"acknowledged alert {ack['alert_id']} (patient {ack['patient_id']}) as {ack['by']} "
          f"at {ack['at']}", flush=True)
    return 0

