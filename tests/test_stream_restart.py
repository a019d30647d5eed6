"""A worker killed mid-stream (SIGKILL: no clean shutdown) and restarted keeps its state."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from stream_support import (
    WorkerProcess,
    alert_docs,
    fresh_prefix,
    read_topic,
    replay_alert_ids,
    wait_committed,
)

from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher, cohort_messages
from streams.offline.simulator import cohort


@pytest.mark.broker
def test_state_survives_a_killed_worker(kafka_bootstrap: str, tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    messages = list(cohort_messages(cohort(6, seed=7, hours=96), names))
    contexts = [m for m in messages if m.topic == names.patients]
    observations = [m for m in messages if m.topic != names.patients]
    first = observations[: int(len(observations) * 0.4)]
    second = observations[len(first):]
    expected = replay_alert_ids(messages, names, tmp_path)
    # Precondition: a worker that lost its state (baselines, windows, phase) at the kill
    # would raise other alerts than the replay, so this test can tell the two apart.
    for k in (int(len(first) * 0.75), len(first)):
        lost = (replay_alert_ids(contexts + observations[:k], names, tmp_path)
                | replay_alert_ids(contexts + observations[k:], names, tmp_path))
        assert lost != expected

    publisher = Publisher(kafka_bootstrap)
    for message in contexts + first:
        publisher.send_doc(message)
    publisher.flush()

    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        worker.wait_for("clsmon_observations_total", len(contexts) + 0.75 * len(first))
        # kill only once offsets are committed: the restarted worker must then resume from
        # them with the recovered state instead of reading everything again
        wait_committed(kafka_bootstrap, f"{names.prefix.rstrip('.')}-worker",
                       names.vitals, int(0.5 * len(first)))
    finally:
        worker.stop(signal.SIGKILL)
    assert worker.proc.returncode == -signal.SIGKILL

    for message in second:
        publisher.send_doc(message)
    publisher.close()

    restarted = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        restarted.wait_ready()
        # everything after the last commit comes again; at least the second part is new
        restarted.wait_for("clsmon_observations_total", len(second), timeout=90)
        records = read_topic(kafka_bootstrap, names.alerts,
                             lambda rs: {d["alert_id"] for d in alert_docs(rs)} >= expected,
                             timeout=30)
        got = {d["alert_id"] for d in alert_docs(records)}
        assert got == expected
        # it resumed from the committed offsets (what it did not read again came from the state)
        assert restarted.total("clsmon_observations_total") < len(messages) - 0.3 * len(first)
        assert restarted.total("clsmon_dead_letters_total") == 0
        restarted.wait_drained()
    finally:
        assert restarted.stop() == 0, restarted.output()
