"""Replay in bounded memory: ``clsmon replay`` on a 10M-row file, throughput and peak RSS.

Builds (once, cached under bench/data/) a long-format CSV of 10M rows by repeating the 1M-row
file of ``replay_bench.py`` with fresh patient ids (so state grows with the patients, as it
would), then runs the real command ``--runs`` times, each in a fresh process on one core, and
reads each child's peak RSS (``ru_maxrss``, from ``wait4``). Reported: observations/s end to
end (min and median of the runs), the peak RSS of every run, the machine's load average at the
start and the end (the 2 cores are shared: a load above 2 slows every figure), and the engine
alone (``step`` per observation, no reading) on the 1M-row file, so the share of reading is
visible. Checks, not timed: the chunked path gives the alerts of the in-memory path on the 1M-row
file, and peak RSS on the 1M-row file against the 10M-row one (memory must not grow with the
file).

The command runs as a user gets it: ``--engine auto`` (the default) is ``clsmon``'s own
choice, the engine compiled with mypyc by ``make install`` when it is up to date with the
sources (``streams/ops/engine.py``), else the interpreted one; the engine used is printed and
written. ``--engine interpreted`` measures the interpreted engine for comparison, ``--engine
compiled`` insists on the compiled one. When the compiled engine runs, its alerts on the 1M-row
file are compared byte for byte with the interpreted engine's.

    python bench/chunked_replay_bench.py [--rows 10000000] [--runs 3]
                                         [--engine auto|compiled|interpreted]
                                         [--out bench/results/chunked.json]

Targets (issue 12): >= 150,000 observations/s and peak RSS < 600 MB on 10M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchio import write_results  # noqa: E402  (bench/ is the script's folder)
from replay_bench import build_file, engine_only_in, engine_used, one_core_prefix

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_OBS_PER_S = 150_000
TARGET_RSS_MB = 600
#: peak RSS on 10x the rows may exceed the 1M-row run's by this much before it counts as growth
#: ([D] the patients' states grow with the 10x patients: ~3 KB each, well under 1 MB in all)
RSS_GROWTH_TOLERANCE_MB = 50


def build_big(rows: int, data: Path) -> Path:
    base = data / "replay_1000000.csv"
    if not base.exists():
        build_file(1_000_000, base)
    path = data / f"replay_{rows}.csv"
    if path.exists():
        return path
    print(f"building {rows:,} rows -> {path}", flush=True)
    lines = base.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    with path.open("w") as f:
        f.write(header)
        written, copy = 0, 0
        while written < rows:
            take = body[:rows - written]
            f.writelines(f"c{copy}-{line}" for line in take)
            written += len(take)
            copy += 1
    return path


def run_cli(path: Path, out: Path, mode: str) -> tuple[float, float, float]:
    """(seconds, peak RSS of this child alone in MB: ``wait4``'s rusage, not the maximum over
    every child so far, and its CPU seconds: on a shared machine wall time also counts the
    time other processes held the core). ``mode``: ``CLSMON_ENGINE`` of the child."""
    cmd = one_core_prefix() + [sys.executable, "-m", "streams.cli", "replay", str(path),
                               "--out", str(out), "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "CLSMON_ENGINE": mode})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"clsmon replay failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # kB on Linux


def same_alerts_as_in_memory(path: Path) -> bool:
    from streams.offline import replay as rp

    whole = rp.replay_frame(rp.read_observations(path), keep_canonical=False)
    chunked = rp.replay_chunks(rp.iter_observations(path, chunk_rows=100_000))
    return [(a.alert_id, a.raised_at_ms) for a in whole.alerts] == [
        (a.alert_id, a.raised_at_ms) for a in chunked.alerts]


def summarise(args: argparse.Namespace, path: Path, seconds: list[float], rss: list[float],
              cpu: list[float], rss_small: float, launcher_mb: float, alerts: int,
              load_start: tuple[float, float, float], load_end: tuple[float, float, float],
              same: bool | None, engine_rate: float | None, engine: str,
              same_as_interpreted: bool | None = None) -> dict[str, Any]:
    """The figures of the runs so far (``same``/``engine_rate`` None: not measured yet;
    ``engine``: the engine's label; ``same_as_interpreted``: the compiled engine's alerts, None
    when not compiled)."""
    best, median = args.rows / min(seconds), args.rows / statistics.median(seconds)
    peak = max(rss)
    grows = peak > rss_small + RSS_GROWTH_TOLERANCE_MB
    return {
        "rows": args.rows, "file_mb": round(path.stat().st_size / 2**20, 1), "runs": len(seconds),
        "runs_asked": args.runs,
        "seconds": [round(s, 2) for s in seconds], "cpu_seconds": [round(c, 2) for c in cpu],
        "obs_per_cpu_s_median": round(args.rows / statistics.median(cpu)),
        "obs_per_s_best": round(best), "obs_per_s_median": round(median),
        "obs_per_s_min": round(args.rows / max(seconds)),
        "peak_rss_mb": [round(r) for r in rss], "peak_rss_mb_1m_rows": round(rss_small),
        "rss_grows_with_file": grows, "launcher_rss_mb": round(launcher_mb),
        "engine_only_obs_per_s_1m": None if engine_rate is None else round(engine_rate),
        "alerts": alerts, "same_alerts_as_in_memory_1m": same,
        "engine": engine, "engine_asked": args.engine,
        "same_alerts_as_interpreted_1m": same_as_interpreted,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in load_end],
        "targets": {"obs_per_s": TARGET_OBS_PER_S, "peak_rss_mb": TARGET_RSS_MB},
        "met": {"throughput": median >= TARGET_OBS_PER_S, "memory": peak < TARGET_RSS_MB,
                "same_alerts": same if same_as_interpreted is None else (
                    same and same_as_interpreted),
                "memory_bounded": not grows},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000,
                        help="rows of the generated CSV (default 10,000,000; ~546 MB)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of clsmon replay")
    parser.add_argument("--engine", choices=("auto", "compiled", "interpreted"), default="auto",
                        help="CLSMON_ENGINE of the runs (default auto: clsmon as shipped, the "
                             "compiled engine when its build is up to date)")
    parser.add_argument("--out", default=None,
                        help="where the figures are written (default bench/results/chunked.json; "
                             "with --engine interpreted bench/results/chunked-interpreted.json)")
    parser.add_argument("--data", default=str(ROOT / "bench" / "data"),
                        help="folder of the generated input, built once (default bench/data)")
    args = parser.parse_args()
    if args.out is None:
        name = "chunked-interpreted.json" if args.engine == "interpreted" else "chunked.json"
        args.out = str(ROOT / "bench" / "results" / name)
    load_start = os.getloadavg()
    print(f"load average at start (1/5/15 min): {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f} on {os.cpu_count()} cores", flush=True)
    path = build_big(args.rows, Path(args.data))
    small = Path(args.data) / "replay_1000000.csv"
    # Every replay runs before this process does any replaying itself: a child's ru_maxrss
    # starts from its parent's RSS at the fork, so a big parent would set a floor to it
    launcher_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine = engine_used(args.engine)
    compiled = engine != "interpreted"
    print(f"engine: {engine}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        _, rss_small, _ = run_cli(small, Path(tmp) / "alerts_1m.jsonl", args.engine)
        print(f"peak RSS on the 1M-row file: {rss_small:,.0f} MB", flush=True)
        same_as_interpreted = None
        if compiled:
            run_cli(small, Path(tmp) / "alerts_1m_interpreted.jsonl", "interpreted")
            same_as_interpreted = (Path(tmp) / "alerts_1m.jsonl").read_bytes() == (
                Path(tmp) / "alerts_1m_interpreted.jsonl").read_bytes()
            print(f"compiled alerts == interpreted alerts, byte for byte (1M rows): "
                  f"{same_as_interpreted}", flush=True)
        seconds, rss, cpu = [], [], []
        for i in range(args.runs):
            s, r, c = run_cli(path, Path(tmp) / "alerts.jsonl", args.engine)
            seconds.append(s)
            rss.append(r)
            cpu.append(c)
            print(f"  run {i + 1}/{args.runs}: {s:.1f} s = {args.rows / s:,.0f} obs/s "
                  f"({c:.1f} s of CPU = {args.rows / c:,.0f} obs per CPU second), peak RSS "
                  f"{r:,.0f} MB, load average {os.getloadavg()[0]:.1f}", flush=True)
            # what is measured so far, in case a busy machine outlasts the patience of its user
            alerts = sum(1 for _ in (Path(tmp) / "alerts.jsonl").open())
            write_results(args.out, summarise(args, path, seconds, rss, cpu, rss_small,
                                              launcher_mb, alerts, load_start,
                                              os.getloadavg(), None, None, engine,
                                              same_as_interpreted))
        alerts = sum(1 for _ in (Path(tmp) / "alerts.jsonl").open())
        load_end = os.getloadavg()
        same = same_alerts_as_in_memory(small)
        print(f"chunked alerts == in-memory alerts (1M rows): {same}", flush=True)
        engine_rate = engine_only_in(args.engine, small)[0]
    result = summarise(args, path, seconds, rss, cpu, rss_small, launcher_mb, alerts,
                       load_start, load_end, same, engine_rate, engine, same_as_interpreted)
    best, median = args.rows / min(seconds), args.rows / statistics.median(seconds)
    print(f"clsmon replay (engine: {engine}), {args.rows:,} rows ({result['file_mb']} MB), 1 core, "
          f"{args.runs} runs: min {args.rows / max(seconds):,.0f} / median {median:,.0f} / best "
          f"{best:,.0f} obs/s (target {TARGET_OBS_PER_S:,}); peak RSS {max(rss):,.0f} MB (target "
          f"< {TARGET_RSS_MB}; 1M rows: {rss_small:,.0f} MB); {alerts} alerts; engine alone "
          f"{engine_rate:,.0f} obs/s; load average {load_start[0]:.1f} -> {load_end[0]:.1f}")
    write_results(args.out, result)
    print(json.dumps(result["met"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
