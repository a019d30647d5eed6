"""Stream benchmark: one worker's end-to-end throughput and latency at 1,000 observations/s.

Runs on the embedded Tansu broker. Prints the figures and writes bench/results/stream.json.

1. Throughput: a backlog of simulated observations is published first, then a worker starts;
   observations/s = the middle 80 % of the backlog / the time it took (from 10 % to 90 %
   processed, read from the worker's clsmon_observations_total every 0.25 s and interpolated),
   so start-up and the last partition's tail do not count. The same backlog is read by a trivial
   Faust agent (counts messages, no table, no output) in the same run, timed the same way from
   its own count: the ratio is the cost of our work. The end-to-end figure (first to last
   message) is printed too.
2. Latency: a fresh prefix, the worker running, messages published at 1,000/s; p50/p99 of
   clsmon_observation_processing_latency_seconds (Kafka timestamp -> processed, every message)
   and of clsmon_observation_to_alert_latency_seconds (-> alert emitted), interpolated from the
   histogram buckets.

Both run with the worker's defaults (fetch wait 100 ms, ordering grace 300 ms), as shipped.

Usage: python bench/stream_bench.py [--patients N] [--hours H]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchio import write_results  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from streams.kafka.local import free_port  # noqa: E402
from streams.kafka.tansu import EmbeddedBroker  # noqa: E402
from streams.kafka.topics import TopicNames, ensure_topics  # noqa: E402
from streams.offline.publish import Publisher, cohort_messages  # noqa: E402
from streams.offline.simulator import cohort  # noqa: E402

TRIVIAL_AGENT = '''
import sys, time, faust
sys.path.insert(0, {root!r})
from streams.kafka import consumer
from streams.worker.config import WorkerConfig, faust_settings
broker, prefix, out, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = WorkerConfig(broker=broker, topic_prefix=prefix, producer_max_batch_size=0)
app = faust.App(prefix + "trivial", broker=broker, **faust_settings(cfg, {tmp!r}))
consumer.install(app, 100)
raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
topic = app.topic(prefix + "patients", prefix + "vitals", prefix + "labs", **raw)
state = {{"n": 0, "first": None, "t10": None, "t90": None}}
def write():
    open(out, "w").write(" ".join(str(state[k]) for k in ("n", "first", "t10", "t90"))
                         + f" {{time.time()}}")
@app.agent(topic)
async def count(stream):
    async for event in stream.events():
        state["n"] += 1
        if state["first"] is None:
            state["first"] = time.time()
        if state["t10"] is None and state["n"] >= 0.1 * total:
            state["t10"] = time.time()
        if state["t90"] is None and state["n"] >= 0.9 * total:
            state["t90"] = time.time()
        if state["n"] >= total:
            write()
@app.timer(0.2)
async def dump():
    write()
faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)\\
    .execute_from_commandline()
'''


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


def _quantile(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
              q: float) -> float | None:
    buckets = sorted((float(dict(lab)["le"]), v) for (n, lab), v in m.items()
                     if n == f"{name}_bucket")
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= target:
            if le == float("inf"):
                return prev_le
            frac = (target - prev_n) / (n - prev_n) if n > prev_n else 1.0
            return prev_le + (le - prev_le) * frac
        prev_le, prev_n = le, n
    return None


def _start_worker(url: str, prefix: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", url, "--web-port",
           str(port), "--web-host", "127.0.0.1", "--topic-prefix", prefix,
           "--data-dir", str(workdir / prefix)]
    log = open(workdir / f"{prefix}log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("worker did not become ready")


def _wait_processed(port: int, n: int, timeout: float, every: float = 0.05
                    ) -> list[tuple[float, float]]:
    """(wall time, messages processed) polled until all n were processed."""
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _total(_metrics(port), "clsmon_observations_total")
        samples.append((time.time(), done))
        if done >= n:
            return samples
        time.sleep(every)
    raise RuntimeError(f"worker processed {done} of {n} in {timeout} s")


def _crossing(samples: list[tuple[float, float]], count: float) -> float:
    """When the processed count reached ``count``, interpolated between two polls."""
    for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
        if c0 < count <= c1:
            return t0 + (t1 - t0) * (count - c0) / (c1 - c0)
    raise ValueError(f"{count} not crossed")


def throughput(broker: EmbeddedBroker, workdir: Path, patients: int, hours: float
               ) -> dict[str, Any]:
    names = TopicNames("bt.")
    ensure_topics(broker.bootstrap, names, 3)
    messages = list(cohort_messages(cohort(patients, seed=7, hours=hours), names))
    pub = Publisher(broker.bootstrap)
    for m in messages:
        pub.send_doc(m)
    pub.close()
    n = len(messages)
    proc, port = _start_worker(broker.url, names.prefix, workdir)
    try:
        # polled every 0.25 s: each scrape costs the worker CPU
        samples = _wait_processed(port, n, timeout=600, every=0.25)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    middle = _crossing(samples, 0.9 * n) - _crossing(samples, 0.1 * n)
    first = next(t for t, c in samples if c > 0)
    out = workdir / "trivial.out"
    script = workdir / "trivial.py"
    script.write_text(TRIVIAL_AGENT.format(root=str(ROOT), tmp=str(workdir / "trivial")))
    trivial = subprocess.Popen([sys.executable, str(script), broker.url, names.prefix, str(out),
                                str(n)], cwd=workdir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        fields: list[str] = []
        while time.monotonic() < deadline:
            fields = out.read_text().split() if out.exists() else []
            if fields and int(fields[0]) >= n:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"trivial agent read {fields[:1]} of {n} in 300 s")
    finally:
        trivial.terminate()
        trivial.wait(timeout=30)
    t_first, t10, t90, t_last = (float(x) for x in fields[1:])
    ours = 0.8 * n / middle
    base = 0.8 * n / (t90 - t10)
    return {"messages": n, "worker_obs_per_s": round(ours), "trivial_agent_obs_per_s":
            round(base), "ratio_worker_to_trivial": round(ours / base, 3),
            "worker_end_to_end_obs_per_s": round(n / (samples[-1][0] - first)),
            "trivial_end_to_end_obs_per_s": round(n / (t_last - t_first))}


def latency(broker: EmbeddedBroker, workdir: Path, rate: float, seconds: float
            ) -> dict[str, Any]:
    names = TopicNames("bl.")
    ensure_topics(broker.bootstrap, names, 3)
    messages = list(cohort_messages(cohort(12, seed=7, hours=96), names))[: int(rate * seconds)]
    proc, port = _start_worker(broker.url, names.prefix, workdir)
    try:
        pub = Publisher(broker.bootstrap, linger_ms=0)
        start = time.monotonic()
        for i, m in enumerate(messages):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pub.send_doc(m)
        pub.close()
        achieved = len(messages) / (time.monotonic() - start)
        _wait_processed(port, len(messages), timeout=120)
        time.sleep(1.5)
        m = _metrics(port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc_name = "clsmon_observation_processing_latency_seconds"
    alert_name = "clsmon_observation_to_alert_latency_seconds"
    return {
        "target_rate": rate, "achieved_rate": round(achieved), "messages": len(messages),
        "processing_p50_s": _quantile(m, proc_name, 0.5),
        "processing_p99_s": _quantile(m, proc_name, 0.99),
        "alerts": _total(m, f"{alert_name}_count"),
        "alert_p50_s": _quantile(m, alert_name, 0.5),
        "alert_p99_s": _quantile(m, alert_name, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--hours", type=float, default=72.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clsmon-bench-"))
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        tp = throughput(broker, workdir, args.patients, args.hours)
        print(f"throughput: {tp['messages']} messages, worker {tp['worker_obs_per_s']:,}/s, "
              f"trivial Faust agent {tp['trivial_agent_obs_per_s']:,}/s, "
              f"ratio {tp['ratio_worker_to_trivial']} (end to end: worker "
              f"{tp['worker_end_to_end_obs_per_s']:,}/s, trivial "
              f"{tp['trivial_end_to_end_obs_per_s']:,}/s)", flush=True)
        lat = latency(broker, workdir, args.rate, args.seconds)
        print(f"latency at {lat['achieved_rate']}/s: processing p50 {lat['processing_p50_s']} s "
              f"p99 {lat['processing_p99_s']} s; {lat['alerts']:.0f} alerts, "
              f"alert p50 {lat['alert_p50_s']} s p99 {lat['alert_p99_s']} s", flush=True)
    result = {"throughput": tp, "latency": lat, "broker": "tansu (embedded)",
              "settings": {"producer_max_batch_size": 1, "fetch_wait_ms": 100, "grace_ms": 300,
                           "note": "the worker's defaults"}}
    write_results(ROOT / "bench" / "results" / "stream.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
