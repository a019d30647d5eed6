"""Under a backlog the stream decides like the replay (issue 14, item 8).

A gateway that flushes its buffer after a network outage sends a burst of observations, in
arrival order, into a running worker; a worker restarted while data piled up starts with a
backlog. Either way the worker must fold every reading in the replay's order: the same alerts,
and the same count of vitals too late for the blood-pressure rules. It used not to: the ordering
merge took a busy topic that paused between two fetches for a silent one (0 to 2,438 vitals
counted late, 4 to 11 of the replay's alerts, a different number in each of six runs).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from stream_support import (
    WorkerProcess,
    alert_docs,
    fresh_prefix,
    read_topic,
    replay_result,
    wait_committed,
)

from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher, cohort_messages
from streams.offline.simulator import cohort


def _late(worker: WorkerProcess) -> float:
    counts = worker.final_metrics()
    assert counts is not None, worker.output()
    return sum(v for (name, labels), v in counts.items()
               if name == "clsmon_observations_total" and dict(labels).get("outcome") == "late")


def _count(worker: WorkerProcess, metric: str) -> float:
    counts = worker.final_metrics()
    assert counts is not None, worker.output()
    return sum(v for (name, _), v in counts.items() if name == metric)


@pytest.mark.broker
def test_a_burst_into_a_running_worker_and_a_restart_with_a_backlog_decide_like_the_replay(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    # ~27k observations of 10 patients, most with a leak: 18 alerts in the replay
    mix = {"scls": 0.6, "sepsis_cls": 0.2, "stable": 0.2}
    messages = list(cohort_messages(cohort(10, seed=7, hours=72, mix=mix), names))
    replay = replay_result(messages, names, tmp_path)
    expected = {a.alert_id for a in replay.alerts}
    assert len(expected) >= 10 and len(messages) > 25_000
    # the order matters: the same rows with every lab first make vitals late, other alerts
    labs_first = sorted(messages, key=lambda m: m.topic != names.labs)
    wrong = replay_result(labs_first, names, tmp_path)
    assert wrong.late > 1_000 and {a.alert_id for a in wrong.alerts} != expected

    first, rest = messages[: len(messages) // 2], messages[len(messages) // 2:]
    publisher = Publisher(kafka_bootstrap)
    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        worker.wait_ready()
        for message in first:  # the burst, into a worker that is running
            publisher.send_doc(message)
        publisher.flush()
        worker.wait_for("clsmon_observations_total", len(first), timeout=240)
        for topic in (names.vitals, names.labs):
            wait_committed(kafka_bootstrap, f"{names.prefix.rstrip('.')}-worker", topic,
                           sum(1 for m in first if m.topic == topic), timeout=60)
    finally:
        assert worker.stop(signal.SIGTERM) == 0, worker.output()

    for message in rest:  # piles up while no worker runs
        publisher.send_doc(message)
    publisher.close()
    restarted = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    try:
        restarted.wait_ready()
        restarted.wait_for("clsmon_observations_total", len(rest), timeout=240)
        records = read_topic(kafka_bootstrap, names.alerts,
                             lambda rs: {d["alert_id"] for d in alert_docs(rs)} >= expected,
                             timeout=30)
    finally:
        assert restarted.stop(signal.SIGTERM) == 0, restarted.output()
    got = {d["alert_id"] for d in alert_docs(records)}
    # on failure, say which phase went wrong (each worker's final counts: late, merged behind)
    assert (_late(worker) + _late(restarted), got) == (replay.late, expected), (
        f"burst: late {_late(worker)}, behind {_count(worker, 'clsmon_merged_behind_total')}; "
        f"restart: late {_late(restarted)}, "
        f"behind {_count(restarted, 'clsmon_merged_behind_total')}\n{restarted.output()}")
    # our producer never stamps ahead of its clock, and every record reached the log in time
    for metric in ("clsmon_future_timestamps_total", "clsmon_merged_behind_total"):
        assert _count(worker, metric) + _count(restarted, metric) == 0, (
            f"{metric}: burst {_count(worker, metric)}, restart {_count(restarted, metric)}\n"
            f"{worker.output() if _count(worker, metric) else restarted.output()}")
