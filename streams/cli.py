"""``clsmon`` command line: one entry point, one sub-command per job.

Every option has an environment variable (shown in ``--help``) so the same settings work in a
shell, a Makefile, a container and docker-compose. Errors a user can fix are reported in one line
on stderr with exit code 2; nothing prints a traceback for a bad file or flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from detectors.config import ThresholdsError, load_thresholds

DEFAULT_BROKER = "kafka://127.0.0.1:9092"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thresholds", metavar="FILE", default=_env("CLSMON_THRESHOLDS"),
                   help="TOML file overriding clinical thresholds (env CLSMON_THRESHOLDS; "
                        "default: the values of clinical-criteria.md)")


def _cmd_replay(args: argparse.Namespace) -> int:
    from streams import replay as rp

    th = load_thresholds(args.thresholds)
    df = rp.read_observations(args.observations)
    contexts = rp.read_contexts(args.patients) if args.patients else None
    progress = None if args.quiet else rp.Progress()
    result = rp.replay_frame(df, contexts, th, sort=args.sort, progress=progress)
    if args.out:
        rp.write_alerts(result.alerts, args.out)
    if args.rejects:
        rp.write_rejects(result.rejects, args.rejects)
    if not args.quiet:
        for line in rp.summary_lines(result):
            print(line)
        if args.out:
            print(f"alerts written to {args.out}")
        if args.rejects:
            print(f"rejected rows written to {args.rejects}")
    return 0


def _cmd_simulate_to_file(args: argparse.Namespace) -> int:
    import pandas as pd

    from streams.simulator import cohort

    patients = cohort(args.patients, seed=args.seed, hours=args.hours,
                      vitals_every_min=args.vitals_every_min)
    out = Path(args.to)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [o for p in patients for o in p.observations]
    frame = pd.DataFrame(rows, columns=["patient_id", "observed_at", "kind", "value", "unit",
                                        "source", "period_min"])
    if out.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)
    stem = out.with_suffix("")
    contexts = pd.DataFrame([p.context() for p in patients])[
        ["patient_id", "sex", "weight_kg", "birth_year"]]
    contexts.to_csv(f"{stem}.patients.csv", index=False)
    truth = pd.DataFrame([t | {"profile": p.profile} for p in patients for t in p.truth],
                         columns=["patient_id", "phase", "start", "end", "profile"])
    truth.to_csv(f"{stem}.truth.csv", index=False)
    print(f"{len(patients)} patients, {len(frame)} observations -> {out}; "
          f"context -> {stem}.patients.csv; ground truth -> {stem}.truth.csv")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clsmon",
        description="Watch ICU patients for capillary leak syndrome phases "
                    "(prodromal, leak, recovery). Alerts are advisory.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("replay", help="run recorded observations (CSV/Parquet) through the "
                                      "detectors and write alerts",
                       description="Replay long-format observations (patient_id, observed_at, "
                                   "kind, value, unit [, source, period_min, id]) in file "
                                   "(arrival) order through the detectors.")
    p.add_argument("observations", help="CSV or Parquet file")
    p.add_argument("--patients", metavar="CONTEXT.csv",
                   help="patient context: patient_id, sex, weight_kg, birth_year")
    p.add_argument("--out", metavar="ALERTS", help="alerts as JSON lines (.jsonl) or CSV (.csv)")
    p.add_argument("--rejects", metavar="FILE", help="rejected rows with reasons (.jsonl/.csv)")
    p.add_argument("--sort", action="store_true", help="sort by event time first (stable)")
    p.add_argument("--quiet", action="store_true", help="no summary, no progress")
    _add_thresholds(p)
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("simulate", help="synthetic patients (CLS episodes and confounders)",
                       description="Generate a synthetic cohort. With --to, write it to a file "
                                   "(plus .patients.csv and .truth.csv beside it).")
    p.add_argument("--patients", type=int, default=int(_env("CLSMON_SIM_PATIENTS", "20")),
                   help="cohort size (env CLSMON_SIM_PATIENTS, default 20)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--hours", type=float, default=168.0, help="hours per patient (default 168)")
    p.add_argument("--vitals-every-min", type=float, default=5.0,
                   help="minutes between vital sets (default 5)")
    p.add_argument("--to", metavar="FILE", required=True,
                   help="write observations to this CSV/Parquet file")
    p.set_defaults(func=_cmd_simulate_to_file)
    return parser


_EXPECTED_ERRORS: tuple[type[Exception], ...] = (ThresholdsError, FileNotFoundError,
                                                 PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    from streams.replay import ReplayError

    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (*_EXPECTED_ERRORS, ReplayError) as exc:
        print(f"clsmon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
