"""A worker stops on SIGTERM when its broker is gone or frozen: within ``--stop-timeout``, with
its final counts and its temporary data directory removed, and what it prints meanwhile stays
readable (``streams.kafka.faust_app._Worker``, ``streams.kafka.repeats``,
``streams.kafka.consumer`` 10.).

Each test has its own one-node Apache Kafka, stopped or frozen under the running worker (the
session's broker must stay up for the other tests)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import own_kafka
from stream_support import WorkerProcess, fresh_prefix

pytestmark = pytest.mark.broker

#: aiokafka's line for each failed connection attempt (about 10 a second with the broker gone)
FAILED_CONNECTION = "Unable connect to node with id"
STOP_TIMEOUT_S = 4


@contextlib.contextmanager
def worker_on(cluster: Any, tmp_path: Path) -> Iterator[tuple[WorkerProcess, Path]]:
    """A ready worker on ``cluster`` that makes its own temporary data directory (the one
    it made is yielded too), killed if the test fails before it stops."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    worker = WorkerProcess(cluster.bootstrap, fresh_prefix(), tmp_path, "--stop-timeout",
                           str(STOP_TIMEOUT_S), env={"TMPDIR": str(tmpdir)}, faust_dir=False)
    try:
        worker.wait_ready()
        made = list(tmpdir.glob("clsmon-worker-*"))
        assert len(made) == 1, made
        yield worker, made[0]
    finally:
        if worker.proc.poll() is None:
            worker.stop(signal.SIGKILL)


def sigterm(worker: WorkerProcess) -> tuple[int, float, str]:
    """SIGTERM; (exit code, seconds it took, the whole console output)."""
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(timeout=40)
    return code, time.monotonic() - started, worker.output(whole=True)


def test_a_worker_whose_broker_is_gone_stops_cleanly_and_says_it_once(tmp_path: Path) -> None:
    with own_kafka() as cluster, worker_on(cluster, tmp_path) as (worker, data_dir):
        cluster.stop()  # the broker is gone; the worker retries for a while
        time.sleep(3)
        assert worker.proc.poll() is None, worker.output()
        code, elapsed, output = sigterm(worker)
    assert code == 0, output
    assert elapsed < STOP_TIMEOUT_S, f"SIGTERM took {elapsed:.1f} s\n{output}"
    assert worker.final_metrics() is not None, output
    # readable: the console says when it was ready; 3 s of failed retries are one line per
    # kind, not ten a second; no traceback from the consumer thread's stop
    assert "clsmon worker: ready" in output, output
    assert 1 <= output.count(FAILED_CONNECTION) <= 2, output
    assert "Traceback" not in output, output
    assert not data_dir.exists(), list(data_dir.rglob("*"))


def test_a_worker_whose_broker_froze_is_cut_short_at_the_stop_timeout(tmp_path: Path) -> None:
    with own_kafka() as cluster, worker_on(cluster, tmp_path) as (worker, data_dir):
        broker = cluster.node(1).proc
        broker.send_signal(signal.SIGSTOP)  # connections open, nothing answers: a partition
        try:
            code, elapsed, output = sigterm(worker)
        finally:
            broker.send_signal(signal.SIGCONT)
    assert elapsed < STOP_TIMEOUT_S + 10, f"SIGTERM took {elapsed:.1f} s\n{output}"
    # the stop waits for the broker (it waited for good): cut short, said, counts still printed
    assert code == 1, output
    assert f"the stop did not finish within {STOP_TIMEOUT_S} s" in output, output
    assert worker.final_metrics() is not None, output
    assert "Traceback" not in output, output
    assert not data_dir.exists(), list(data_dir.rglob("*"))
