"""Replay in bounded memory: ``clsmon replay`` on a 10M-row file, throughput and peak RSS.

Builds (once, cached under bench/data/) a long-format CSV of 10M rows by repeating the 1M-row
file of ``replay_bench.py`` with fresh patient ids (so state grows with the patients, as it
would), then runs the real command in a fresh process on one core and reads the child's peak
RSS (``ru_maxrss``). It also checks that the chunked path gives the alerts of the in-memory
path on the 1M-row file.

    python bench/chunked_replay_bench.py [--rows 10000000] [--out bench/results/chunked.json]

Targets (issue 12): >= 150,000 observations/s and peak RSS < 600 MB on 10M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchio import write_results  # noqa: E402  (bench/ is the script's folder)
from replay_bench import build_file, one_core_prefix

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_OBS_PER_S = 150_000
TARGET_RSS_MB = 600


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


def run_cli(path: Path, out: Path) -> tuple[float, float]:
    """(seconds, peak RSS of the child in MB)."""
    cmd = one_core_prefix() + [sys.executable, "-m", "streams.cli", "replay", str(path),
                               "--out", str(out), "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak_kb, before) / 1024


def same_alerts_as_in_memory(path: Path) -> bool:
    from streams.offline import replay as rp

    whole = rp.replay_frame(rp.read_observations(path), keep_canonical=False)
    chunked = rp.replay_chunks(rp.iter_observations(path, chunk_rows=100_000))
    return [(a.alert_id, a.raised_at_ms) for a in whole.alerts] == [
        (a.alert_id, a.raised_at_ms) for a in chunked.alerts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "chunked.json"))
    parser.add_argument("--data", default=str(ROOT / "bench" / "data"))
    args = parser.parse_args()
    path = build_big(args.rows, Path(args.data))
    same = same_alerts_as_in_memory(Path(args.data) / "replay_1000000.csv")
    print(f"chunked alerts == in-memory alerts (1M rows): {same}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        seconds, rss_mb = run_cli(path, Path(tmp) / "alerts.jsonl")
        alerts = sum(1 for _ in (Path(tmp) / "alerts.jsonl").open())
    rate = args.rows / seconds
    result = {
        "rows": args.rows, "file_mb": round(path.stat().st_size / 2**20, 1),
        "seconds": round(seconds, 2), "obs_per_s": round(rate), "peak_rss_mb": round(rss_mb),
        "alerts": alerts, "same_alerts_as_in_memory_1m": same,
        "targets": {"obs_per_s": TARGET_OBS_PER_S, "peak_rss_mb": TARGET_RSS_MB},
        "met": {"throughput": rate >= TARGET_OBS_PER_S, "memory": rss_mb < TARGET_RSS_MB,
                "same_alerts": same},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
    }
    print(f"clsmon replay, {args.rows:,} rows ({result['file_mb']} MB), 1 core: "
          f"{seconds:.1f} s = {rate:,.0f} obs/s (target {TARGET_OBS_PER_S:,}), peak RSS "
          f"{rss_mb:,.0f} MB (target < {TARGET_RSS_MB}), {alerts} alerts")
    write_results(args.out, result)
    print(json.dumps(result["met"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
