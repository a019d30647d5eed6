"""``clsmon demo``: a local broker (Apache Kafka where Java 17+ is, else the embedded Tansu) +
worker + notifier + ward board + simulator; alerts live on screen and on the board.

The worker, the notifier and the board run as child processes in their own sessions (Faust wants
the main thread and its own signal handling); the simulator publishes from a thread; the main
thread reads the alerts and dead-letters topics and prints alerts as they come. When the cohort
has been published and the alerts have settled, a summary is printed (alerts by phase, dead
letters by reason) and the demo keeps running for the board until Ctrl-C. Ctrl-C (or SIGTERM)
stops the simulator, sends SIGTERM to the children (SIGKILL after a timeout) and stops the
broker, so no process outlives the demo.

Files: the logs, the demo's users file and audit files go to ``<state dir>/demo`` (cleared at
each start; see ``streams.ops.paths``), the processes' data directories to a temporary
directory that is removed at the end: nothing is left in the source tree or in /tmp.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from streams.kafka.apache import KafkaCluster
from streams.kafka.connection import connect
from streams.kafka.engines import local_broker, resolve_engine
from streams.kafka.local import LOOPBACK, LocalBroker, free_port, port_in_use
from streams.kafka.topics import TopicNames, ensure_topics
from streams.notify.sinks import format_alert
from streams.offline.publish import Publisher, cohort_messages, publish
from streams.offline.simulator import cohort
from streams.ops.paths import state_dir

PARTITIONS = 3
DEMO_USER, DEMO_PASSWORD = "demo", "clsmon-demo"  # a clinician, on 127.0.0.1 only
SETTLE_S = 3.0  # the worker has processed the cohort and no alert came for this long: summary


class DemoError(ValueError):
    """Something the user can fix (a busy port); reported in one line, exit code 2."""


@dataclass
class Children:
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def failed(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return f"{name} exited with code {proc.returncode} (log {self.logs[name]})"
        return None


def check_ports(args: argparse.Namespace) -> None:
    """Refuse to start when a port the demo needs is taken, naming it and the flag to change."""
    wanted = [(args.port, "broker", "--port"), (args.web_port, "worker metrics", "--web-port"),
              (args.notify_port, "notifier metrics", "--notify-port"),
              (args.board_port, "ward board", "--board-port")]
    for port, what, flag in wanted:
        if port and port_in_use(port):
            raise DemoError(f"port {port} ({what}) is in use: choose another with "
                            f"{flag} N (e.g. clsmon demo {flag} {free_port()})")


def _child(name: str, args: list[str], logdir: Path, children: Children,
           env: dict[str, str] | None = None) -> None:
    root = str(Path(__file__).resolve().parents[1])
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    log_path = logdir / f"{name}.log"
    with open(log_path, "wb") as log:
        children.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=full_env,
            start_new_session=True)  # Ctrl-C reaches us, we stop it
    children.logs[name] = log_path


def start_worker(broker_url: str, names: TopicNames, args: argparse.Namespace, data: Path,
                 logdir: Path, children: Children) -> None:
    cmd = ["worker", "--broker", broker_url, "--web-port", str(args.web_port),
           "--topic-prefix", names.prefix, "--partitions", str(PARTITIONS),
           "--data-dir", str(data / "worker")]
    if args.thresholds:
        cmd += ["--thresholds", args.thresholds]
    _child("worker", cmd, logdir, children)


def start_notifier(broker_url: str, names: TopicNames, args: argparse.Namespace, data: Path,
                   logdir: Path, children: Children) -> None:
    """Alerts are printed by the demo itself; the notifier keeps the audit file and escalates
    unacknowledged critical alerts after 10 minutes (to the audit file: no pager here)."""
    config = logdir / "notify.toml"
    config.write_text(f'escalate_after_s = {{ critical = 600 }}\n\n[sinks.audit]\ntype = '
                      f'"audit"\npath = "{logdir / "notifications.jsonl"}"\n\n[default]\n'
                      'sinks = ["audit"]\nescalation = ["audit"]\n')
    _child("notifier", ["notify", "--broker", broker_url, "--config", str(config),
                        "--web-port", str(args.notify_port), "--topic-prefix", names.prefix,
                        "--partitions", str(PARTITIONS), "--data-dir", str(data / "notifier")],
           logdir, children)


def start_board(broker_url: str, names: TopicNames, args: argparse.Namespace, logdir: Path,
                children: Children) -> str:
    from streams.board.users import add_user

    users = logdir / "board-users.toml"
    add_user(users, DEMO_USER, "clinician", DEMO_PASSWORD, "Demo Clinician")
    _child("board", ["board", "--broker", broker_url, "--port", str(args.board_port),
                     "--users", str(users), "--audit", str(logdir / "board-audit.jsonl"),
                     "--topic-prefix", names.prefix, "--metrics-port", "0",
                     "--insecure-cookies"], logdir, children,
           env={"CLSMON_BOARD_SECRET": os.urandom(24).hex()})
    return f"http://{LOOPBACK}:{args.board_port}/"


def stop_children(children: Children, timeout: float = 15.0) -> None:
    for proc in children.procs.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in children.procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def demo_dir() -> Path:
    """``<state dir>/demo``, emptied: this run's logs, users file and audit files."""
    path = state_dir() / "demo"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run until Ctrl-C/SIGTERM; returns the exit code."""
    check_ports(args)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    names = TopicNames(os.environ.get("CLSMON_TOPIC_PREFIX", "clsmon."))
    logdir = demo_dir()
    data = Path(tempfile.mkdtemp(prefix="clsmon-demo-"))  # removed in the finally below
    engine = resolve_engine(getattr(args, "engine", "auto"), out)
    if engine == "tansu":  # one record per produce batch: Tansu's end offsets (README)
        os.environ["CLSMON_PRODUCER_MAX_BATCH_SIZE"] = "1"
    broker = local_broker(engine, args.port or free_port(), str(logdir / "broker.log"))
    children = Children()
    sim: threading.Thread | None = None
    sim_done = threading.Event()
    published: list[int] = []
    try:
        broker.start()
        ensure_topics(broker.bootstrap, names, PARTITIONS)
        if isinstance(broker, KafkaCluster):  # it logs into its temporary data directory
            logs = (f"its log {broker.node(1).log_file} while it runs; the other logs in "
                    f"{logdir}")
        else:
            logs = f"logs in {logdir}"
        what = "Apache Kafka" if engine == "kafka" else "embedded Tansu"
        say(out, f"broker    {what} at {broker.url}  ({logs})")
        start_worker(broker.url, names, args, data, logdir, children)
        start_notifier(broker.url, names, args, data, logdir, children)
        board_url = start_board(broker.url, names, args, logdir, children)
        say(out, f"worker    metrics http://{LOOPBACK}:{args.web_port}/metrics")
        say(out, f"notifier  audit {logdir / 'notifications.jsonl'}, metrics "
                 f"http://{LOOPBACK}:{args.notify_port}/metrics")
        say(out, f"board     {board_url}  sign in as {DEMO_USER} / {DEMO_PASSWORD}")
        start_ms = int((time.time() - args.hours * 3600) * 1000)  # event times in the past
        patients = cohort(args.patients, seed=args.seed, hours=args.hours, start_ms=start_ms)
        sim = threading.Thread(target=_simulate, name="clsmon-sim", daemon=True,
                               args=(broker.bootstrap, names, patients, args.speed, stop,
                                     sim_done, out, published))
        sim.start()
        say(out, f"simulator {args.patients} patients at {args.speed:g}x; alerts below. "
                 "Ctrl-C to stop.")
        return _watch(broker, names, children, stop,
                      lambda: bool(published) and processed(args.web_port) >= published[0],
                      board_url, out)
    finally:
        stop.set()
        if sim is not None:
            sim.join(timeout=10)
        stop_children(children)
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
        say(out, f"demo stopped (logs kept in {logdir})")


def say(out: TextIO, line: str) -> None:
    print(line, file=out, flush=True)


def _simulate(bootstrap: str, names: TopicNames, patients: list[Any], speed: float,
              stop: threading.Event, done: threading.Event, out: TextIO,
              published: list[int]) -> None:
    publisher = Publisher(bootstrap)
    try:
        n = publish(publisher, cohort_messages(patients, names), speed=speed or None,
                    should_stop=stop.is_set)
        published.append(n)
        if not stop.is_set():
            say(out, f"simulator done: {n} messages published")
    except Exception as exc:  # noqa: BLE001 - report, the demo keeps showing alerts
        say(out, f"simulator failed: {exc!r}")
    finally:
        publisher.close()
        done.set()


def _consumer(bootstrap: str, topics: list[str]) -> Any:
    from kafka import TopicPartition

    consumer = connect(bootstrap).consumer(enable_auto_commit=False)
    tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer


@dataclass
class Tally:
    alerts: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)
    last_alert: float = field(default_factory=time.monotonic)


def summary(tally: Tally, board_url: str) -> str:
    phases = ", ".join(f"{p} {n}" for p, n in sorted(tally.alerts.items())) or "none"
    dead = ", ".join(f"{r} {n}" for r, n in sorted(tally.dead.items())) or "none"
    return (f"cohort done: {sum(tally.alerts.values())} alerts by phase: {phases}; dead letters "
            f"by reason: {dead}.\nThe board stays up at {board_url} ; Ctrl-C stops the demo "
            "(broker, worker, notifier, board).")


def processed(metrics_port: int) -> float:
    """Messages the worker has taken in (``clsmon_observations_total``, every outcome)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{metrics_port}/metrics",
                                    timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("clsmon_observations_total{"))


