"""A client nobody here wrote: Debian's ``kcat`` (librdkafka) produces the inputs and consumes
the alerts on the test broker. On the embedded Tansu broker kcat fails its ApiVersions exchange
(librdkafka 2.0.2): one more reason the tests run on Apache Kafka."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from debian_tools import require
from kafka_broker import KafkaEndpoint
from stream_support import WorkerProcess, alert_docs, fresh_prefix, read_topic, replay_alert_ids

from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import cohort_messages
from streams.offline.simulator import cohort

pytestmark = pytest.mark.broker


def test_kcat_produces_the_inputs_and_consumes_the_alerts(kafka_broker: KafkaEndpoint,
                                                          tmp_path: Path) -> None:
    if kafka_broker.kind == "embedded":
        pytest.skip("kcat (librdkafka 2.0.2) cannot talk to the embedded Tansu broker")
    kcat = require("kcat", "kcat")
    bootstrap = kafka_broker.bootstrap
    names = TopicNames(fresh_prefix())
    ensure_topics(bootstrap, names, partitions=3)
    messages = list(cohort_messages(cohort(6, seed=11, hours=72), names))
    # one kcat run per topic, in this order: kcat stamps each record with its send time, so the
    # arrival order the worker restores is contexts, then vitals, then labs
    order = [names.patients, names.vitals, names.labs]
    by_topic = {t: [m for m in messages if m.topic == t] for t in order}
    expected = replay_alert_ids([m for t in order for m in by_topic[t]], names, tmp_path)
    assert len(expected) >= 2
    for topic in order:
        lines = "".join(f"{m.patient_id}\t{json.dumps(m.doc)}\n" for m in by_topic[topic])
        done = subprocess.run([kcat, "-P", "-b", bootstrap, "-t", topic, "-K", "\t"],
                              input=lines, text=True, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr

    worker = WorkerProcess(bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        worker.wait_for("clsmon_observations_total", len(messages), timeout=120)
        read_topic(bootstrap, names.alerts,
                   lambda rs: {d["alert_id"] for d in alert_docs(rs)} >= expected, timeout=60)
    finally:
        assert worker.stop() == 0, worker.output()
    consumed = subprocess.run([kcat, "-C", "-b", bootstrap, "-t", names.alerts, "-o",
                               "beginning", "-e", "-q", "-f", "%k\t%s\n"],
                              capture_output=True, text=True, timeout=60)
    assert consumed.returncode == 0, consumed.stderr
    alerts = [(line.split("\t", 1)[0], json.loads(line.split("\t", 1)[1]))
              for line in consumed.stdout.splitlines() if line]
    assert {doc["alert_id"] for _, doc in alerts} == expected
    assert all(key == doc["patient_id"] for key, doc in alerts)
