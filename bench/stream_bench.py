"""Stream benchmark: one worker's throughput next to a trivial Faust agent, and its latency at
1,000 observations/s, on Apache Kafka and on the embedded Tansu broker, over several rounds.

Prints every round and min/median/max per broker; writes bench/results/stream.json.

1. Throughput: a backlog of simulated observations is published first, then a worker starts;
   observations/s = the middle 80 % of the backlog / the time it took (from 10 % to 90 %
   processed, read from the worker's clsmon_observations_total every 0.25 s and interpolated),
   so start-up and the last partition's tail do not count. The same backlog is read by a trivial
   Faust agent (counts messages, no table, no output) in the same run, timed the same way from
   its own count: the ratio is the cost of our work. The end-to-end figure (first to last
   message) is printed too, and the CPU time each process spent on the same middle 80 %
   (ms per 1,000 observations, all threads: /proc for the worker, ``time.process_time`` in
   the agent): on a shared machine a busy neighbour slows the wall clock of one run, much less
   the CPU a message costs, so ``cpu_ratio`` (trivial / worker) is the steadier comparison.
2. Latency: a fresh prefix, the worker running, messages published at 1,000/s; p50/p99 of
   clsmon_observation_processing_latency_seconds (Kafka timestamp -> processed, every message)
   and of clsmon_observation_to_alert_latency_seconds (-> alert emitted), interpolated from the
   histogram buckets.

Both run with the worker's defaults (fetch wait 100 ms, ordering grace 300 ms, aiokafka's
producer batching), as shipped; on Tansu with ``--producer-max-batch-size 1``, which it needs.
Apache Kafka runs with the JVM's default options (not the tests' fast-start ones).
``--profile DIR`` records the first round's worker with py-spy (a flame graph SVG).

Ctrl-C (SIGINT) or SIGTERM stops every process the benchmark started (workers, the trivial
agent, py-spy, the broker) and exits with one line and code 130; nothing is written. The
children run in their own sessions (a Ctrl-C in the terminal reaches the benchmark only, which
stops them in order) and die with it if it is killed.

Usage: python bench/stream_bench.py [--engine kafka|tansu|both] [--rounds 3] [--patients N]
       [--hours H] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchio import write_results  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from streams.demo import Children, stop_children  # noqa: E402
from streams.kafka.engines import local_broker  # noqa: E402
from streams.kafka.local import LocalBroker, die_with_parent, free_port  # noqa: E402
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
topic = app.topic(*cfg.names.inputs, **raw)
state = {{"n": 0, "first": None, "t10": None, "t90": None, "c10": None, "c90": None}}
def write():
    open(out, "w").write(" ".join(str(state[k]) for k in ("n", "first", "t10", "t90"))
                         + f" {{time.time()}} {{state['c10']}} {{state['c90']}}")
@app.agent(topic)
async def count(stream):
    async for event in stream.events():
        state["n"] += 1
        if state["first"] is None:
            state["first"] = time.time()
        if state["t10"] is None and state["n"] >= 0.1 * total:
            state["t10"], state["c10"] = time.time(), time.process_time()
        if state["t90"] is None and state["n"] >= 0.9 * total:
            state["t90"], state["c90"] = time.time(), time.process_time()
        if state["n"] >= total:
            write()
@app.timer(0.2)
async def dump():
    write()
faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)\\
    .execute_from_commandline()
'''


#: every process this benchmark started (stopped on Ctrl-C / SIGTERM: ``interruptible``)
CHILDREN = Children()


def spawn(name: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own session that dies with the benchmark, and remember it."""
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=die_with_parent,
                            **kwargs)
    CHILDREN.procs[f"{name} {proc.pid}"] = proc
    return proc


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    stop_children(Children({"child": proc}), timeout)


