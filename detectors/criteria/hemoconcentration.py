"""Hemoconcentration: plasma leaves the vessels, the red cells stay behind.

Criterion (docs/clinical-criteria.md, leak phase): Hct > 45 % (F) / > 50 % (M) / > 45 % when sex is
unknown (upper reference limits, [D]), OR a rise >= 15 % relative to the patient's baseline (from
Druey & Greipp 2010: Hct > 60 from a baseline of 35-40). Peak values in attacks are 60-70 %
(Pineton de Chambrun 2017). Recovery needs the Hct to fall again: [D] 3 points below the peak.
"""

from __future__ import annotations

from detectors.alerts import Evidence
from detectors.config import Thresholds


def is_hemoconcentrated(hct_pct: float, baseline_pct: float | None, sex: str | None,
                        th: Thresholds) -> bool:
    if hct_pct > th.hct_high_pct(sex):
        return True
    return baseline_pct is not None and hct_pct >= baseline_pct * (1.0 + th.hct_rise_relative)


def evidence(t: int, hct_pct: float, baseline_pct: float | None, sex: str | None,
             th: Thresholds) -> Evidence:
    rise = f" or >= +{th.hct_rise_relative:.0%} of baseline" if baseline_pct is not None else ""
    sex_txt = {"F": "F", "M": "M"}.get(sex or "", "sex unknown")
    return Evidence("hemoconcentration", hct_pct, "%",
                    f"Hct > {th.hct_high_pct(sex):g} % ({sex_txt}){rise}", t, baseline_pct)


def readings_hemoconcentrated(readings: list[list[float]], baseline_pct: float | None,
                              sex: str | None, th: Thresholds) -> list[list[float]]:
    """The Hct readings [t, %] that meet the criterion."""
    return [r for r in readings if is_hemoconcentrated(r[1], baseline_pct, sex, th)]


def falling_from_peak(readings: list[list[float]], since: int, th: Thresholds
                      ) -> tuple[list[float], float] | None:
    """The first reading after the episode's Hct peak that lies >= ``hct_fall_points`` below it.

    Returns (reading, peak) or None. Only readings from ``since`` (leak entry minus the triad
    window) count, so the peak is this episode's.
    """
    peak = None
    for r in readings:
        if r[0] < since:
            continue
        if peak is None or r[1] > peak:
            peak = r[1]
        elif peak - r[1] >= th.hct_fall_points:
            return r, peak
    return None
