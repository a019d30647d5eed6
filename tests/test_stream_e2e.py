"""End to end on the real broker: simulated vitals + labs -> worker -> alerts == replay's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from stream_support import WorkerProcess, alert_docs, fresh_prefix, read_topic, replay_alert_ids

from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher, cohort_messages
from streams.offline.simulator import cohort


@pytest.mark.broker
def test_alerts_equal_replay_whatever_the_topic_interleaving(kafka_bootstrap: str,
                                                             tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    messages = list(cohort_messages(cohort(8, seed=7, hours=96), names))
    expected = replay_alert_ids(messages, names, tmp_path)
    contexts = [m for m in messages if m.topic == names.patients]
    labs = [m for m in messages if m.topic == names.labs]
    vitals = [m for m in messages if m.topic == names.vitals]
    # the interleaving matters to the engine: labs first, then vitals, gives other alerts
    assert replay_alert_ids(contexts + labs + vitals, names, tmp_path) != expected
    assert len(expected) >= 5

    # Arrival order is carried by the message timestamps; the topics are then written in the
    # worst order for a consumer: every lab before any vital sign.
    # (arrivals 1 ms apart that ended just now: in the past, so never a skewed clock)
    publisher = Publisher(kafka_bootstrap)
    start = int(time.time() * 1000) - len(messages)
    stamps = {id(m): start + i for i, m in enumerate(messages)}
    for message in contexts + labs + vitals:
        publisher.send_doc(message, stamps[id(message)])
    publisher.close()

    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        worker.wait_for("clsmon_observations_total", len(messages), timeout=90)
        records = read_topic(kafka_bootstrap, names.alerts,
                             lambda rs: {d["alert_id"] for d in alert_docs(rs)} >= expected,
                             timeout=30)
        got = {d["alert_id"] for d in alert_docs(records)}
        assert got == expected
        docs = alert_docs(records)
        assert all(r.key.decode() == d["patient_id"] for r, d in zip(records, docs, strict=True))
        assert all(d["emitted_at"].endswith("Z") and d["evidence"] is not None for d in docs)
        metrics = worker.metrics()
        assert worker.total("clsmon_alerts_total") == len(records)
        assert worker.total("clsmon_observations_total", outcome="accepted") > 0.9 * len(vitals)
        assert worker.total("clsmon_dead_letters_total") == 0
        assert sum(v for (n, _), v in metrics.items() if n == "clsmon_patients") == 8
        assert worker.total("clsmon_observation_to_alert_latency_seconds_count") >= 1
        assert worker.get("/healthz")[0] == 200
        assert worker.get("/readyz") == (200, "ready\n")
    finally:
        assert worker.stop() == 0, worker.output()
