"""Publish observations and patient context to the input topics (``clsmon simulate --broker``).

Message timestamps carry the arrival order the worker restores (``streams.worker.ordering``):
they are the wall clock at sending, made strictly increasing per patient, so a patient's messages
have one unambiguous order across the ``vitals``, ``labs`` and ``patients`` topics.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from detectors.observation import parse_time_ms
from streams.kafka import codec
from streams.kafka.connection import Connectable, connect
from streams.kafka.stamps import SendOrderStamps
from streams.kafka.topics import LAB_KINDS, TopicNames
from streams.offline.simulator import Patient


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: topic, patient id (the key) and the JSON document."""

    topic: str
    patient_id: str
    doc: dict[str, Any]
    arrival_ms: int = 0  # simulated arrival time (pacing), 0 for context records


def _with_arrival(index: int, patient: Patient) -> Iterator[tuple[tuple[int, int, int],
                                                                    dict[str, Any]]]:
    """A patient's observations (already in arrival order) keyed by (arrival, patient, seq).

    Bedside readings arrive when taken; a lab arrives after its draw, and the simulator only
    gives its place in the sequence, so it inherits the latest bedside time before it.
    """
    clock = 0
    for seq, obs in enumerate(patient.observations):
        if obs.get("kind") not in LAB_KINDS:
            clock = max(clock, parse_time_ms(obs.get("observed_at")) or clock)
        yield (clock, index, seq), obs


def cohort_messages(patients: Sequence[Patient], names: TopicNames) -> Iterator[Outgoing]:
    """Context records first, then every observation of the cohort in simulated arrival order."""
    for p in patients:
        yield Outgoing(names.patients, p.patient_id, p.context())
    merged = heapq.merge(*(_with_arrival(i, p) for i, p in enumerate(patients)))
    for (arrival, _, _), obs in merged:
        yield Outgoing(names.for_kind(obs.get("kind")), str(obs["patient_id"]), obs, arrival)


class Publisher:
    """A Kafka producer that stamps timestamps in send order, later for a patient whose topic
    changed (``next_timestamp``).

    Idempotent with ``acks=all`` (kafka-python's defaults): a leader that fails mid-stream
    loses nothing and duplicates nothing. ``target``: a ``KafkaConnection`` or a plaintext
    ``host:port``."""

    def __init__(self, target: Connectable, clock: Callable[[], float] = time.time,
                 **producer_options: Any) -> None:
        options: dict[str, Any] = {"linger_ms": 5, "batch_size": 64 * 1024}
        self._clock = clock
        options.update(producer_options)
        self._producer = connect(target).producer(**options)
        self._stamps = SendOrderStamps()
        self.sent = 0

    def next_timestamp(self, order_key: str, topic: str | None = None) -> int:
        """Wall clock in ms, in send order (``streams.kafka.stamps.SendOrderStamps``)."""
        return self._stamps.next(order_key, topic, int(self._clock() * 1000))

    def send(self, topic: str, key: str | bytes | None, value: bytes,
             patient_id: str | None = None, timestamp_ms: int | None = None) -> None:
        """Send raw bytes (tests use it for malformed input); ``patient_id`` orders timestamps;
        an explicit ``timestamp_ms`` (arrival time decided earlier) is sent as given."""
        if timestamp_ms is None:
            order_key = patient_id if patient_id is not None else (
                key.decode("utf-8", "replace") if isinstance(key, bytes) else key or "")
            timestamp_ms = self.next_timestamp(order_key, topic)
            ahead_s = timestamp_ms / 1000 - self._clock()
            if ahead_s > 0.001:
                # a patient changing topic more than once per ms: wait rather than stamp a
                # time ahead of the clock, which a consumer must treat as a skewed clock
                # (streams.worker.ordering)
                time.sleep(ahead_s)
        ts = timestamp_ms
        key_bytes = key.encode() if isinstance(key, str) else key
        self._producer.send(topic, key=key_bytes, value=value, timestamp_ms=ts)
        self.sent += 1

    def send_doc(self, message: Outgoing, timestamp_ms: int | None = None) -> None:
        self.send(message.topic, message.patient_id, codec.encode(message.doc),
                  message.patient_id, timestamp_ms)

    def flush(self, timeout: float = 30.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.flush(timeout=30)
        self._producer.close(timeout=10)


def publish(publisher: Publisher, messages: Iterable[Outgoing], speed: float | None = None,
            progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> int:
    """Send ``messages``; with ``speed`` (simulated seconds per real second) pace them by their
    simulated arrival time, else send as fast as the producer takes them. Returns the count."""
    started = time.monotonic()
    first_arrival: int | None = None
    n = 0
    for message in messages:
        if should_stop():
            break
        if speed and message.arrival_ms:
            if first_arrival is None:
                first_arrival = message.arrival_ms
            due = started + (message.arrival_ms - first_arrival) / 1000 / speed
            delay = due - time.monotonic()
            if delay > 0:
                publisher.flush()
                time.sleep(delay)
        publisher.send_doc(message)
        n += 1
        if progress is not None:
            progress(n, message.arrival_ms)
    publisher.flush()
    return n


def simulate_to_broker(target: Connectable, names: TopicNames, partitions: int,
                       patients: Sequence[Patient], speed: float | None, quiet: bool) -> int:
    """``clsmon simulate --broker``: create the topics if needed and publish the cohort paced
    by ``speed`` (simulated seconds per real second; None = as fast as possible), with a
    progress line every 2 s unless ``quiet``. Returns the exit code (0)."""
    from streams.kafka.topics import ensure_topics

    ensure_topics(target, names, partitions)
    total = len(patients) + sum(len(p.observations) for p in patients)
    publisher = Publisher(target)
    try:
        n = publish(publisher, cohort_messages(patients, names), speed=speed,
                    progress=None if quiet else _progress_printer(total))
    finally:
        publisher.close()
    if not quiet:
        print(f"published {n} messages ({len(patients)} patients) to {names.prefix}*",
              flush=True)
    return 0


def _progress_printer(total: int, every_s: float = 2.0) -> Callable[[int, int], None]:
    from detectors.observation import format_time

    last = [0.0]

    def report(done: int, arrival_ms: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or done == total:
            last[0] = now
            sim = format_time(arrival_ms) if arrival_ms else "-"
            print(f"simulate: {done}/{total} messages sent, simulated time {sim}", flush=True)

    return report

