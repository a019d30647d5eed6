"""Replay throughput and per-patient state size: the figures issue 2 asks for.

Builds (once, cached under bench/data/) a long-format CSV of simulated ICU patients with one vital
set per minute (SBP, MAP, heart rate) plus labs, weights and hourly urine, then runs the real
command ``clsmon replay FILE --out ALERTS`` in a fresh process, several times, pinned to one core
where the OS allows it. Reported: observations/s end to end (process start, CSV parsing,
validation, detection, writing alerts), best and median of the runs; the engine alone (step per
observation, no parsing); and the JSON size of the per-patient state after a simulated week.

    python bench/replay_bench.py [--rows 1000000] [--runs 3] [--out bench/results/replay.json]

Targets (issue 2): >= 150,000 observations/s end to end on one core; state < 4 KB per patient.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchio import write_results  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_OBS_PER_S = 150_000
TARGET_STATE_BYTES = 4096


def build_file(rows: int, path: Path) -> Path:
    """A cohort with 1-minute vitals, cut to ``rows`` rows (arrival order kept)."""
    import pandas as pd

    from streams.offline.simulator import cohort

    per_patient_week = 7 * 24 * 60 * 3 + 1100  # vitals + labs/weights/urine, roughly
    n_patients = max(1, rows // per_patient_week + 1)
    print(f"building {rows:,} rows from {n_patients} simulated patients -> {path}", flush=True)
    patients = cohort(n_patients, seed=11, hours=168, vitals_every_min=1)
    frame = pd.DataFrame([o for p in patients for o in p.observations],
                         columns=["patient_id", "observed_at", "kind", "value", "unit",
                                  "source", "period_min"]).iloc[:rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    pd.DataFrame([p.context() for p in patients])[
        ["patient_id", "sex", "weight_kg", "birth_year"]].to_csv(
        path.with_suffix(".patients.csv"), index=False)
    return path


def one_core_prefix() -> list[str]:
    """``taskset -c 0`` when available: the target is per core."""
    if sys.platform.startswith("linux") and subprocess.run(
            ["which", "taskset"], capture_output=True).returncode == 0:
        return ["taskset", "-c", "0"]
    return []


def time_cli(path: Path, runs: int) -> list[float]:
    exe = [sys.executable, "-m", "streams.cli", "replay", str(path), "--patients",
           str(path.with_suffix(".patients.csv")), "--quiet"]
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            cmd = one_core_prefix() + exe + ["--out", f"{tmp}/alerts.jsonl"]
            started = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT)
            seconds.append(time.perf_counter() - started)
            print(f"  run {i + 1}/{runs}: {seconds[-1]:.2f} s", flush=True)
    return seconds


def engine_only(path: Path) -> tuple[float, list[int], int]:
    """Observations/s of normalise-free stepping, and the state sizes at the end."""
    from detectors.phases import step
    from streams.offline import replay as rp

    df = rp.read_observations(path)
    norm, ok = rp.validate(df)
    from detectors.observation import Observation

    observations = [Observation(p, k, v, t, "", None if per != per else per, "")
                    for p, k, v, t, per, good in zip(norm["patient_id"], norm["kind"],
                                                     norm["value"], norm["t"], norm["period"],
                                                     ok, strict=True) if good]
    states: dict = {}
    started = time.perf_counter()
    for o in observations:
        states[o.patient_id] = step(states.get(o.patient_id), o).state
    elapsed = time.perf_counter() - started
    sizes = sorted(len(s.to_json()) for s in states.values())
    return len(observations) / elapsed, sizes, len(observations)


def engine_used(mode: str) -> str:
    """The engine ``clsmon`` runs with ``CLSMON_ENGINE=mode`` (``streams.ops.engine.label``);
    raises SystemExit with clsmon's line when it refuses the mode."""
    done = subprocess.run([sys.executable, "-c", "from streams.ops.engine import select; "
                           "print(select())"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CLSMON_ENGINE": mode})
    if done.returncode:
        raise SystemExit(done.stderr.strip().splitlines()[-1])
    if done.stderr:
        print(done.stderr.strip(), flush=True)  # e.g. a stale build, not used
    return done.stdout.strip()


def engine_only_in(mode: str, path: Path) -> tuple[float, list[int], int]:
    """``engine_only`` in a child whose engine ``clsmon`` chose with ``CLSMON_ENGINE=mode``
    (``streams.ops.engine.select``, before anything imports ``detectors``)."""
    code = ("import json, sys; from streams.ops.engine import select; select(); "
            f"sys.path.append({str(ROOT / 'bench')!r}); from replay_bench import engine_only; "
            f"print(json.dumps(engine_only(__import__('pathlib').Path({str(path)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "CLSMON_ENGINE": mode}).stdout
    rate, sizes, n_obs = json.loads(out.splitlines()[-1])
    return float(rate), sizes, int(n_obs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the file")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of clsmon replay")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "replay.json"))
    parser.add_argument("--data", default=str(ROOT / "bench" / "data"),
                        help="where the generated file is cached")
    args = parser.parse_args()

    path = Path(args.data) / f"replay_{args.rows}.csv"
    if not path.exists():
        build_file(args.rows, path)
    engine = engine_used("auto")
    print(f"clsmon replay {path.name}: {args.runs} runs on one core, engine: {engine}",
          flush=True)
    seconds = time_cli(path, args.runs)
    rate_best = args.rows / min(seconds)
    rate_median = args.rows / statistics.median(seconds)
    engine_rate, sizes, n_obs = engine_only_in("auto", path)
    result = {
        "rows": args.rows, "runs": args.runs, "engine": engine,
        "seconds": [round(s, 3) for s in seconds],
        "end_to_end_obs_per_s_best": round(rate_best),
        "end_to_end_obs_per_s_median": round(rate_median),
        "engine_only_obs_per_s": round(engine_rate),
        "state_bytes_max": sizes[-1], "state_bytes_median": sizes[len(sizes) // 2],
        "patients": len(sizes),
        "targets": {"end_to_end_obs_per_s": TARGET_OBS_PER_S,
                    "state_bytes": TARGET_STATE_BYTES},
        "met": {"throughput": rate_best >= TARGET_OBS_PER_S,
                "state_size": sizes[-1] < TARGET_STATE_BYTES},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
    }
    print(f"\nend to end (clsmon replay, {args.rows:,} rows, 1 core): "
          f"best {rate_best:,.0f} obs/s, median {rate_median:,.0f} obs/s "
          f"(target {TARGET_OBS_PER_S:,})")
    print(f"engine only (step, {n_obs:,} observations): {engine_rate:,.0f} obs/s")
    print(f"state per patient after a week of 1-minute vitals: max {sizes[-1]} B, "
          f"median {sizes[len(sizes) // 2]} B over {len(sizes)} patients "
          f"(target < {TARGET_STATE_BYTES} B)")
    write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
