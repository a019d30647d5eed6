"""Broker failure on a 3-node Apache Kafka cluster (KRaft; replication factor 3,
``min.insync.replicas`` 2): the leader of an input partition is killed with SIGKILL while the
worker processes a steady stream, then all three brokers are restarted one after the other
while another stream flows. The same worker and notifier run throughout (no restart).

Checked: nothing lost (every input partition committed to its end; the worker counted each
record sent exactly once as processed or dead-lettered: count in = processed + dead-lettered),
the alert ids equal a replay's, and the notifier delivered each alert once to a real webhook.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from kafka_broker import own_kafka
from notify_support import NotifierProcess, Receiver
from stream_support import WorkerProcess, fresh_prefix, replay_result
from test_reliability import _alert_ids, _group, _input_ends, _wait_all_committed

from streams.kafka.apache import KafkaCluster, leader_of
from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Outgoing, Publisher, cohort_messages
from streams.offline.simulator import cohort

pytestmark = pytest.mark.broker

RATE = 250  # messages per second: a steady stream, well within one worker's capacity


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    with own_kafka(nodes=3) as running:
        yield running


class SteadyStream(threading.Thread):
    """Sends ``messages`` at ``rate`` per second from a thread; ``sent`` counts them."""

    def __init__(self, bootstrap: str, messages: Sequence[Outgoing], rate: float) -> None:
        super().__init__(daemon=True)
        self.messages, self.rate, self.sent = messages, rate, 0
        self.publisher = Publisher(bootstrap, linger_ms=5)
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            for i, message in enumerate(self.messages):
                delay = started + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.publisher.send_doc(message)
                self.sent = i + 1
            self.publisher.flush(timeout=60)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc
        finally:
            self.publisher.close()

    def wait_sent(self, share: float, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < share * len(self.messages) and time.monotonic() < deadline:
            time.sleep(0.05)

    def finish(self, timeout: float = 180.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the stream did not finish"
        assert self.error is None, f"sending failed: {self.error!r}"


def _counted(worker: WorkerProcess) -> tuple[float, float]:
    """(records counted once: every outcome but a redelivered duplicate, dead-lettered)."""
    total = worker.total("clsmon_observations_total")
    return (total - worker.total("clsmon_observations_total", outcome="duplicate"),
            worker.total("clsmon_observations_total", outcome="dead_letter"))


def test_a_killed_leader_and_a_rolling_restart_lose_nothing(cluster: KafkaCluster,
                                                            tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    bootstrap = cluster.bootstrap  # all three brokers
    ensure_topics(bootstrap, names, partitions=3, replication_factor=3)
    patients = cohort(8, seed=11, hours=36,
                      mix={"scls": 0.5, "sepsis_cls": 0.25, "artefact": 0.25})
    phases = [list(cohort_messages(patients[:4], names)),
              list(cohort_messages(patients[4:], names))]
    reference = replay_result(phases[0] + phases[1], names, tmp_path)
    expected = {a.alert_id for a in reference.alerts}
    assert len(expected) >= 3 and reference.rejects  # alerts to compare, artefacts to count

    receiver = Receiver().start()
    config = tmp_path / "notify.toml"
    # supersede_window_s = 0: every alert is delivered (none held for a more severe one)
    config.write_text(f'supersede_window_s = 0\n\n[sinks.ward]\ntype = "webhook"\n'
                      f'url = "{receiver.url("/ward")}"\n'
                      'timeout_s = 2\nretries = 8\nbackoff_s = 0.2\n\n'
                      '[default]\nsinks = ["ward"]\n')
    worker = WorkerProcess(bootstrap, names.prefix, tmp_path, "--replication-factor", "3")
    notifier = NotifierProcess(bootstrap, names.prefix, tmp_path, config,
                               "--replication-factor", "3")
    try:
        worker.wait_ready(timeout=90)
        notifier.wait_ready(timeout=90)

        # 1. SIGKILL the leader of vitals[0] a third of the way into a steady stream
        stream = SteadyStream(bootstrap, phases[0], RATE)
        stream.start()
        stream.wait_sent(1 / 3)
        leader = leader_of(bootstrap, names.vitals, 0)
        cluster.kill(leader, signal.SIGKILL)
        stream.finish()
        worker.wait_for("clsmon_observations_total", len(phases[0]), timeout=120)
        cluster.restart_node(leader)

        # 2. a rolling restart of every broker (controlled shutdown) under another stream
        stream = SteadyStream(bootstrap, phases[1], RATE)
        stream.start()
        for node in cluster.all_nodes:
            stream.wait_sent((node.node_id - 0.5) / 4)
            cluster.restart_node(node.node_id)
        stream.finish()

        messages = phases[0] + phases[1]
        counts = {t: sum(1 for m in messages if m.topic == t) for t in names.inputs}
        _wait_all_committed(bootstrap, _group(names), _input_ends(bootstrap, names, counts),
                            timeout=120, workers=[worker])
        once, dead = _counted(worker)
        assert (once, dead) == (len(messages), len(reference.rejects)), worker.output()
        got = _alert_ids(bootstrap, names, expected)
        assert got == expected, f"extra {got - expected}, missing {expected - got}"
        receiver.wait(lambda: set(receiver.delivered_keys("/ward")) >= expected, timeout=60)
        assert receiver.delivered_keys("/ward") == {a: 1 for a in expected}
        assert worker.proc.poll() is None and worker.get("/readyz")[0] == 200
    finally:
        receiver.stop()
        codes = worker.stop(), notifier.stop()
    assert codes == (0, 0), worker.output() + notifier.output()
