"""Load benchmark: N beds at one vital set per minute plus labs, paced on the wall clock, with
TWO workers sharing the consumer group (embedded Tansu broker).

Per bed count (default 500, 1000, 2000): every simulated minute each bed sends sbp, map and
heart_rate; every 6 simulated hours a lab panel (hematocrit, albumin, leukocytes; each bed's
first panel at a random offset). ``--time-scale`` simulated minutes per real minute (1 = real
time: 2,000 beds are ~100 messages/s; 10 = ten times that). Reported per bed count:
- offered and achieved throughput (messages/s processed by the two workers together),
- processing latency p50/p99 (Kafka timestamp -> processed, both workers' histograms merged),
- resident memory per worker at the end, state size per patient (the table's JSON, histogram).

``--soak SECONDS``: one bed count (the first of ``--beds``), published for that long; each
worker's RSS is sampled every 10 s and the slope after the first third (warm-up) is reported in
MB/min (flat memory: near 0).

Prints a table and writes ``bench/results/load.json`` (and, for a soak, ``soak-rss.png`` beside it).

Usage: python bench/load_bench.py [--beds 500 1000 2000] [--minutes 30] [--time-scale 1]
       python bench/load_bench.py --beds 1000 --time-scale 10 --soak 600
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from stream_bench import _metrics, _quantile, _total  # noqa: E402

from detectors.observation import format_time  # noqa: E402
from streams import codec  # noqa: E402
from streams.kafka.local import free_port  # noqa: E402
from streams.kafka.tansu import EmbeddedBroker  # noqa: E402
from streams.kafka.topics import TopicNames, ensure_topics  # noqa: E402
from streams.offline.publish import Publisher  # noqa: E402

START_MS = 1_790_000_000_000
MIN_MS = 60_000
LAB_EVERY_MIN = 360
LATENCY = "clsmon_observation_processing_latency_seconds"
STATE = "clsmon_state_size_bytes"


def _start_worker(url: str, prefix: str, workdir: Path, name: str
                  ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", url, "--web-port",
           str(port), "--web-host", "127.0.0.1", "--topic-prefix", prefix,
           "--data-dir", str(workdir / f"{prefix}{name}"), "--fetch-wait-ms", "10"]
    log = open(workdir / f"{prefix}{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, port


def _wait_ready(ports: list[int], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("workers not ready") from None
                time.sleep(0.2)


class Beds:
    """The messages of one simulated minute for every bed (plain, cheap, deterministic)."""

    def __init__(self, beds: int, names: TopicNames, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.names = names
        self.ids = [f"bed-{i:05d}" for i in range(beds)]
        self.lab_offset = {pid: rng.randrange(LAB_EVERY_MIN) for pid in self.ids}
        self.base = {pid: (rng.uniform(105, 135), rng.uniform(70, 95), rng.uniform(60, 100))
                     for pid in self.ids}
        self.rng = rng

    def minute(self, m: int) -> list[tuple[str, str, bytes]]:
        at = format_time(START_MS + m * MIN_MS)
        out = []
        g = self.rng.gauss
        for pid in self.ids:
            sbp, mapp, hr = self.base[pid]
            for kind, value, unit in (("sbp", sbp + g(0, 4), "mm[Hg]"),
                                      ("map", mapp + g(0, 3), "mm[Hg]"),
                                      ("heart_rate", hr + g(0, 3), "/min")):
                out.append((self.names.vitals, pid, codec.encode(
                    {"patient_id": pid, "kind": kind, "value": round(value, 1), "unit": unit,
                     "observed_at": at, "source": "load"})))
            if (m - self.lab_offset[pid]) % LAB_EVERY_MIN == 0:
                for kind, value, unit in (("hematocrit", 40 + g(0, 1), "%"),
                                          ("albumin", 3.8 + g(0, 0.1), "g/dL"),
                                          ("leukocytes", 8 + g(0, 0.5), "10*9/L")):
                    out.append((self.names.labs, pid, codec.encode(
                        {"patient_id": pid, "kind": kind, "value": round(value, 2),
                         "unit": unit, "observed_at": at, "source": "load"})))
        return out


def _rss(m: dict[Any, float]) -> float:
    return _total(m, "process_resident_memory_bytes")


def _merged(ms: list[dict[Any, float]]) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for m in ms:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


def run(broker: EmbeddedBroker, workdir: Path, beds: int, minutes: float, scale: float,
        soak_s: float | None = None) -> dict[str, Any]:
    names = TopicNames(f"ld{beds}{'s' if soak_s else ''}.")
    ensure_topics(broker.bootstrap, names, 3)
    workers = [_start_worker(broker.url, names.prefix, workdir, n) for n in ("a", "b")]
    ports = [p for _, p in workers]
    sim = Beds(beds, names)
    publisher = Publisher(broker.bootstrap)
    samples: list[tuple[float, list[float]]] = []
    try:
        _wait_ready(ports)
        time.sleep(2)  # the second join's rebalance
        sim_minutes = int(soak_s * scale / 60) if soak_s else int(minutes)
        real_per_minute = 60.0 / scale
        sent = 0
        start = time.monotonic()
        next_sample = start
        for m in range(sim_minutes):
            due = start + m * real_per_minute
            # spread a minute's messages over its real duration, in 20 slices
            msgs = sim.minute(m)
            slices = 20
            for s in range(slices):
                part = msgs[s * len(msgs) // slices:(s + 1) * len(msgs) // slices]
                t_slice = due + s * real_per_minute / slices
                delay = t_slice - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                for topic, pid, value in part:
                    publisher.send(topic, pid, value, patient_id=pid)
                sent += len(part)
                publisher.flush()
                if soak_s and time.monotonic() >= next_sample:
                    samples.append((time.monotonic() - start,
                                    [_rss(_metrics(p)) for p in ports]))
                    next_sample += 10
        publish_s = time.monotonic() - start
        publisher.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = sum(_total(_metrics(p), "clsmon_observations_total") for p in ports)
            if done >= sent:
                break
            time.sleep(0.2)
        drained_s = time.monotonic() - start
        per = [_metrics(p) for p in ports]
    finally:
        for proc, _ in workers:
            proc.terminate()
        for proc, _ in workers:
            proc.wait(timeout=30)
    m = _merged(per)
    processed = _total(m, "clsmon_observations_total")
    state_n = _total(m, f"{STATE}_count")
    result: dict[str, Any] = {
        "beds": beds, "simulated_minutes": sim_minutes, "time_scale": scale,
        "messages": sent, "processed": processed,
        "offered_msgs_per_s": round(sent / publish_s, 1),
        "achieved_msgs_per_s": round(processed / drained_s, 1),
        "backlog_drain_s_after_publishing": round(drained_s - publish_s, 2),
        "processing_p50_s": _round(_quantile(m, LATENCY, 0.5)),
        "processing_p99_s": _round(_quantile(m, LATENCY, 0.99)),
        "rss_mb_per_worker": [round(_rss(x) / 2**20, 1) for x in per],
        "processed_per_worker": [_total(x, "clsmon_observations_total") for x in per],
        "state_bytes_mean": round(_total(m, f"{STATE}_sum") / state_n) if state_n else None,
        "state_bytes_p99": _quantile(m, STATE, 0.99),
        "dead_letters": _total(m, "clsmon_dead_letters_total"),
        "partition_rereads": _total(m, "clsmon_partition_rereads_total"),
    }
    if soak_s:
        result["rss_samples"] = [{"t_s": round(t, 1), "rss_mb": [round(r / 2**20, 1)
                                                                 for r in rs]}
                                 for t, rs in samples]
        result["rss_slope_mb_per_min_after_warmup"] = _slopes(samples)
    return result


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def plot_soak(soak: dict[str, Any], path: Path) -> None:
    """Each worker's RSS over the soak: flat memory is easier seen than read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = soak["rss_samples"]
    minutes = [x["t_s"] / 60 for x in samples]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for w in range(len(samples[0]["rss_mb"])):
        ax.plot(minutes, [x["rss_mb"][w] for x in samples],
                label=f"worker {'ab'[w]} ({soak['rss_slope_mb_per_min_after_warmup'][w]} MB/min "
                      "after warm-up)")
    ax.axvline(minutes[len(minutes) // 3], color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory, MB")
    ax.set_ylim(0, max(max(x["rss_mb"]) for x in samples) * 1.2)
    ax.set_title(f"Soak: {soak['beds']:,} beds, {soak['messages']:,} messages, "
                 f"time scale x{soak['time_scale']:g}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _slopes(samples: list[tuple[float, list[float]]]) -> list[float | None]:
    """Least-squares RSS slope per worker (MB/min) over the samples after the first third."""
    tail = samples[len(samples) // 3:]
    if len(tail) < 2:
        return [None, None]
    out: list[float | None] = []
    for w in range(len(tail[0][1])):
        xs = [t / 60 for t, _ in tail]
        ys = [rs[w] / 2**20 for _, rs in tail]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs)
        out.append(round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den, 3)
                   if den else None)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--minutes", type=float, default=30.0, help="simulated minutes")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="simulated minutes per real minute (1 = real time)")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="soak run of this many real seconds (600 = 10 minutes)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clsmon-load-"))
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result.update({"broker": "tansu (embedded)", "workers": 2, "partitions": 3,
                   "machine": f"{os.cpu_count()} cores"})
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        if args.soak:
            r = run(broker, workdir, args.beds[0], 0, args.time_scale, soak_s=args.soak)
            result["soak"] = {**r, "soak_s": args.soak}
            plot_soak(result["soak"], out.with_name("soak-rss.png"))
            print(f"soak {args.soak:.0f} s, {r['beds']} beds x{args.time_scale}: RSS "
                  f"{r['rss_mb_per_worker']} MB, slope after warm-up "
                  f"{r['rss_slope_mb_per_min_after_warmup']} MB/min", flush=True)
        else:
            rows = []
            print(f"{'beds':>6} {'msgs':>8} {'offered/s':>10} {'achieved/s':>10} "
                  f"{'p50 s':>7} {'p99 s':>7} {'RSS MB/worker':>15} {'state B':>8}")
            for beds in args.beds:
                r = run(broker, workdir, beds, args.minutes, args.time_scale)
                rows.append(r)
                print(f"{beds:>6} {r['messages']:>8} {r['offered_msgs_per_s']:>10} "
                      f"{r['achieved_msgs_per_s']:>10} {r['processing_p50_s']!s:>7} "
                      f"{r['processing_p99_s']!s:>7} {r['rss_mb_per_worker']!s:>15} "
                      f"{r['state_bytes_mean']!s:>8}", flush=True)
            result["load"] = {"minutes": args.minutes, "time_scale": args.time_scale,
                              "runs": rows}
    write_results(out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
