"""Helpers for the stream tests: a worker subprocess, topic readers, the replay reference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka.local import free_port
from streams.kafka.topics import TopicNames
from streams.offline import replay as rp
from streams.offline.publish import Outgoing

ROOT = Path(__file__).resolve().parents[1]


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a clsmon child process: ours, the source tree first, ``extra``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **(extra or {})}


class WorkerProcess:
    """``python -m streams.cli worker`` in a child process, with its metrics port."""

    def __init__(self, bootstrap: str, prefix: str, data_dir: Path, *extra: str,
                 partitions: int = 3, env: dict[str, str] | None = None,
                 faust_dir: bool = True) -> None:
        """``faust_dir`` False: no ``--data-dir``, the worker makes its own temporary one (in
        ``$TMPDIR``, which ``env`` may set)."""
        self.port = free_port()
        self.log_path = data_dir / f"worker-{self.port}.log"
        cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", f"kafka://{bootstrap}",
               "--web-port", str(self.port), "--web-host", "127.0.0.1", "--topic-prefix", prefix,
               "--partitions", str(partitions),
               *(("--data-dir", str(data_dir / "faust")) if faust_dir else ()),
               "--flush-idle-s", "1", "--fetch-wait-ms", "10", *extra]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(env), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def output(self, whole: bool = False) -> str:
        """The worker's console output: its last 4,000 characters, or all of it."""
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text if whole else text[-4000:]

    def wait_ready(self, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n"
                                     f"{self.output()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"worker not ready in {timeout} s:\n{self.output()}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def final_metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        """The counters the process printed when it stopped (``FINAL_COUNTS``), in the form of
        ``metrics()``; None when it printed none (killed, or still running)."""
        from streams.ops.counts import FINAL_COUNTS

        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")
        assert "\x1b" not in text, "terminal escape codes in a log that is not a terminal"
        lines = [ln for ln in text.splitlines() if ln.startswith(FINAL_COUNTS)]
        if not lines:
            return None
        counts = json.loads(lines[-1].split(FINAL_COUNTS, 1)[1])
        text = "".join(f"{name} {value}\n" for name, value in counts.items())
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def total(self, name: str, **labels: str) -> float:
        return sum(v for (n, lab), v in self.metrics().items()
                   if n == name and all(dict(lab).get(k) == x for k, x in labels.items()))

    def wait_for(self, name: str, at_least: float, timeout: float = 60.0, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            value = self.total(name, **labels)
            if value >= at_least:
                return value
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{name}{labels} = {value}, expected >= {at_least}\n"
                             f"{self.output()}")

    def wait_drained(self, name: str = "clsmon_ordering_buffer_messages",
                     timeout: float = 15.0) -> None:
        """Wait until the gauge ``name`` is 0: held messages are released after the ordering
        grace and the next tick, not at once."""
        deadline = time.monotonic() + timeout
        while self.total(name) != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} = {self.total(name)} after {timeout} s\n"
                                     f"{self.output()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def read_topic(bootstrap: str, topic: str, done: Callable[[list[Any]], bool],
               timeout: float = 30.0, partitions: int = 3) -> list[Any]:
    """Every record of ``topic`` from the start (no consumer group: no join wait) until
    ``done(records)`` or the timeout."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=500)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if done(records):
                break
    finally:
        consumer.close()
    return records


def alert_docs(records: Iterable[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def replay_alert_ids(messages: Sequence[Outgoing], names: TopicNames, tmp: Path) -> set[str]:
    """The alert ids ``clsmon replay`` gives for these messages (contexts + observations in
    this order), through the same files and functions as the command."""
    return {a.alert_id for a in replay_result(messages, names, tmp).alerts}


def replay_result(messages: Sequence[Outgoing], names: TopicNames, tmp: Path
                  ) -> rp.ReplayResult:
    """What ``clsmon replay`` gives for these messages (alerts, rejects, counts)."""
    obs = [m.doc for m in messages if m.topic != names.patients]
    contexts = [m.doc for m in messages if m.topic == names.patients]
    path = tmp / f"obs-{uuid.uuid4().hex[:6]}.csv"
    pd.DataFrame(obs, columns=["patient_id", "observed_at", "kind", "value", "unit", "source",
                               "period_min"]).to_csv(path, index=False)
    ctx_path = path.with_suffix(".patients.csv")
    pd.DataFrame(contexts)[["patient_id", "sex", "weight_kg", "birth_year"]].to_csv(
        ctx_path, index=False)
    return rp.replay_frame(rp.read_observations(path), rp.read_contexts(ctx_path))


def wait_committed(bootstrap: str, group: str, topic: str, at_least: int,
                   timeout: float = 30.0) -> int:
    """Wait until ``group`` has committed ``at_least`` offsets of ``topic`` (all partitions)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout
    total = 0
    try:
        while time.monotonic() < deadline:
            offsets = admin.list_group_offsets(group).get(group, {})
            total = sum(o.offset for tp, o in offsets.items() if tp.topic == topic)
            if total >= at_least:
                return total
            time.sleep(0.1)
    finally:
        admin.close()
    raise AssertionError(f"{group} committed {total} of {topic}, expected >= {at_least}")