def interruptible(body: Callable[[], int]) -> int:
    """Run ``body``; on SIGINT or SIGTERM stop every child (``CHILDREN``; the brokers are
    stopped by ``run_engine`` on the way out), print one line and return 130."""

    def _interrupted(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the clean-up is not to be interrupted
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return body()
    except KeyboardInterrupt:
        stop_children(CHILDREN, timeout=15.0)
        print("stream benchmark interrupted: its workers and brokers are stopped; no results "
              "written", file=sys.stderr, flush=True)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def _start_worker(url: str, prefix: str, workdir: Path, engine: str
                  ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", url, "--web-port",
           str(port), "--web-host", "127.0.0.1", "--topic-prefix", prefix,
           "--data-dir", str(workdir / prefix)]
    if engine == "tansu":
        cmd += ["--producer-max-batch-size", "1"]
    with open(workdir / f"{prefix}log", "wb") as log:
        proc = spawn("worker", cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                     env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    _stop(proc, 5.0)
    raise RuntimeError("worker did not become ready")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_processed(port: int, n: int, timeout: float, every: float = 0.05, pid: int = 0
                    ) -> list[tuple[float, float, float]]:
    """(wall time, messages processed, CPU seconds of ``pid`` or 0) polled until all n were
    processed."""
    samples: list[tuple[float, float, float]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _total(_metrics(port), "clsmon_observations_total")
        samples.append((time.time(), done, _cpu_s(pid) if pid else 0.0))
        if done >= n:
            return samples
        time.sleep(every)
    raise RuntimeError(f"worker processed {done} of {n} in {timeout} s")


def _crossing(samples: list[tuple[float, float, float]], count: float, column: int = 0
              ) -> float:
    """When (``column`` 0: wall time; 2: CPU time) the processed count reached ``count``,
    interpolated between two polls."""
    for a, b in zip(samples, samples[1:], strict=False):
        if a[1] < count <= b[1]:
            return a[column] + (b[column] - a[column]) * (count - a[1]) / (b[1] - a[1])
    raise ValueError(f"{count} not crossed")


def _profiled(proc: subprocess.Popen[bytes], profile: Path | None) -> Any:
    """py-spy recording ``proc`` into ``profile`` until stopped: an SVG flame graph, or
    collapsed stacks (``.txt``), or speedscope JSON (``.json``)."""
    if profile is None:
        return contextlib.nullcontext()
    spy = Path(sys.executable).with_name("py-spy")
    profile.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".txt": "raw", ".json": "speedscope"}.get(profile.suffix, "flamegraph")
    return spawn("py-spy", [str(spy), "record", "--pid", str(proc.pid), "--rate", "100",
                            "--output", str(profile), "--format", fmt, "--nonblocking"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def throughput(broker: LocalBroker, engine: str, workdir: Path, patients: int, hours: float,
               prefix: str, profile: Path | None = None) -> dict[str, Any]:
    names = TopicNames(prefix)
    ensure_topics(broker.bootstrap, names, 3)
    messages = list(cohort_messages(cohort(patients, seed=7, hours=hours), names))
    pub = Publisher(broker.bootstrap)
    for m in messages:
        pub.send_doc(m)
    pub.close()
    n = len(messages)
    proc, port = _start_worker(broker.url, names.prefix, workdir, engine)
    spy = _profiled(proc, profile)
    try:
        # polled every 0.25 s: each scrape costs the worker CPU
        samples = _wait_processed(port, n, timeout=600, every=0.25, pid=proc.pid)
    finally:
        if isinstance(spy, subprocess.Popen):
            spy.send_signal(2)  # SIGINT: py-spy writes the flame graph
            spy.wait(timeout=60)
        _stop(proc)
    middle = _crossing(samples, 0.9 * n) - _crossing(samples, 0.1 * n)
    middle_cpu = _crossing(samples, 0.9 * n, 2) - _crossing(samples, 0.1 * n, 2)
    first = next(t for t, c, _ in samples if c > 0)
    out = workdir / f"{prefix}trivial.out"  # one per round: never an earlier round's count
    script = workdir / "trivial.py"
    script.write_text(TRIVIAL_AGENT.format(root=str(ROOT), tmp=str(workdir / f"{prefix}trivial")))
    trivial = spawn("trivial agent", [sys.executable, str(script), broker.url, names.prefix,
                                      str(out), str(n)], cwd=workdir,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        _stop(trivial)
    t_first, t10, t90, t_last, c10, c90 = (float(x) for x in fields[1:])
    ours = 0.8 * n / middle
    base = 0.8 * n / (t90 - t10)
    ours_cpu, base_cpu = middle_cpu / (0.8 * n) * 1e6, (c90 - c10) / (0.8 * n) * 1e6
    return {"messages": n, "worker_obs_per_s": round(ours), "trivial_agent_obs_per_s":
            round(base), "ratio_worker_to_trivial": round(ours / base, 3),
            "worker_end_to_end_obs_per_s": round(n / (samples[-1][0] - first)),
            "trivial_end_to_end_obs_per_s": round(n / (t_last - t_first)),
            "worker_cpu_ms_per_1k_obs": round(ours_cpu, 1),
            "trivial_cpu_ms_per_1k_obs": round(base_cpu, 1),
            "cpu_ratio_trivial_to_worker": round(base_cpu / ours_cpu, 3)}


def latency(broker: LocalBroker, engine: str, workdir: Path, rate: float, seconds: float,
            prefix: str) -> dict[str, Any]:
    names = TopicNames(prefix)
    ensure_topics(broker.bootstrap, names, 3)
    messages = list(cohort_messages(cohort(12, seed=7, hours=96), names))[: int(rate * seconds)]
    proc, port = _start_worker(broker.url, names.prefix, workdir, engine)
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
        _stop(proc)
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


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def run_engine(engine: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every round on one broker: throughput (worker, then the trivial agent) and latency."""
    if engine == "kafka":
        from streams.kafka.apache import KafkaCluster

        broker: LocalBroker = KafkaCluster(nodes=1, heap="1g")  # the JVM's default options
    else:
        broker = local_broker("tansu", log_path=str(workdir / "tansu.log"))
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(broker.stop)  # before start: a Ctrl-C during start stops it too
        broker.start()
        for r in range(1, args.rounds + 1):
            profile = (Path(args.profile) / f"worker-{engine}.{args.profile_format}"
                       if args.profile and r == 1 else None)
            load = os.getloadavg()  # the machine is shared: every figure with its load
            tp = throughput(broker, engine, workdir, args.patients, args.hours, f"bt{r}.",
                            profile)
            lat = latency(broker, engine, workdir, args.rate, args.seconds, f"bl{r}.")
            print(f"{engine} round {r} (load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}): "
                  f"{tp['messages']} messages, worker "
                  f"{tp['worker_obs_per_s']:,}/s, trivial Faust agent "
                  f"{tp['trivial_agent_obs_per_s']:,}/s, ratio {tp['ratio_worker_to_trivial']} "
                  f"(CPU ms per 1k obs {tp['worker_cpu_ms_per_1k_obs']} vs "
                  f"{tp['trivial_cpu_ms_per_1k_obs']}: {tp['cpu_ratio_trivial_to_worker']}); "
                  f"at {lat['achieved_rate']}/s: processing p50/p99 "
                  f"{_s(lat['processing_p50_s'])}/{_s(lat['processing_p99_s'])} s, "
                  f"{lat['alerts']:.0f} alerts p50/p99 {_s(lat['alert_p50_s'])}/"
                  f"{_s(lat['alert_p99_s'])} s", flush=True)
            rounds.append({"load_average_at_start": load, "throughput": tp, "latency": lat})
    summary = {
        key: _spread([float(r[part][key]) for r in rounds if r[part][key] is not None])
        for part, key in (("throughput", "worker_obs_per_s"),
                          ("throughput", "trivial_agent_obs_per_s"),
                          ("throughput", "ratio_worker_to_trivial"),
                          ("throughput", "worker_cpu_ms_per_1k_obs"),
                          ("throughput", "trivial_cpu_ms_per_1k_obs"),
                          ("throughput", "cpu_ratio_trivial_to_worker"),
                          ("latency", "processing_p50_s"), ("latency", "processing_p99_s"),
                          ("latency", "alert_p50_s"), ("latency", "alert_p99_s"))}
    print(f"{engine} over {len(rounds)} rounds (min / median / max): " + "; ".join(
        f"{key} {_s(v['min'])} / {_s(v['median'])} / {_s(v['max'])}"
        for key, v in summary.items()), flush=True)
    return {"rounds": rounds, "summary": summary}


def _s(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("kafka", "tansu", "both"), default="both",
                        help="broker(s) to measure on (default both: Apache Kafka, then Tansu)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per broker; min / median / max are reported (default 3)")
    parser.add_argument("--patients", type=int, default=20,
                        help="simulated patients in the backlog (default 20)")
    parser.add_argument("--hours", type=float, default=72.0,
                        help="hours of data per patient in the backlog (default 72)")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="observations/s offered in the latency phase (default 1000)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="length of the latency phase in seconds (default 30)")
    parser.add_argument("--profile", metavar="DIR",
                        help="py-spy profile of the first round's worker per broker")
    parser.add_argument("--profile-format", choices=("svg", "txt", "json"), default="svg",
                        help="flame graph, collapsed stacks or speedscope (default svg)")
    args = parser.parse_args()
    return interruptible(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """Every broker's rounds, then the results file."""
    workdir = Path(tempfile.mkdtemp(prefix="clsmon-bench-"))
    engines = ("kafka", "tansu") if args.engine == "both" else (args.engine,)
    result: dict[str, Any] = {
        "settings": {"fetch_wait_ms": 100, "grace_ms": 300, "rounds": args.rounds,
                     "patients": args.patients, "hours": args.hours,
                     "note": "the worker's defaults; Tansu with --producer-max-batch-size 1"},
        "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    for engine in engines:
        # a folder per broker: the trivial agent's count file is named after the round's prefix,
        # so the second broker's rounds read the first broker's counts from a shared folder
        (workdir / engine).mkdir()
        result[engine] = run_engine(engine, args, workdir / engine)
    write_results(ROOT / "bench" / "results" / "stream.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
