"""Scoring on real stays: patient-days counted per stay, and the alerts set against a
clinician's review of earlier alerts (``mimic3-demo-review.csv``).

A review file has one row per alert episode a clinician read against the raw record:
``subject_id`` (or ``patient_id``), ``phase``, ``around`` (event time), ``verdict`` (``true``: an
episode the product must keep finding; ``false``: a confounder explains it) and ``reason``.

Definitions (stated in the report):
- a ``true`` episode is *found* when an alert of its phase (warning and above) is raised within
  ``FOUND_WINDOW_H`` (6 h) of ``around``;
- a ``false`` episode is *still alerting* when an alert of its phase is raised within
  ``STILL_ALERTING_WINDOW_H`` (12 h) of ``around``;
- *stay-days* are the sum over hospital admissions of discharge minus admission (from the
  context file's ``admit``/``discharge``), not first-to-last observation across years; a patient
  without stays counts from its first to its last accepted observation (at least one hour).
  Patients without an accepted observation are not counted.

Times in a review file without an offset are read as UTC, the convention of
``clsmon import mimic3`` (MIMIC-III's shifted wall-clock times written as 'Z').
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from detectors.alerts import Alert
from detectors.config import HOUR_MS
from detectors.observation import parse_time_ms
from streams.offline.sources import ReplayError

FOUND_WINDOW_H = 6.0
STILL_ALERTING_WINDOW_H = 12.0
COUNTED_SEVERITIES = ("warning", "high", "critical")
DAY_MS = 24 * HOUR_MS


def review_time_ms(text: str) -> int | None:
    """A review time: ISO 8601 with an offset, or a naive time read as UTC (see module)."""
    parsed = parse_time_ms(text)
    if parsed is None and text.strip():
        parsed = parse_time_ms(text.strip().replace(" ", "T") + "Z")
    return parsed


def read_review(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise ReplayError(f"review file not found: {p}")
    df = pd.read_csv(p, dtype="string", keep_default_na=False)
    if "patient_id" not in df.columns and "subject_id" in df.columns:
        df = df.rename(columns={"subject_id": "patient_id"})
    missing = [c for c in ("patient_id", "phase", "around", "verdict") if c not in df.columns]
    if missing:
        raise ReplayError(f"{p}: missing column(s) {', '.join(missing)}; expected subject_id "
                          "(or patient_id), phase, around, verdict, reason")
    df = df.assign(around_ms=df["around"].map(review_time_ms),
                   verdict=df["verdict"].str.strip().str.lower())
    bad = df[df["around_ms"].isna() | ~df["verdict"].isin(["true", "false"])]
    if len(bad):
        row = bad.index[0] + 2
        raise ReplayError(f"{p}: line {row}: 'around' must be a time and 'verdict' true or "
                          f"false (got {bad.iloc[0]['around']!r}, {bad.iloc[0]['verdict']!r})")
    if "reason" not in df.columns:
        df["reason"] = ""
    return df


def score_review(review: pd.DataFrame, alerts: Iterable[Alert]) -> list[dict[str, Any]]:
    """One row per reviewed episode: whether an alert of its phase lies within its window."""
    by_patient: dict[str, list[Alert]] = {}
    for a in alerts:
        if a.severity in COUNTED_SEVERITIES:
            by_patient.setdefault(a.patient_id, []).append(a)
    rows = []
    for r in review.itertuples(index=False):
        window_h = FOUND_WINDOW_H if r.verdict == "true" else STILL_ALERTING_WINDOW_H
        near = [a for a in by_patient.get(str(r.patient_id), []) if a.phase == r.phase
                and abs(a.raised_at_ms - int(r.around_ms)) <= window_h * HOUR_MS]
        nearest = min(near, key=lambda a: abs(a.raised_at_ms - int(r.around_ms)), default=None)
        rows.append({"patient_id": r.patient_id, "phase": r.phase, "around": r.around,
                     "verdict": r.verdict, "window_h": window_h, "alerting": bool(near),
                     "alert_at": nearest.to_dict()["raised_at"] if nearest else "",
                     "alert_offset_h": round((nearest.raised_at_ms - int(r.around_ms))
                                             / HOUR_MS, 2) if nearest else None,
                     "reason": r.reason})
    return rows


def review_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    true = [r for r in rows if r["verdict"] == "true"]
    false = [r for r in rows if r["verdict"] == "false"]
    return {"true_episodes": len(true), "true_found": sum(r["alerting"] for r in true),
            "false_episodes": len(false),
            "false_still_alerting": sum(r["alerting"] for r in false),
            "found_window_h": FOUND_WINDOW_H, "still_alerting_window_h": STILL_ALERTING_WINDOW_H}


def stay_days(contexts: list[dict[str, Any]] | None, first_last: pd.DataFrame
              ) -> dict[str, float]:
    """Days per patient: the sum of its stays' lengths (context rows with ``admit`` and
    ``discharge``), else its first to last accepted observation (at least one hour).

    ``first_last``: index patient_id, columns ``min`` and ``max`` (epoch ms) of the accepted
    observations; only these patients are counted.
    """
    stays: dict[str, float] = {}
    for row in contexts or []:
        pid = str(row.get("patient_id") or "").strip()
        admit = parse_time_ms(row.get("admit") or "")
        discharge = parse_time_ms(row.get("discharge") or "")
        if pid in first_last.index and admit is not None and discharge is not None \
                and discharge > admit:
            stays[pid] = stays.get(pid, 0.0) + (discharge - admit) / DAY_MS
    days = {}
    for pid, span in first_last.iterrows():
        days[str(pid)] = stays.get(str(pid)) or max((span["max"] - span["min"]) / DAY_MS,
                                                    1 / 24)
    return days
