"""``clsmon import mimic3 DIR --out OUTDIR``: the MIMIC-III Clinical Database (PhysioNet layout,
the demo included) into the replay's three files.

- ``observations.csv``: the replay's long format plus ``available_at`` (when the value could
  first be seen: chart STORETIME; for a lab, its draw time plus the delay of its ICU-chart copy),
  ``available_basis``, ``encounter_id`` (HADM_ID), ``censored`` and ``flag``. Rows are in arrival
  order (``available_at``, then ``observed_at``), which is how the replay reads a file. Labs come
  from LABEVENTS only; their chart copies only date the result's availability.
- ``patients.csv``: one row per hospital admission (``patient_id`` = SUBJECT_ID) with ``admit``
  and ``discharge`` times, so the replay starts a new stay at each admission; sex, admission
  weight, birth year (empty, with ``age_over_89 = 1``, where MIMIC shifted it before 1900).
- ``interventions.csv``: red cells, plasma, platelets, albumin, crystalloids (``mode`` bolus,
  infusion or unknown), vasopressors and inotropes (their own kind), diuretics.

Which item means what is data, not code: ``streams/offline/data/mimic3_items.csv``.

**Times.** MIMIC-III times are local wall-clock times shifted per patient into 2100-2210; no
zone is known. They are written unchanged with a ``Z`` (read as UTC): intervals within a patient
are exact, no real instant is implied.

Left out, each counted with its reason in the summary: continuous bladder irrigation (227488 in,
227489 urine + irrigant: no per-row subtraction is trustworthy), operating-room and PACU urine
totals (the period is unknown), alarm limits, carried-forward weights, fluids with no kind yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streams.offline.mimic3.mapping import Items, Mimic3Error, default_items
from streams.offline.mimic3.stays import run, summary_lines

__all__ = ["Mimic3Error", "run", "run_import"]


def run_import(directory: str, out: str, items: str | None = None, quiet: bool = False) -> int:
    """The command: import, print the summary; returns the exit code (0)."""
    items_path = Path(items) if items else default_items()
    progress = not quiet and sys.stderr.isatty()
    tally = run(Path(directory), Path(out), items_path, progress)
    if not quiet:
        for line in summary_lines(tally, Items.load(items_path)):
            print(line)
        print(f"written to {out}/: observations.csv, patients.csv, interventions.csv")
    return 0
