"""``clsmon demo``: embedded broker + worker subprocess + simulator; alerts live on screen.

The worker runs as a child process in its own session (Faust wants the main thread and its own
signal handling); the simulator publishes from a thread; the main thread reads the alerts topic
and prints them. Ctrl-C (or SIGTERM) stops the simulator, sends SIGTERM to the worker (SIGKILL
after a timeout) and stops the broker, so no process outlives the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from streams.kafka.local import free_port
from streams.kafka.tansu import EmbeddedBroker
from streams.kafka.topics import TopicNames, ensure_topics
from streams.notify.sinks import format_alert
from streams.offline.publish import Publisher, cohort_messages, publish
from streams.offline.simulator import cohort

PARTITIONS = 3


def _start_worker(broker_url: str, names: TopicNames, web_port: int, thresholds: str | None,
                  workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = workdir / "worker.log"
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", broker_url,
           "--web-port", str(web_port), "--topic-prefix", names.prefix,
           "--partitions", str(PARTITIONS), "--data-dir", str(workdir / "faust")]
    if thresholds:
        cmd += ["--thresholds", thresholds]
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # Ctrl-C reaches us, we stop it
    return proc, log_path


def _stop_worker(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _alerts_consumer(bootstrap: str, topic: str) -> Any:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer


def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run until Ctrl-C/SIGTERM; returns the exit code."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    colour = out.isatty()
    names = TopicNames(os.environ.get("CLSMON_TOPIC_PREFIX", "clsmon."))
    workdir = Path(tempfile.mkdtemp(prefix="clsmon-demo-"))
    broker = EmbeddedBroker(args.port or free_port(), log_path=workdir / "broker.log")
    worker: subprocess.Popen[bytes] | None = None
    sim: threading.Thread | None = None
    try:
        broker.start()
        ensure_topics(broker.bootstrap, names, PARTITIONS)
        print(f"broker   {broker.url}  (log {workdir / 'broker.log'})", file=out, flush=True)
        worker, worker_log = _start_worker(broker.url, names, args.web_port, args.thresholds,
                                           workdir)
        print(f"worker   pid {worker.pid}, metrics http://127.0.0.1:{args.web_port}/metrics "
              f"(log {worker_log})", file=out, flush=True)
        patients = cohort(args.patients, seed=args.seed, hours=args.hours)
        sim = threading.Thread(target=_simulate, name="clsmon-sim", daemon=True,
                               args=(broker.bootstrap, names, patients, args.speed, stop, out))
        sim.start()
        print(f"simulator {args.patients} patients at {args.speed:g}x; alerts below. "
              "Ctrl-C to stop.", file=out, flush=True)
        return _print_alerts(broker, names, worker, stop, colour, out)
    finally:
        stop.set()
        if sim is not None:
            sim.join(timeout=10)
        if worker is not None:
            _stop_worker(worker)
        broker.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        print("demo stopped", file=out, flush=True)


def _simulate(bootstrap: str, names: TopicNames, patients: list[Any], speed: float,
              stop: threading.Event, out: TextIO) -> None:
    publisher = Publisher(bootstrap)
    try:
        n = publish(publisher, cohort_messages(patients, names), speed=speed or None,
                    should_stop=stop.is_set)
        if not stop.is_set():
            print(f"simulator done: {n} messages published", file=out, flush=True)
    except Exception as exc:  # noqa: BLE001 - report, the demo keeps showing alerts
        print(f"simulator failed: {exc!r}", file=out, flush=True)
    finally:
        publisher.close()


def _print_alerts(broker: EmbeddedBroker, names: TopicNames,
                  worker: subprocess.Popen[bytes], stop: threading.Event, colour: bool,
                  out: TextIO) -> int:
    consumer = _alerts_consumer(broker.bootstrap, names.alerts)
    seen: set[str] = set()
    started = time.monotonic()
    try:
        while not stop.is_set():
            if worker.poll() is not None:
                print(f"worker exited with code {worker.returncode}", file=out, flush=True)
                return 1
            if not broker.is_running():
                print("broker exited", file=out, flush=True)
                return 1
            for records in consumer.poll(timeout_ms=300).values():
                for record in records:
                    doc = json.loads(record.value)
                    if doc.get("alert_id") in seen:
                        continue  # a redelivery: same decision, shown once
                    seen.add(doc.get("alert_id"))
                    print(f"[{time.monotonic() - started:6.1f}s] {format_alert(doc, colour)}",
                          file=out, flush=True)
        return 0
    finally:
        consumer.close()