def _watch(broker: LocalBroker, names: TopicNames, children: Children,
           stop: threading.Event, cohort_done: Callable[[], bool], board_url: str,
           out: TextIO) -> int:
    colour = out.isatty()
    consumer = _consumer(broker.bootstrap, [names.alerts, names.dead_letters])
    tally = Tally()
    started = time.monotonic()
    summarised = False
    try:
        while not stop.is_set():
            failed = children.failed() or (None if broker.is_running() else "broker exited")
            if failed:
                say(out, failed)
                return 1
            for records in consumer.poll(timeout_ms=300).values():
                for record in records:
                    _tally(record, names, tally, started, colour, out)
            if (not summarised and time.monotonic() - tally.last_alert >= SETTLE_S
                    and cohort_done()):
                say(out, summary(tally, board_url))
                summarised = True
        return 0
    finally:
        consumer.close()


def _tally(record: Any, names: TopicNames, tally: Tally, started: float, colour: bool,
           out: TextIO) -> None:
    try:
        doc = json.loads(record.value)
    except (TypeError, ValueError):
        return
    if record.topic == names.dead_letters:
        tally.dead[str(doc.get("reason"))] += 1
        return
    if doc.get("alert_id") in tally.seen:
        return  # a redelivery: same decision, shown once
    tally.seen.add(doc.get("alert_id"))
    tally.alerts[str(doc.get("phase"))] += 1
    tally.last_alert = time.monotonic()
    say(out, f"[{time.monotonic() - started:6.1f}s] {format_alert(doc, colour)}")
