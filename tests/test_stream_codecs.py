"""Compressed record batches from a producer nobody here wrote (librdkafka, via confluent-kafka):
gzip, snappy, lz4 and zstd are all decoded and processed, and no partition stops (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import MIN, T0
from stream_support import WorkerProcess, fresh_prefix

from streams.kafka.topics import TopicNames, ensure_topics

CODECS = ("gzip", "snappy", "lz4", "zstd")


def _vital(pid: str, i: int) -> bytes:
    return json.dumps({"patient_id": pid, "kind": "sbp", "value": 118 + i % 5, "unit": "mmHg",
                       "observed_at": T0 + i * MIN}).encode()


def produce_compressed(bootstrap: str, topic: str, codec: str, pid: str, n: int,
                       partition: int) -> None:
    """``n`` vitals of ``pid`` in as few batches as librdkafka makes with ``codec``."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                         "linger.ms": 200, "batch.num.messages": 10_000,
                         "enable.idempotence": False, "acks": "all"})
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for i in range(n):
        producer.produce(topic, key=pid.encode(), value=_vital(pid, i), partition=partition,
                         on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert not errors, errors


@pytest.mark.broker
def test_every_codec_librdkafka_sends_is_processed_on_every_partition(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    per_codec = 40
    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        # one codec per patient, two codecs sharing partition 0: a batch that failed to decode
        # would stop the partition behind it
        for n, codec in enumerate(CODECS):
            produce_compressed(kafka_bootstrap, names.vitals, codec, f"cmp-{codec}", per_codec,
                               partition=n % 3)
        total = per_codec * len(CODECS)
        worker.wait_for("clsmon_observations_total", total, timeout=60, outcome="accepted")
        assert worker.proc.poll() is None, worker.output()
        assert worker.total("clsmon_dead_letters_total") == 0
        assert worker.total("clsmon_observations_total") == total
        assert worker.total("clsmon_patients") == len(CODECS)
    finally:
        assert worker.stop() == 0, worker.output()
