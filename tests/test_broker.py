"""Integration tests against the session broker, and the embedded broker's error paths."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from streams.kafka.admin import BrokerError, create_topics
from streams.kafka.tansu import EmbeddedBroker, TansuBinaryNotFound


def _fresh_topic(prefix: str = "clsmon.test") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.mark.broker
def test_keyed_messages_round_trip_through_a_consumer_group(kafka_bootstrap: str) -> None:
    topic = _fresh_topic()
    create_topics(kafka_bootstrap, [topic], partitions=3)
    sent = {f"bed{i % 7:02d}|{i}": f'{{"seq": {i}}}' for i in range(200)}

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    for key, value in sent.items():
        producer.send(topic, key=key.split("|")[0].encode(), value=value.encode())
    producer.flush(timeout=10)
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"clsmon-test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # Tansu completes a join after about half the session timeout (45 s default -> 23 s);
        # 6 s is the smallest Kafka's group.min.session.timeout.ms allows.
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    received: dict[str, str] = {}
    partition_of_key: dict[bytes, set[int]] = {}
    deadline = time.monotonic() + 15
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    assert record.key is not None
                    seq = record.value.decode().split(": ")[1].rstrip("}")
                    received[f"{record.key.decode()}|{seq}"] = record.value.decode()
                    partition_of_key.setdefault(record.key, set()).add(tp.partition)
        consumer.commit()
    finally:
        consumer.close()

    assert received == sent
    # one key, one partition: per-patient order depends on it
    assert all(len(parts) == 1 for parts in partition_of_key.values())


@pytest.mark.broker
def test_create_topics_is_idempotent(kafka_bootstrap: str) -> None:
    first, second = _fresh_topic(), _fresh_topic()

    assert create_topics(kafka_bootstrap, [first], partitions=3) == [first]
    assert create_topics(kafka_bootstrap, [first, second], partitions=3) == [second]
    assert create_topics(kafka_bootstrap, [first, second], partitions=3) == []

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([first, second])}
    finally:
        admin.close()
    assert {name: len(t["partitions"]) for name, t in described.items()} == {
        first: 3,
        second: 3,
    }


def test_missing_binary_is_reported() -> None:
    with pytest.raises(TansuBinaryNotFound, match="/nonexistent/tansu"):
        EmbeddedBroker(binary="/nonexistent/tansu").start()


def test_broker_dying_at_start_reports_its_output() -> None:
    class BadFlag(EmbeddedBroker):
        def command(self) -> list[str]:
            return [*super().command(), "--no-such-flag"]

    with pytest.raises(BrokerError, match="no-such-flag"):
        BadFlag(start_timeout=10).start()


def test_embedded_broker_lifecycle_and_busy_port() -> None:
    with EmbeddedBroker() as broker:
        assert broker.is_running()
        assert broker.url == f"kafka://127.0.0.1:{broker.port}"
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(broker.port).start()
    assert not broker.is_running()
    broker.stop()  # idempotent


def test_the_embedded_broker_dies_with_a_killed_parent() -> None:
    """A test run or a demo killed with SIGKILL must not leave a broker running."""
    import os
    import signal
    import subprocess
    import sys

    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from streams.kafka.tansu import EmbeddedBroker\n"
         "b = EmbeddedBroker().start()\n"
         "print(b._proc.pid, flush=True)\n"
         "time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line.strip().isdigit(), f"the child did not start a broker: {line!r}"
        broker_pid = int(line)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(broker_pid, 0)
            except ProcessLookupError:
                return  # gone
            if _is_zombie(broker_pid):
                return  # exited, waiting to be reaped by init
            time.sleep(0.1)
        os.kill(broker_pid, signal.SIGKILL)
        raise AssertionError("the broker outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize(("listening", "commands"), [
    (False, ("worker", "notify", "alerts", "ack", "simulate")), (True, ("worker", "alerts"))],
    ids=["refused", "silent"])
def test_an_unreachable_broker_is_one_line_and_exit_code_2_within_10_s_for_every_command(
        listening: bool, commands: tuple[str, ...], tmp_path: Path) -> None:
    """Nothing on the port (connection refused), or a port that accepts and never answers:
    each Kafka command says so in one line, exit code 2, within 10 s (not a 30-line traceback
    after 30 s of silence). One command at a time: each is timed on its own."""
    import socket
    import subprocess
    import sys

    from stream_support import ROOT, child_env

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    if listening:
        silent.listen(16)
    broker = f"127.0.0.1:{silent.getsockname()[1]}"
    arguments = {
        "worker": ["worker", "--web-port", "0", "--data-dir", str(tmp_path / "w")],
        "notify": ["notify", "--web-port", "0", "--data-dir", str(tmp_path / "n")],
        "alerts": ["alerts"], "ack": ["ack", "0123456789abcdef", "--by", "Dr Grey"],
        "simulate": ["simulate", "--patients", "2", "--hours", "6"],
    }
    try:
        for name in commands:
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "streams.cli", *arguments[name],
                                   "--broker", broker], cwd=ROOT, env=child_env(),
                                  capture_output=True, text=True, timeout=60)
            took = time.monotonic() - started
            err = done.stderr
            assert done.returncode == 2, (name, err)
            assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
            assert f"clsmon {name}: error: cannot connect to Kafka at {broker}" in err, err
            assert ("no Kafka answer" if listening else "connection refused") in err, err
            assert took < 10, (name, took)
    finally:
        silent.close()


def test_a_cluster_id_never_begins_with_a_dash() -> None:
    """``kafka-storage format --cluster-id -x...`` reads the id as an option and fails: one
    random id in 64 began with "-" and failed a broker's start."""
    from streams.kafka.apache import new_cluster_id

    ids = [new_cluster_id() for _ in range(2_000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids) and all(len(i) == 22 for i in ids)


def test_a_metrics_port_in_use_is_one_line_and_exit_code_2_before_kafka_is_touched() -> None:
    """A second worker on the default metrics port, or a worker beside the demo: one line that
    names the port and the flag, exit code 2 (it was a 28-line traceback from the HTTP server,
    after connecting to Kafka)."""
    import socket
    import subprocess
    import sys

    from stream_support import ROOT, child_env

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        for command in (["worker"], ["notify"], ["hl7", "listen", "--port", "0"]):
            done = subprocess.run([sys.executable, "-m", "streams.cli", *command,
                                   "--broker", "127.0.0.1:1", "--web-port", str(port)],
                                  cwd=ROOT, env=child_env(), capture_output=True, text=True,
                                  timeout=60)
            err = done.stderr
            assert done.returncode == 2, (command, err)
            assert err.count("\n") == 1 and "Traceback" not in err, (command, err)
            assert f"port {port} on 127.0.0.1 (/metrics) is in use" in err, err
            assert "--web-port" in err, err
    finally:
        taken.close()
