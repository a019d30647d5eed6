"""A producer timestamp ahead of the clock (a gateway with a skewed clock) is merged at its arrival
and counted; it never holds its partition's commit or another patient's lab-panel decision (issue
14, item 2). Apache Kafka 4 refuses timestamps more than an hour ahead
(``log.message.timestamp.after.max.ms``), so the test's gateway is 50 minutes ahead."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from builders import HOUR, MIN, T0, by_time, obs, vitals
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2
from stream_support import WorkerProcess, alert_docs, fresh_prefix, read_topic, wait_committed

from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Outgoing

AHEAD_MS = 50 * MIN


def partition_of(pid: str, partitions: int = 3) -> int:
    """Kafka's default partitioner (murmur2), as the Java client and kafka-python use it."""
    return (murmur2(pid.encode()) & 0x7FFFFFFF) % partitions


def leak_course(pid: str) -> list[dict[str, Any]]:
    """20 h of normal pressure (charted every 15 min) with a baseline panel, 2 h of SBP 80, then
    a hemoconcentrated panel (its Hb agrees) with albumin 0.5 g/dL down: leak (high), escalated
    to critical by the albumin (issue 13's rules)."""
    rows = vitals(0, 20, 120, 85, every_min=15, pid=pid) + vitals(20, 22, 80, 58, every_min=15,
                                                                  pid=pid)
    for t, hct, albumin in ((T0 + 4 * HOUR, 40, 3.8), (T0 + 21 * HOUR, 55, 3.3)):
        rows += [obs("hematocrit", hct, t, "%", pid), obs("hemoglobin", hct / 3, t, "g/dL", pid),
                 obs("albumin", albumin, t, "g/dL", pid)]
    return by_time(rows)


@pytest.mark.broker
def test_a_timestamp_ahead_of_the_clock_is_clamped_and_never_blocks_the_partition(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    from stream_support import replay_alert_ids

    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    skewed = "fut-1"
    # a patient with a leak on the same partition as the skewed gateway's patient
    leak = next(f"lk-{i}" for i in range(100) if partition_of(f"lk-{i}") == partition_of(skewed))
    course = leak_course(leak)
    messages = [Outgoing(names.for_kind(d["kind"]), leak, d) for d in course]
    contexts = [Outgoing(names.patients, leak, {"patient_id": leak, "sex": "M",
                                                 "weight_kg": 70, "birth_year": 1970})]
    expected = replay_alert_ids(contexts + messages, names, tmp_path)
    assert len(expected) == 2  # leak high, then critical

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        now = int(time.time() * 1000)
        ahead = {"patient_id": skewed, "kind": "sbp", "value": 119, "unit": "mmHg",
                 "observed_at": T0}
        producer.send(names.vitals, key=skewed.encode(), value=json.dumps(ahead).encode(),
                      timestamp_ms=now + AHEAD_MS)
        producer.flush()
        for i, m in enumerate(contexts + messages):
            producer.send(m.topic, key=leak.encode(), value=json.dumps(m.doc).encode(),
                          timestamp_ms=now - 5_000 + i)  # the right clocks
        producer.flush()
        records = read_topic(kafka_bootstrap, names.alerts,
                             lambda rs: {d["alert_id"] for d in alert_docs(rs)} >= expected,
                             timeout=30)
        assert {d["alert_id"] for d in alert_docs(records)} == expected
        worker.wait_for("clsmon_observations_total", 1 + len(contexts) + len(messages))
        assert worker.total("clsmon_future_timestamps_total", topic=names.vitals) == 1
        # the skewed message does not hold the commit: everything is committed within seconds
        wait_committed(kafka_bootstrap, f"{names.prefix.rstrip('.')}-worker", names.vitals,
                       1 + sum(1 for m in messages if m.topic == names.vitals), timeout=20)
        assert worker.total("clsmon_ordering_buffer_messages") == 0
    finally:
        producer.close()
        assert worker.stop() == 0, worker.output()
