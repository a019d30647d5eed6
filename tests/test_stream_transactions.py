"""A transactional producer (librdkafka, via confluent-kafka): its commit markers take offsets that
are never delivered; the worker processes every record and commits past the markers, and the
stall guard does not re-read a partition that ends in one (issue 14, item 4)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from builders import MIN, T0
from stream_support import WorkerProcess, fresh_prefix

from streams.kafka.topics import TopicNames, ensure_topics


def produce_in_transactions(bootstrap: str, topic: str, pid: str, transactions: int,
                            per_transaction: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic}",
                         "linger.ms": 5})
    producer.init_transactions(30)
    n = 0
    for _ in range(transactions):
        producer.begin_transaction()
        for _ in range(per_transaction):
            value = {"patient_id": pid, "kind": "sbp", "value": 120, "unit": "mmHg",
                     "observed_at": T0 + n * MIN}
            producer.produce(topic, key=pid.encode(), value=json.dumps(value).encode(),
                             partition=0)
            n += 1
        producer.commit_transaction(30)


def _committed_and_end(bootstrap: str, group: str, topic: str) -> tuple[int, int]:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        committed = offsets[tp].offset if tp in offsets else -1
        return committed, consumer.end_offsets([tp])[tp]
    finally:
        admin.close()
        consumer.close()


@pytest.mark.broker
def test_commits_pass_the_markers_of_a_transactional_producer(kafka_bootstrap: str,
                                                              tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    transactions, per_transaction = 6, 5
    total = transactions * per_transaction
    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path, "--stall-after", "1")
    try:
        worker.wait_ready()
        produce_in_transactions(kafka_bootstrap, names.vitals, "tx-bed1", transactions,
                                per_transaction)
        worker.wait_for("clsmon_observations_total", total, timeout=60, outcome="accepted")
        group = f"{names.prefix.rstrip('.')}-worker"
        committed, end = _committed_and_end(kafka_bootstrap, group, names.vitals)
        assert end == total + transactions  # one commit marker per transaction
        deadline = time.monotonic() + 20
        while committed < end and time.monotonic() < deadline:
            time.sleep(0.5)
            committed, end = _committed_and_end(kafka_bootstrap, group, names.vitals)
        assert committed == end, f"committed {committed}, log end {end}"
        time.sleep(4)  # a guard that took the last marker for a lost message re-reads by now
        assert worker.total("clsmon_partition_rereads_total") == 0
        assert worker.total("clsmon_observations_total") == total  # nothing twice
    finally:
        assert worker.stop() == 0, worker.output()
