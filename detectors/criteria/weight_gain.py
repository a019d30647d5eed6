"""Rapid weight gain: the prodrome's one measurable sign, fluid already leaving the vessels.

Criterion (docs/clinical-criteria.md, prodromal phase): a gain >= 3 % of baseline (or >= 2 kg)
within 48 h while blood pressure is still normal [D]; confirmed by a second weighing [D
persistence], so a single scale error (a pump on the bed, a blanket) never raises it. Fluid
overload in recovery uses the weight >= 5 % over baseline (Druey 2010, Cordemans 2012).
"""

from __future__ import annotations

from collections.abc import Callable

from detectors.alerts import Evidence
from detectors.config import HOUR_MS, Thresholds
from detectors.state import known_at


def gain_at(weighings: list[list[float]], i: int, baseline_kg: float, th: Thresholds
            ) -> float | None:
    """Gain (kg) of weighing ``i`` over the lightest weighing of the 48 h before it, when it
    meets the criterion; otherwise None."""
    t, kg = weighings[i][0], weighings[i][1]
    window_start = t - th.weight_gain_window_h * HOUR_MS
    lightest = None
    for row in weighings[:i]:
        tj, kj = row[0], row[1]
        if tj >= window_start and (lightest is None or kj < lightest):
            lightest = kj
    if lightest is None:
        return None
    gain = kg - lightest
    if gain >= th.weight_gain_kg or gain >= baseline_kg * th.weight_gain_pct / 100.0:
        return gain
    return None


def lightest_before(weighings: list[list[float]], i: int, th: Thresholds) -> list[float] | None:
    """The lightest weighing of the gain window before weighing ``i`` (the gain's start)."""
    t = weighings[i][0]
    window_start = t - th.weight_gain_window_h * HOUR_MS
    best = None
    for row in weighings[:i]:
        if row[0] >= window_start and (best is None or row[1] < best[1]):
            best = row
    return best


def confirmed_gain(weighings: list[list[float]], baseline_kg: float, since: int,
                   th: Thresholds,
                   supporting_sign: Callable[[int], Evidence | None] | None = None
                   ) -> list[Evidence] | None:
    """Evidence at the weighing that confirms a rapid gain, looking only at weighings from
    ``since``: the ``weight_confirm_readings``-th consecutive weighing meeting the criterion, or
    the first one when ``supporting_sign(t)`` finds a prodromal sign at its time (Wu 2019: the
    prodrome comes with a very low urine output). With 12-hourly weighings a second weighing
    alone often comes after the leak has begun."""
    streak = 0
    known = 0
    for i, row in enumerate(weighings):
        t, kg = row[0], row[1]
        known = max(known, known_at(row))
        gain = gain_at(weighings, i, baseline_kg, th)
        if gain is None:
            streak = 0
            continue
        streak += 1
        if t < since:
            continue
        sign = None
        if streak < th.weight_confirm_readings:
            sign = supporting_sign(int(t)) if supporting_sign is not None else None
            if sign is None:
                continue
        found = Evidence("rapid_weight_gain", kg, "kg",
                         f"gain >= {th.weight_gain_pct:g} % of baseline or >= "
                         f"{th.weight_gain_kg:g} kg within {th.weight_gain_window_h:g} h "
                         f"(+{gain:.1f} kg)", int(t), baseline_kg,
                         f"weight {kg:.1f} kg (+{gain:.1f} kg within "
                         f"{th.weight_gain_window_h:g} h; baseline {baseline_kg:.1f} kg)",
                         known)
        return [found, sign] if sign is not None else [found]
    return None


def over_baseline_pct(kg: float, baseline_kg: float) -> float:
    return (kg - baseline_kg) / baseline_kg * 100.0
