"""Co-partitioning is checked, not assumed (issue 14, item 3): a worker refuses input topics with
different partition counts, and a record that a producer with another partitioner put on the
wrong partition is forwarded to the one its key hashes to, so a patient is never split between
two workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer
from stream_support import (
    ROOT,
    WorkerProcess,
    alert_docs,
    fresh_prefix,
    read_topic,
    replay_alert_ids,
)
from test_stream_future_timestamps import leak_course, partition_of

from streams.kafka.admin import create_topics
from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Outgoing


@pytest.mark.broker
def test_a_worker_refuses_input_topics_with_different_partition_counts(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    # vitals auto-created with one partition (a broker's num.partitions=1) before any worker
    create_topics(kafka_bootstrap, [names.vitals], partitions=1)
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker", "--broker", f"kafka://{kafka_bootstrap}",
         "--topic-prefix", names.prefix, "--partitions", "3", "--web-port", "0",
         "--data-dir", str(tmp_path / "faust")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not co-partitioned" in lines[0]
    assert f"{names.vitals} 1" in lines[0] and f"{names.labs} 3" in lines[0]


def crc32_partition(pid: str, partitions: int = 3) -> int:
    """librdkafka's default partitioner (``consistent_random``): CRC32 of the key."""
    import zlib

    return zlib.crc32(pid.encode()) % partitions


@pytest.mark.broker
def test_a_patient_split_by_another_partitioner_is_joined_on_one_worker(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    from confluent_kafka import Producer

    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    pid = "icu3-bed07"
    assert crc32_partition(pid) != partition_of(pid)  # 1 and 2: the case's patient
    course = leak_course(pid)
    messages = [Outgoing(names.for_kind(d["kind"]), pid, d) for d in course]
    expected = replay_alert_ids(
        [Outgoing(names.patients, pid, {"patient_id": pid, "sex": "M", "weight_kg": 70,
                                        "birth_year": 1970}), *messages], names, tmp_path)
    assert len(expected) == 2
    vitals = [m for m in messages if m.topic == names.vitals]
    labs = [m for m in messages if m.topic == names.labs]

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    a = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path / "a")
    b = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path / "b")
    try:
        a.wait_ready()
        b.wait_ready()
        a.wait_for("clsmon_ready", 1)
        # the monitor gateway: librdkafka with its default partitioner (CRC32)
        gateway = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        for m in vitals:
            gateway.produce(names.vitals, key=pid.encode(), value=json.dumps(m.doc).encode())
        assert gateway.flush(30) == 0
        # the lab system: a Java-compatible client (murmur2)
        lab_system = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for m in labs:
            lab_system.send(names.labs, key=pid.encode(), value=json.dumps(m.doc).encode())
        lab_system.close()
        records = read_topic(kafka_bootstrap, names.alerts,
                             lambda rs: {d["alert_id"] for d in alert_docs(rs)} >= expected,
                             timeout=60)
        assert {d["alert_id"] for d in alert_docs(records)} == expected
        # each stray vital joined its home partition: forwarded to the other worker, or
        # merged there at once by the worker that holds both
        misrouted = sum(w.total("clsmon_misrouted_total", topic=names.vitals) for w in (a, b))
        forwarded = sum(w.total("clsmon_forwarded_total", topic=names.vitals) for w in (a, b))
        assert misrouted == len(vitals) and forwarded <= misrouted
        assert sum(w.total("clsmon_dead_letters_total") for w in (a, b)) == 0
    finally:
        for w in (a, b):
            assert w.stop() == 0, w.output()
