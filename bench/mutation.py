"""Mutation testing of the engine's clinical decisions with mutmut (``make mutation``).

mutmut 3 (pinned in pyproject's ``mutation`` extra, run from its own venv because it needs a
newer click than faust-streaming allows) changes the code of ``detectors/`` one small edit at a
time (``<`` to ``<=``, a number + 1, ``and`` to ``or``, a return value to None, ...) and runs the
rule tests (``[tool.mutmut]`` in pyproject.toml) against each mutant: a mutant no test notices is
a rule change the tests would let through. This script runs it, then prints and writes the score
(killed / all mutants that ran) to ``bench/results/mutation.json`` with the survivors' names.

    python bench/mutation.py [NAME_GLOB ...]   # e.g. "detectors.confounders*": a part only
    python bench/mutation.py --max-children 1 --out bench/results/mutation-part.json GLOB ...

``--max-children`` (default 2) is how many mutants run at once: 1 on a machine shared with
benchmarks; ``--out`` keeps a partial run from overwriting the whole-scope figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = Path(sys.executable).parent / "mutmut"


def main() -> int:
    parser = argparse.ArgumentParser(description="mutation score of detectors/ (mutmut)")
    parser.add_argument("globs", nargs="*", metavar="NAME_GLOB",
                        help='mutant names to run, e.g. "detectors.confounders*" (default: all)')
    parser.add_argument("--max-children", type=int, default=2,
                        help="mutants run at once (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mutation.json",
                        help="where the score is written (default bench/results/mutation.json)")
    args = parser.parse_args()
    started = time.monotonic()
    run = subprocess.run([str(MUTMUT), "run", "--max-children", str(args.max_children),
                          *args.globs], cwd=ROOT)
    if run.returncode not in (0, 1):
        print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
        return 2
    listing = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=ROOT,
                             capture_output=True, text=True)
    wanted = args.globs
    status: Counter[str] = Counter()
    survivors = []
    for line in listing.stdout.splitlines():
        name, _, outcome = line.strip().rpartition(": ")
        if not name or (wanted and not any(fnmatch(name, w) for w in wanted)):
            continue
        status[outcome] += 1
        if outcome == "survived":
            survivors.append(name)
    ran = sum(n for k, n in status.items() if k in ("killed", "survived", "timeout"))
    killed = status["killed"] + status["timeout"]
    score = killed / ran if ran else 0.0
    result = {"score": round(score, 4), "killed": killed, "ran": ran, "by_outcome": dict(status),
              "scope": wanted or ["all of [tool.mutmut] only_mutate"],
              "minutes": round((time.monotonic() - started) / 60, 1), "survivors": survivors}
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"mutation score {score:.1%} ({killed} of {ran} mutants killed; "
          f"{dict(status)}) in {result['minutes']} min -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
