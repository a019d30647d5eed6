"""A worker whose broker is gone still stops on SIGTERM: within ``--stop-timeout``, saying
why, with its final counts, and exit status 1 (``streams.kafka.faust_app._Worker``).

Its own one-node Apache Kafka, stopped under the running worker (the session's broker must stay
up for the other tests)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from kafka_broker import own_kafka
from stream_support import WorkerProcess, fresh_prefix

pytestmark = pytest.mark.broker


def test_sigterm_stops_a_worker_whose_broker_is_gone_within_the_stop_timeout(
        tmp_path: Path) -> None:
    with own_kafka() as cluster:
        worker = WorkerProcess(cluster.bootstrap, fresh_prefix(), tmp_path, "--stop-timeout", "4")
        try:
            worker.wait_ready()
        except BaseException:
            worker.stop(signal.SIGKILL)
            raise
    # the broker has stopped; the worker has not noticed yet
    assert worker.proc.poll() is None, worker.output()
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    try:
        code = worker.proc.wait(timeout=40)
    except BaseException:
        worker.proc.kill()
        raise
    elapsed = time.monotonic() - started
    output = worker.output()
    assert elapsed < 4 + 10, f"SIGTERM took {elapsed:.1f} s\n{output}"
    # the stop waits for the broker (it waited for good): cut short, said, counts still printed
    assert code == 1, output
    assert "the stop did not finish within 4 s" in output, output
    assert worker.final_metrics() is not None, output
