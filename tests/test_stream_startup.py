"""The first worker on a new broker logs no ERROR while the broker elects the consumer group's
coordinator (a normal start, retried by aiokafka: ``streams.kafka.coordinator``), and a
coordinator that never comes is still an ERROR.

Each test starts its own one-node Apache Kafka: the election happens once per broker (the
first FindCoordinator creates ``__consumer_offsets``), long over on the session's broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka_broker import own_kafka
from stream_support import WorkerProcess, fresh_prefix

from streams.kafka.coordinator import START_GRACE_S

pytestmark = pytest.mark.broker

LOOKUP_FAILED = "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"


def test_first_worker_on_a_new_broker_logs_the_coordinator_election_as_info(
        tmp_path: Path) -> None:
    with own_kafka() as cluster:
        worker = WorkerProcess(cluster.bootstrap, fresh_prefix(), tmp_path, "--loglevel", "info")
        try:
            worker.wait_ready()
        finally:
            assert worker.stop() == 0, worker.output()
    lines = worker.log_path.read_text(errors="replace").splitlines()
    assert not [ln for ln in lines if "[ERROR]" in ln]
    # the election did happen in this start (the broker answered error 15), at INFO
    assert any("[INFO]" in ln and LOOKUP_FAILED in ln for ln in lines), lines[-40:]


def test_coordinator_that_never_comes_is_logged_as_error(tmp_path: Path) -> None:
    # the offsets topic wants 2 replicas on a 1-node cluster: it is never created, and every
    # FindCoordinator is answered COORDINATOR_NOT_AVAILABLE
    with own_kafka(**{"offsets.topic.replication.factor": "2"}) as cluster:
        worker = WorkerProcess(cluster.bootstrap, fresh_prefix(), tmp_path)
        started = time.monotonic()
        try:
            deadline = started + START_GRACE_S + 30
            while "[ERROR]" not in worker.output() and time.monotonic() < deadline:
                assert worker.proc.poll() is None, worker.output()
                time.sleep(0.5)
            seen_after = time.monotonic() - started
        finally:
            worker.stop()
    errors = [ln for ln in worker.log_path.read_text(errors="replace").splitlines()
              if "[ERROR]" in ln]
    assert errors and LOOKUP_FAILED in errors[0], worker.output()
    # quiet during the start-up grace only
    assert seen_after >= START_GRACE_S - 1
