"""Mutation testing of the engine's clinical decisions with mutmut (``make mutation``).

mutmut 3 (pinned in pyproject's ``mutation`` extra, run from its own venv because it needs a
newer click than faust-streaming allows) changes the code of ``detectors/`` one small edit at a
time (``<`` to ``<=``, a number + 1, ``and`` to ``or``, a return value to None, ...) and runs the
rule tests (``[tool.mutmut]`` in pyproject.toml) against each mutant: a mutant no test notices is
a rule change the tests would let through. This script runs it, then prints and writes the score
(killed / all mutants that ran) to ``bench/results/mutation.json`` with the survivors' names.

    python bench/mutation.py [NAME_GLOB ...]   # e.g. "detectors.confounders*": a part only
"""

from __future__ import annotations

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
    started = time.monotonic()
    run = subprocess.run([str(MUTMUT), "run", "--max-children", "2", *sys.argv[1:]], cwd=ROOT)
    if run.returncode not in (0, 1):
        print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
        return 2
    listing = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=ROOT,
                             capture_output=True, text=True)
    wanted = sys.argv[1:]
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
    out = ROOT / "bench" / "results" / "mutation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"mutation score {score:.1%} ({killed} of {ran} mutants killed; "
          f"{dict(status)}) in {result['minutes']} min -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
