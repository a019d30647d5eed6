"""A real Prometheus server scrapes a running worker fed with data; ops queries answer."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from debian_tools import require
from stream_support import WorkerProcess, fresh_prefix

from streams.kafka.topics import TopicNames, ensure_topics
from streams.offline.publish import Publisher, cohort_messages
from streams.offline.simulator import cohort

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_value(base: str, expr: str, ok, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = query(base, expr)
        except OSError:
            result = []
        if result:
            last = float(result[0]["value"][1])
            if ok(last):
                return last
        time.sleep(0.5)
    raise AssertionError(f"{expr} never satisfied the condition (last value {last})")


@pytest.mark.broker
def test_prometheus_scrapes_the_worker_and_the_rules_load(kafka_bootstrap: str,
                                                          tmp_path: Path) -> None:
    prometheus = require("prometheus", "prometheus")
    names = TopicNames(fresh_prefix())
    ensure_topics(kafka_bootstrap, names, partitions=3)
    messages = list(cohort_messages(cohort(4, seed=3, hours=72), names))
    publisher = Publisher(kafka_bootstrap)
    for message in messages:
        publisher.send_doc(message)
    publisher.close()

    worker = WorkerProcess(kafka_bootstrap, names.prefix, tmp_path)
    port = free_port()
    rules = ROOT / "deploy" / "prometheus" / "rules"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{rules}/*rules*.yml']\n"
        "scrape_configs:\n"
        "  - job_name: clsmon\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{worker.port}']}}]\n")
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        worker.wait_ready()
        worker.wait_for("clsmon_observations_total", len(messages), timeout=90)
        assert wait_value(base, 'up{job="clsmon"}', lambda v: v == 1) == 1
        seen = wait_value(base, "sum(clsmon_observations_total)", lambda v: v >= len(messages))
        assert seen == pytest.approx(len(messages), rel=0.01)
        assert wait_value(base, "sum(clsmon_patients)", lambda v: v == 4) == 4
        assert wait_value(base, "sum(clsmon_beds_monitored)", lambda v: v == 4) == 4
        assert wait_value(base, "sum(clsmon_beds_silent)", lambda v: v == 0) == 0
        # no patient identifier in any label the worker exposes
        series = json.load(urllib.request.urlopen(
            f"{base}/api/v1/series?match[]={{job=%22clsmon%22}}", timeout=5))["data"]
        labels = {v for s in series for k, v in s.items() if k not in ("__name__", "job")}
        assert not [v for v in labels if "sim-" in v], labels  # the cohort's patient ids
        assert wait_value(base, "sum(clsmon_state_size_bytes_count)", lambda v: v > 0) > 0
        assert wait_value(base, "histogram_quantile(0.99, sum by (le) "
                                "(clsmon_state_size_bytes_bucket))", lambda v: v > 0) <= 4096
        assert wait_value(base, "max(process_resident_memory_bytes)", lambda v: v > 0) > 10e6
        assert wait_value(base, "count(clsmon_consumer_lag_messages)", lambda v: v >= 1) >= 1
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as r:
            groups = json.load(r)["data"]["groups"]
        loaded = {rule["name"] for g in groups for rule in g["rules"]}
        assert {"ClsmonWorkerDown", "ClsmonConsumerLagHigh", "ClsmonDeadLetterRate",
                "ClsmonAlertStorm", "ClsmonLatencyHigh", "ClsmonNoDataFromBed"} <= loaded
        assert all(rule["health"] == "ok" for g in groups for rule in g["rules"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        assert worker.stop() == 0, worker.output()
